"""The one module that talks to Qdrant: settings, client, collections by alias, upserts, search.

Two modes behind one ``qdrant_client.QdrantClient`` surface:

* **Local (embedded) mode**, the default: ``<work_dir()>/qdrant`` on disk. The storage folder is
  locked by ONE process at a time (qdrant-client takes an exclusive file lock), so every task that
  opens it - upserts and the linker's searches alike - must be serialised: the DAGs run them in a
  one-slot Airflow pool when ``QdrantSettings.is_local``. A second process gets
  :class:`QdrantLockedError` instead of qdrant-client's raw ``RuntimeError``. Local mode persists
  each point with its own SQLite commit (a few hundred points/s on disk here, far less when the
  disk is busy; ~10k/s in memory): a Qdrant server removes that cost, and nothing else in this
  module changes.
* **Server mode**: ``url`` or ``host`` (+ ``prefer_grpc`` for gRPC); parallel writers are fine.

Readers address collections by **alias** (``keywords``); the physical collection carries a
generation suffix (``keywords-g1``) so a future full reindex can build ``-g2`` and swap the alias
atomically. qdrant-client 1.20's local mode implements aliases (``update_collection_aliases`` /
``get_aliases``, persisted in its ``meta.json``) and collection ``metadata``, so both modes use
the same code path - no sidecar file is needed. The model a collection was built with
(name, version, dim) lives in that collection metadata; a chunk embedded with another model is
refused before anything is written.

Upserts are idempotent (point ids are uuid5 of the business key, computed at staging), batched and
retried with exponential backoff + jitter on transient errors. A batch the engine rejects, or that
keeps failing, is bisected so only the offending points reach the dead letter; every staged row
ends indexed or dead-lettered (``rows_in == indexed + dead_lettered``).
"""

from __future__ import annotations

import logging
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit, urlunsplit

import grpc
import httpx
import numpy as np
from qdrant_client import QdrantClient
from qdrant_client.http import models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from embedding_pipeline.errors import ConfigError, InvalidInputError, PipelineError
from embedding_pipeline.runs.accounting import StageResult
from embedding_pipeline.runs.dead_letter import DeadLetterWriter
from embedding_pipeline.runs.partitions import partition_version
from embedding_pipeline.runs.staging import StagedBatch, iter_staged, staged_metadata
from embedding_pipeline.runs.storage import as_path
from embedding_pipeline.settings import work_dir

log = logging.getLogger(__name__)
T = TypeVar("T")

STAGE = "qdrant_upsert"
REASON_INVALID = "qdrant_invalid_point"
REASON_EXHAUSTED = "qdrant_retries_exhausted"
METADATA_KEY = "embedding_pipeline"
LOCKED_MARKER = "already accessed by another instance"
MEMORY = ":memory:"

# Created before the first upload: on a server, indexing a filled collection is far slower.
DEFAULT_PAYLOAD_INDEXES: Mapping[str, models.PayloadSchemaType] = {
    "keyword_id": models.PayloadSchemaType.KEYWORD,
    "dt": models.PayloadSchemaType.KEYWORD,
    "dt_version": models.PayloadSchemaType.INTEGER,  # the conditional upsert's filter (latest dt wins)
    "category": models.PayloadSchemaType.KEYWORD,
    "lang": models.PayloadSchemaType.KEYWORD,
    "content_hash": models.PayloadSchemaType.KEYWORD,
    "model_version": models.PayloadSchemaType.INTEGER,
}

_TRANSIENT_HTTP = {429, 502, 503, 504}
_TRANSIENT_GRPC = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


# -- errors --------------------------------------------------------------------------------------
class QdrantSinkError(PipelineError):
    """Qdrant refused or failed an operation for a reason that is not one bad point."""


class QdrantLockedError(QdrantSinkError):
    """The local-mode storage folder is held by another process."""


class QdrantUnavailableError(QdrantSinkError):
    """Qdrant keeps failing transiently: the service, not the data, is the problem."""


class CollectionNotFoundError(QdrantSinkError):
    """No collection or alias with this name."""


class CollectionMismatchError(QdrantSinkError):
    """The collection holds vectors of another model, dimension or distance than the caller's."""


# -- settings and client -------------------------------------------------------------------------
@dataclass(frozen=True)
class QdrantSettings:
    """Where Qdrant is and how hard to try. Local mode unless ``url`` or ``host`` is set.

    ``path`` is the local storage folder (``":memory:"`` for a throwaway in-process store); left
    empty it is ``<work_dir()>/qdrant``, resolved when the client is made so that
    ``EMBEDDING_PIPELINE_HOME`` set later still counts.
    """

    path: str | Path | None = None
    url: str | None = None
    host: str | None = None
    port: int = 6333
    grpc_port: int = 6334
    prefer_grpc: bool = False
    api_key: str | None = field(default=None, repr=False)
    https: bool | None = None
    timeout: int = 60
    upsert_batch: int = 256
    search_batch: int = 64
    max_retries: int = 5
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 10.0
    lock_wait_s: float = 5.0

    def __post_init__(self) -> None:
        if self.path is not None and (self.url or self.host):
            raise ConfigError("Qdrant: set either path (local mode) or url/host (server), not both")
        if self.url and self.host:
            raise ConfigError("Qdrant: set either url or host, not both")
        for name in ("port", "grpc_port"):
            port = getattr(self, name)
            if not isinstance(port, int) or not 0 < port < 65536:
                raise ConfigError(f"Qdrant {name} must be a TCP port, got {port!r}")
        for name in ("upsert_batch", "search_batch", "timeout"):
            if getattr(self, name) < 1:
                raise ConfigError(f"Qdrant {name} must be >= 1, got {getattr(self, name)}")
        if self.max_retries < 0 or self.backoff_initial_s < 0 or self.lock_wait_s < 0:
            raise ConfigError("Qdrant max_retries, backoff_initial_s and lock_wait_s must be >= 0")

    @property
    def is_local(self) -> bool:
        """Embedded mode: one process at a time may open the storage (use a one-slot pool)."""
        return not (self.url or self.host)

    @property
    def local_path(self) -> str:
        """The local storage folder (or ``:memory:``); only meaningful when ``is_local``."""
        if self.path is None:
            return str(work_dir() / "qdrant")
        return str(self.path)

    def __repr__(self) -> str:
        if self.is_local:
            where = f"path={self.local_path!r}"
        else:
            endpoint = _redact_url(self.url) if self.url else f"{self.host}:{self.port}"
            where = f"url={endpoint!r}, grpc_port={self.grpc_port}, prefer_grpc={self.prefer_grpc}"
            where += f", api_key={'***' if self.api_key else None}"
        return (
            f"QdrantSettings({where}, timeout={self.timeout}, upsert_batch={self.upsert_batch}, "
            f"max_retries={self.max_retries})"
        )

    __str__ = __repr__

    @classmethod
    def from_env(cls, **overrides: Any) -> QdrantSettings:
        """``QDRANT_URL`` / ``QDRANT_API_KEY`` / ``QDRANT_PATH`` / ``QDRANT_PREFER_GRPC``, then overrides.

        ``None`` overrides are ignored so a Param left empty keeps the environment's value.
        """
        env: dict[str, Any] = {
            "url": os.environ.get("QDRANT_URL") or None,
            "api_key": os.environ.get("QDRANT_API_KEY") or None,
            "path": os.environ.get("QDRANT_PATH") or None,
        }
        grpc_flag = os.environ.get("QDRANT_PREFER_GRPC")
        if grpc_flag:
            env["prefer_grpc"] = grpc_flag.strip().lower() in ("1", "true", "yes", "on")
        values = {k: v for k, v in {**env, **overrides}.items() if v is not None}
        if values.get("url") or values.get("host"):
            values.pop("path", None)  # an explicit server wins over a leftover local path
        return replace(cls(), **values) if values else cls()


def _redact_url(url: str) -> str:
    """Drop ``user:password@`` from a URL so it can be logged."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = "***@" + (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def make_client(settings: QdrantSettings | None = None) -> QdrantClient:
    """A ``QdrantClient`` for ``settings`` (default: from the environment). Close it when done.

    Local mode waits up to ``lock_wait_s`` for the storage lock (the previous task's process may
    still be exiting), then raises :class:`QdrantLockedError` with what to do about it.
    """
    s = settings or QdrantSettings.from_env()
    if not s.is_local:
        return QdrantClient(
            url=s.url,
            host=s.host,
            port=s.port,
            grpc_port=s.grpc_port,
            prefer_grpc=s.prefer_grpc,
            https=s.https,
            api_key=s.api_key,
            timeout=s.timeout,
        )
    if s.local_path == MEMORY:
        return QdrantClient(location=MEMORY)
    deadline = time.monotonic() + s.lock_wait_s
    while True:
        try:
            return QdrantClient(path=s.local_path)
        except RuntimeError as exc:
            if LOCKED_MARKER not in str(exc):
                raise
            if time.monotonic() >= deadline:
                raise QdrantLockedError(
                    f"Qdrant local storage {s.local_path} is locked by another process (qdrant-client: "
                    f"{exc}). Local mode allows one process at a time: run every Qdrant task in a "
                    "one-slot Airflow pool, stop the other process, or set QDRANT_URL to use a Qdrant "
                    "server, which takes parallel writers."
                ) from None
            time.sleep(0.2)


@contextmanager
def open_client(settings: QdrantSettings | None = None) -> Iterator[QdrantClient]:
    """``make_client`` that always closes: in local mode closing is what releases the lock."""
    client = make_client(settings)
    try:
        yield client
    finally:
        client.close()


# -- collections ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CollectionTarget:
    """What an alias resolves to, and the model its vectors come from (None when unknown)."""

    alias: str
    name: str
    dim: int
    distance: models.Distance
    model_name: str | None
    model_version: str | None
    created: bool = False

    def describe(self) -> str:
        model = f"{self.model_name} v{self.model_version}" if self.model_name else "an unrecorded model"
        return f"{model} (dim {self.dim}, {self.distance.value})"


def physical_name(alias: str, generation: int) -> str:
    """Physical collection behind ``alias``: ``keywords`` -> ``keywords-g1``."""
    return f"{alias}-g{generation}"


def resolve_alias(client: QdrantClient, alias: str) -> str | None:
    """The physical collection ``alias`` points at; a plain collection of that name counts too."""
    for description in client.get_aliases().aliases:
        if description.alias_name == alias:
            return description.collection_name
    return alias if client.collection_exists(alias) else None


def _resolve(client: QdrantClient, alias: str) -> str:
    name = resolve_alias(client, alias)
    if name is None:
        raise CollectionNotFoundError(
            f"Qdrant has no collection or alias {alias!r}: create it with ensure_collection() "
            "(the indexing DAG does so before its upsert tasks)"
        )
    return name


def collection_target(client: QdrantClient, alias: str) -> CollectionTarget:
    """Resolve ``alias`` and read the collection's vector config and recorded model."""
    return _read_target(client, alias, _resolve(client, alias))


def _read_target(client: QdrantClient, alias: str, name: str) -> CollectionTarget:
    info = client.get_collection(name)
    vectors = info.config.params.vectors
    if not isinstance(vectors, models.VectorParams):
        raise CollectionMismatchError(
            f"Qdrant collection {name!r} (alias {alias!r}) uses named vectors {sorted(vectors or {})}; "
            "this pipeline writes one unnamed dense vector per point"
        )
    recorded = (info.config.metadata or {}).get(METADATA_KEY) or {}
    model_name, model_version = recorded.get("model_name"), recorded.get("model_version")
    if model_name is None and info.points_count:
        # No metadata (a server that does not keep it, or a collection made elsewhere): every
        # point carries its model in the payload, so one point tells.
        points, _ = client.scroll(name, limit=1, with_payload=["model_name", "model_version"])
        if points and points[0].payload:
            model_name = points[0].payload.get("model_name")
            model_version = points[0].payload.get("model_version")
    return CollectionTarget(
        alias=alias,
        name=name,
        dim=vectors.size,
        distance=vectors.distance,
        model_name=None if model_name is None else str(model_name),
        model_version=None if model_version is None else str(model_version),
    )


def check_model(
    target: CollectionTarget,
    *,
    dim: int,
    model_name: str | None,
    model_version: int | str | None,
    distance: models.Distance | None,
    what: str,
) -> None:
    """Fail early, naming both sides, when vectors of different models would be mixed.

    ``model_name=None`` checks the dimension (and distance) only; a collection whose model is not
    recorded anywhere is checked on dimension and distance only.
    """
    problems = []
    if target.dim != dim:
        problems.append("dimension")
    if distance is not None and target.distance != distance:
        problems.append("distance")
    if (
        model_name is not None
        and target.model_name is not None
        and (target.model_name != model_name or target.model_version != str(model_version))
    ):
        problems.append("model")
    if problems:
        model = f"{model_name} v{model_version}" if model_name else "a model"
        theirs = f"{model} (dim {dim}" + (f", {distance.value})" if distance else ")")
        raise CollectionMismatchError(
            f"Qdrant collection {target.alias!r} -> {target.name!r} holds vectors of {target.describe()}, "
            f"but {what} is {theirs}: {' and '.join(problems)} differ. Vectors of different models "
            "are not comparable: reindex into a new collection generation and swap the alias, or use "
            "the model the collection was built with."
        )


def _metadata(
    alias: str,
    generation: int,
    dim: int,
    model_name: str,
    model_version: int | str,
    distance: models.Distance,
    payload_indexes: Mapping[str, models.PayloadSchemaType],
) -> dict[str, Any]:
    return {
        METADATA_KEY: {
            "alias": alias,
            "generation": generation,
            "model_name": model_name,
            "model_version": str(model_version),
            "dim": dim,
            "distance": distance.value,
            "payload_indexes": {k: models.PayloadSchemaType(v).value for k, v in payload_indexes.items()},
        }
    }


def ensure_collection(
    client: QdrantClient,
    alias: str,
    *,
    dim: int,
    model_name: str,
    model_version: int | str,
    distance: models.Distance = models.Distance.COSINE,
    payload_indexes: Mapping[str, models.PayloadSchemaType] = DEFAULT_PAYLOAD_INDEXES,
    generation: int = 1,
) -> CollectionTarget:
    """Make ``alias`` point at a collection for this model, creating ``<alias>-g<generation>`` if needed.

    Order matters: collection (size ``dim``, ``distance``, model in its metadata), then payload
    indexes, then the alias - so a reader never sees a collection without its indexes. Safe to call
    from parallel tasks against a server (a lost creation race adopts the winner's collection) and
    after a crash between steps (an unaliased ``-g<generation>`` is validated and adopted). An
    existing collection built with another model, dimension or distance raises
    :class:`CollectionMismatchError` naming both.
    """
    if dim < 1:
        raise ConfigError(f"vector dimension must be >= 1, got {dim}")
    meta = _metadata(alias, generation, dim, model_name, model_version, distance, payload_indexes)
    name = resolve_alias(client, alias)
    created = False
    if name is None:
        name = physical_name(alias, generation)
        if not client.collection_exists(name):
            try:
                client.create_collection(
                    name, vectors_config=models.VectorParams(size=dim, distance=distance), metadata=meta
                )
                created = True
                log.info("created Qdrant collection %s (dim %d, %s)", name, dim, distance.value)
            except Exception:
                if not client.collection_exists(name):  # not a lost race: a real failure
                    raise
    target = _read_target(client, alias, name)
    check_model(
        target,
        dim=dim,
        model_name=model_name,
        model_version=model_version,
        distance=distance,
        what="the model",
    )
    _ensure_payload_indexes(client, name, payload_indexes, meta, created)
    if resolve_alias(client, alias) is None:
        try:
            client.update_collection_aliases(
                change_aliases_operations=[
                    models.CreateAliasOperation(
                        create_alias=models.CreateAlias(collection_name=name, alias_name=alias)
                    )
                ]
            )
        except Exception:
            if resolve_alias(client, alias) != name:
                raise
    return replace(collection_target(client, alias), created=created)


def _ensure_payload_indexes(
    client: QdrantClient,
    name: str,
    wanted: Mapping[str, models.PayloadSchemaType],
    meta: dict[str, Any],
    created: bool,
) -> None:
    """Create the indexes the collection lacks, and record them (and, if unclaimed, the model).

    A server reports indexes in ``payload_schema``; local mode accepts indexes but never reports
    them (it has no use for them), so the metadata record is what stops re-creating them. An
    empty collection with no recorded model (one left by a crash, or made by hand) is adopted:
    its metadata gets this model, so the next chunk of another model is refused.
    """
    info = client.get_collection(name)
    record = dict((info.config.metadata or {}).get(METADATA_KEY) or {})
    recorded = record.get("payload_indexes") or {}
    have = set(info.payload_schema or {}) | set(recorded)
    missing = {k: v for k, v in wanted.items() if created or k not in have}
    with warnings.catch_warnings():
        # local mode warns that indexes do nothing there; they are made for parity with a server
        warnings.filterwarnings("ignore", message="Payload indexes have no effect", category=UserWarning)
        for field_name, schema in missing.items():
            client.create_payload_index(name, field_name=field_name, field_schema=schema, wait=True)
    adopt = not record.get("model_name") and not info.points_count
    if created or not (missing or adopt):
        return
    if adopt:
        record = {**meta[METADATA_KEY], **record}
    record["payload_indexes"] = {**recorded, **meta[METADATA_KEY]["payload_indexes"]}
    try:
        client.update_collection(name, metadata={METADATA_KEY: record})
    except Exception as exc:  # a server without collection metadata: the indexes exist all the same
        log.warning("could not record the model and payload indexes in %s metadata: %s", name, exc)


def ensure_collection_for_chunk(
    client: QdrantClient, alias: str, staged_path: str | Path
) -> CollectionTarget:
    """``ensure_collection`` with dim and model read from a staged chunk's metadata."""
    meta = staged_metadata(as_path(str(staged_path)))
    return ensure_collection(
        client,
        alias,
        dim=int(meta["dim"]),
        model_name=meta["model_name"],
        model_version=meta["model_version"],
    )


def count_points(client: QdrantClient, alias: str) -> int:
    """Exact number of points behind ``alias``."""
    return client.count(_resolve(client, alias), exact=True).count


# -- retries -------------------------------------------------------------------------------------
def is_transient(exc: BaseException) -> bool:
    """Worth retrying: timeouts, connection errors, HTTP 429/502/503/504, gRPC UNAVAILABLE & co."""
    if isinstance(exc, ResponseHandlingException):
        return exc.source is None or is_transient(exc.source)
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code in _TRANSIENT_HTTP
    if isinstance(exc, grpc.RpcError):
        code = getattr(exc, "code", None)
        return callable(code) and code() in _TRANSIENT_GRPC
    return isinstance(exc, httpx.TimeoutException | httpx.NetworkError | ConnectionError | TimeoutError)


def describe_error(exc: BaseException) -> str:
    """``Type: message``, looking through qdrant-client's wrapper to the network error inside."""
    if isinstance(exc, ResponseHandlingException) and exc.source is not None:
        return f"{type(exc.source).__name__}: {exc.source}"
    if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
        details = exc.details() if callable(getattr(exc, "details", None)) else ""
        return f"gRPC {exc.code()}: {details}"
    return f"{type(exc).__name__}: {exc}"


def is_point_error(exc: BaseException) -> bool:
    """The engine rejected the request's content (a bad point), not the request itself.

    Local mode raises ``ValueError`` (``Wrong input``, NaN, invalid id); a server answers 400/422
    or gRPC INVALID_ARGUMENT. "Collection ... not found" is a ValueError in local mode too, but
    it is no point's fault.
    """
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code in (400, 422) and b"not found" not in (exc.content or b"").lower()
    if isinstance(exc, grpc.RpcError):
        code = getattr(exc, "code", None)
        return callable(code) and code() == grpc.StatusCode.INVALID_ARGUMENT
    return isinstance(exc, ValueError) and "not found" not in str(exc).lower()


class RetriesExhausted(Exception):
    """Internal: a call kept failing transiently; carries the last error and the attempt count."""

    def __init__(self, last: BaseException, attempts: int) -> None:
        super().__init__(f"{attempts} attempts, last error: {last}")
        self.last, self.attempts = last, attempts


@dataclass
class _Retry:
    """Exponential backoff with equal jitter: a delay in [cap/2, cap], cap = initial * 2**attempt.

    Equal rather than full jitter keeps a floor under every wait, so a struggling server gets real
    relief; the random half still spreads parallel tasks apart.
    """

    max_retries: int
    initial_s: float
    max_s: float
    sleep: Callable[[float], None] = time.sleep
    retries: int = 0

    def call(self, what: str, fn: Callable[[], T]) -> T:
        for attempt in range(self.max_retries + 1):
            try:
                return fn()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if attempt == self.max_retries:
                    raise RetriesExhausted(exc, attempt + 1) from exc
                cap = min(self.max_s, self.initial_s * 2**attempt)
                delay = cap / 2 + random.uniform(0, cap / 2)
                self.retries += 1
                log.warning("%s: transient error (%s); retry %d in %.2fs", what, exc, attempt + 1, delay)
                self.sleep(delay)
        raise AssertionError("unreachable")


# -- upsert --------------------------------------------------------------------------------------
@dataclass
class _Upserter:
    """Writes point batches; bisects failing ones so only the bad points are dead-lettered.

    ``max_consecutive_exhausted`` single points in a row that exhaust their retries (with no write
    succeeding in between) mean Qdrant is down, not that the points are bad: the task then fails
    with :class:`QdrantUnavailableError` (nothing dead-lettered) and Airflow's retry re-runs the
    chunk idempotently.
    """

    client: QdrantClient
    collection: str
    retry: _Retry
    dead: DeadLetterWriter
    max_consecutive_exhausted: int
    indexed: int = 0
    requests: int = 0
    bisections: int = 0
    _exhausted_in_row: int = 0

    def write(
        self,
        points: list[models.PointStruct],
        rows: list[dict[str, Any]],
        update_filter: models.Filter | None = None,
    ) -> None:
        """Upsert ``points``; with ``update_filter``, existing points are only overwritten if they match."""
        self.requests += 1
        try:
            self.retry.call(
                f"upsert of {len(points)} points into {self.collection}",
                lambda: self.client.upsert(
                    self.collection, points=points, wait=True, update_filter=update_filter
                ),
            )
        except RetriesExhausted as exc:
            failure: Exception = exc
        except Exception as exc:
            if not is_point_error(exc):
                raise QdrantSinkError(
                    f"Qdrant upsert into {self.collection!r} failed (not retryable, not a bad point): "
                    f"{describe_error(exc)}"
                ) from exc
            failure = exc
        else:
            self.indexed += len(points)
            self._exhausted_in_row = 0
            return
        if len(points) > 1:
            self._bisect(points, rows, update_filter)
        elif isinstance(failure, RetriesExhausted):
            self._exhausted(rows[0], failure)
        else:
            self.dead.add(rows[0]["id"], REASON_INVALID, f"Qdrant rejected the point: {failure}", rows[0])

    def _bisect(
        self,
        points: list[models.PointStruct],
        rows: list[dict[str, Any]],
        update_filter: models.Filter | None,
    ) -> None:
        self.bisections += 1
        half = len(points) // 2
        self.write(points[:half], rows[:half], update_filter)
        self.write(points[half:], rows[half:], update_filter)

    def _exhausted(self, row: dict[str, Any], exc: RetriesExhausted) -> None:
        self._exhausted_in_row += 1
        if self._exhausted_in_row >= self.max_consecutive_exhausted:
            raise QdrantUnavailableError(
                f"Qdrant collection {self.collection!r} kept failing transiently for "
                f"{self._exhausted_in_row} points in a row, each after {exc.attempts} attempts "
                f"(last error: {describe_error(exc.last)}); failing the task so Airflow retries the chunk"
            ) from exc.last
        self.dead.add(row["id"], REASON_EXHAUSTED, describe_error(exc.last), row, attempt=exc.attempts)


def _chunk_target(client: QdrantClient, alias: str, staged_path: Path) -> tuple[CollectionTarget, dict]:
    meta = staged_metadata(staged_path)
    missing = {"dim", "model_name", "model_version"} - set(meta)
    if missing:
        raise QdrantSinkError(f"staged chunk {staged_path} lacks metadata {sorted(missing)}")
    target = collection_target(client, alias)
    check_model(
        target,
        dim=int(meta["dim"]),
        model_name=meta["model_name"],
        model_version=meta["model_version"],
        distance=None,
        what=f"staged chunk {staged_path.name}",
    )
    return target, meta


def _model_version_value(version: str) -> int | str:
    """Integer when it is one (the payload index on model_version is an integer index)."""
    try:
        return int(version)
    except ValueError:
        return version


def upsert_chunk(
    client: QdrantClient,
    alias: str,
    staged_path: str | Path,
    dead_letters: DeadLetterWriter,
    *,
    batch_size: int = 256,
    max_retries: int = 5,
    backoff_initial_s: float = 0.2,
    backoff_max_s: float = 10.0,
    max_consecutive_exhausted: int = 3,
    id_field: str = "keyword_id",
    text_field: str = "keyword",
    sleep: Callable[[float], None] = time.sleep,
) -> StageResult:
    """Upsert one staged chunk into the collection behind ``alias``; every row indexed or dead-lettered.

    The alias is resolved once and points go to that physical collection, so an alias swap during
    the task cannot split a chunk across generations. A chunk embedded with another model or
    dimension than the collection's is refused before anything is written. Vectors with NaN/inf
    are dead-lettered up front (a server over gRPC, and local mode for inf, would store them and
    poison every score); anything else the engine rejects is isolated by bisection. The
    writer's part file is flushed and its path returned in the result.
    """
    path = as_path(str(staged_path))
    started = time.monotonic()
    target, meta = _chunk_target(client, alias, path)
    model_name, model_version = meta["model_name"], _model_version_value(meta["model_version"])
    first_letter = len(dead_letters)
    upserter = _Upserter(
        client,
        target.name,
        _Retry(max_retries, backoff_initial_s, backoff_max_s, sleep),
        dead_letters,
        max_consecutive_exhausted,
    )
    rows_in = 0
    superseded = 0
    for batch in iter_staged(path, batch_size):
        rows_in += len(batch.ids)
        points, rows = _points(batch, path, model_name, model_version, id_field, text_field, dead_letters)
        if points:
            points, rows, newer = _drop_superseded(client, target.name, upserter.retry, points, rows)
            superseded += newer
        for version, group in _by_dt_version(points, rows).items():
            upserter.write(*group, update_filter=_not_newer_than(version))
    new_letters = dead_letters.letters[first_letter:]
    by_reason: dict[str, int] = {}
    for letter in new_letters:
        by_reason[letter.reason] = by_reason.get(letter.reason, 0) + 1
    seconds = time.monotonic() - started
    result = StageResult(
        stage=STAGE,
        chunk=path.stem,
        rows_in=rows_in,
        indexed=upserter.indexed + superseded,
        dead_lettered=len(new_letters),
        dead_letters_by_reason=by_reason,
        dead_letter_path=dead_letters.flush(),
        seconds=round(seconds, 3),
        extra={
            "collection": target.name,
            "requests": upserter.requests,
            "retries": upserter.retry.retries,
            "bisections": upserter.bisections,
            "superseded": superseded,
            "points_per_s": round(upserter.indexed / seconds, 1) if seconds > 0 else 0.0,
        },
    )
    if not result.balanced:  # a bug here, never data: fail loudly rather than lose rows silently
        raise QdrantSinkError(f"Qdrant accounting does not balance for {path}: {result.to_xcom()}")
    return result


def _drop_superseded(
    client: QdrantClient,
    collection: str,
    retry: _Retry,
    points: list[models.PointStruct],
    rows: list[dict[str, Any]],
) -> tuple[list[models.PointStruct], list[dict[str, Any]], int]:
    """Leave out (and count as superseded) points whose stored version is from a later ``dt``.

    The latest partition of an id wins, as in Elasticsearch (external versions), whatever order
    chunks, retries and backfills write in. This read only saves writes and counts; what enforces
    the rule is the conditional upsert (:func:`_not_newer_than`): on a server, a chunk of a newer
    date may write the same id between this read and our write, and then the engine, not this
    read, keeps the newer point (counted as indexed: the identity holds either way).
    """
    try:
        stored = retry.call(
            f"reading dt of {len(points)} points in {collection}",
            lambda: client.retrieve(
                collection, ids=[p.id for p in points], with_payload=["dt"], with_vectors=False
            ),
        )
    except RetriesExhausted as exc:
        raise QdrantUnavailableError(
            f"Qdrant collection {collection!r}: reading stored points failed after {exc.attempts} "
            f"attempts: {describe_error(exc.last)}"
        ) from exc.last
    stored_dt = {str(record.id): str((record.payload or {}).get("dt") or "") for record in stored}
    keep = [
        i
        for i, point in enumerate(points)
        if stored_dt.get(str(point.id), "") <= str(point.payload.get("dt") or "")
    ]
    return [points[i] for i in keep], [rows[i] for i in keep], len(points) - len(keep)


def _by_dt_version(
    points: list[models.PointStruct], rows: list[dict[str, Any]]
) -> dict[int | None, tuple[list[models.PointStruct], list[dict[str, Any]]]]:
    """Points grouped by their ``dt_version`` (a chunk holds one partition: usually one group)."""
    groups: dict[int | None, tuple[list[models.PointStruct], list[dict[str, Any]]]] = {}
    for point, row in zip(points, rows, strict=True):
        group = groups.setdefault((point.payload or {}).get("dt_version"), ([], []))
        group[0].append(point)
        group[1].append(row)
    return groups


def _not_newer_than(version: int | None) -> models.Filter | None:
    """Overwrite a stored point only if its ``dt_version`` is not newer than ours (or it has none,
    written before the field existed); ids not stored yet are inserted. Atomic in the engine."""
    if version is None:
        return None
    return models.Filter(
        should=[
            models.FieldCondition(key="dt_version", range=models.Range(lte=version)),
            models.IsEmptyCondition(is_empty=models.PayloadField(key="dt_version")),
        ]
    )


def _points(
    batch: StagedBatch,
    path: Path,
    model_name: str,
    model_version: int | str,
    id_field: str,
    text_field: str,
    dead: DeadLetterWriter,
) -> tuple[list[models.PointStruct], list[dict[str, Any]]]:
    """Points of one staged batch, plus the replayable row of each (for its dead letter)."""
    finite = np.isfinite(batch.vectors).all(axis=1)
    points: list[models.PointStruct] = []
    rows: list[dict[str, Any]] = []
    for i, business_id in enumerate(batch.ids):
        row = {
            "id": business_id,
            "point_id": batch.point_ids[i],
            text_field: batch.texts[i],
            "content_hash": batch.content_hashes[i],
            "payload": batch.payloads[i],
            "staged_path": str(path),
        }
        if not finite[i]:
            dead.add(business_id, REASON_INVALID, "vector has non-finite values (NaN or inf)", row)
            continue
        payload = {
            **batch.payloads[i],
            id_field: business_id,
            text_field: batch.texts[i],
            "content_hash": batch.content_hashes[i],
            "model_name": model_name,
            "model_version": model_version,
        }
        try:
            if payload.get("dt"):
                payload["dt_version"] = partition_version(str(payload["dt"]))
            point = models.PointStruct(
                id=batch.point_ids[i], vector=batch.vectors[i].tolist(), payload=payload
            )
        except (ValueError, TypeError) as exc:  # e.g. a missing point id: pydantic rejects it
            dead.add(business_id, REASON_INVALID, f"cannot build a Qdrant point: {exc}", row)
            continue
        points.append(point)
        rows.append(row)
    return points, rows


# -- search --------------------------------------------------------------------------------------
class Hit(NamedTuple):
    """One search result: the point's payload and its similarity score."""

    payload: dict[str, Any]
    score: float


def _as_filter(query_filter: models.Filter | Mapping[str, Any] | None) -> models.Filter | None:
    """A ``Filter`` as is, or ``{"category": "food", "lang": ["ja", "en"]}`` as AND of matches."""
    if query_filter is None or isinstance(query_filter, models.Filter):
        return query_filter
    must: list[models.Condition] = []
    for key, value in query_filter.items():
        if isinstance(value, list | tuple | set):
            match: models.Match = models.MatchAny(any=list(value))
        else:
            match = models.MatchValue(value=value)
        must.append(models.FieldCondition(key=key, match=match))
    return models.Filter(must=must)


def _and(a: models.Filter | None, b: models.Filter | None) -> models.Filter | None:
    if a is None or b is None:
        return a or b
    return models.Filter(must=[a, b])


def search(
    client: QdrantClient,
    alias: str,
    vectors: np.ndarray | Sequence[Sequence[float]],
    top_k: int,
    score_threshold: float | None = None,
    query_filter: models.Filter | Mapping[str, Any] | None = None,
    *,
    query_filters: Sequence[models.Filter | Mapping[str, Any] | None] | None = None,
    model_name: str | None = None,
    model_version: int | str | None = None,
    hnsw_ef: int | None = None,
    exact: bool = False,
    batch_size: int = 64,
    max_retries: int = 5,
    backoff_initial_s: float = 0.2,
    backoff_max_s: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> list[list[Hit]]:
    """Top-``top_k`` hits per query vector, best first, through batched ``query_batch_points``.

    Query vectors must come from the collection's model: their dimension is always checked, and
    the model too when ``model_name``/``model_version`` are given (same dim does not mean same
    model). ``query_filter`` is a ``Filter`` or a mapping of payload field -> value(s) applied to
    every query; ``query_filters`` holds one more (or None) per query vector, ANDed with it - the
    linker's "same category as this product".

    ``hnsw_ef`` (candidates explored per query; the server's default is the collection's
    ``ef_construct``) and ``exact`` (skip the index) only matter on a server, whose HNSW index is
    approximate; local mode always searches exhaustively and ignores them.
    """
    queries = np.asarray(vectors, dtype=np.float32)
    if queries.ndim != 2 or len(queries) == 0:
        raise InvalidInputError(
            f"search needs a non-empty 2-D array of query vectors, got shape {queries.shape}"
        )
    if not np.isfinite(queries).all():
        raise InvalidInputError("query vectors contain NaN or inf")
    if top_k < 1:
        raise InvalidInputError(f"top_k must be >= 1, got {top_k}")
    if hnsw_ef is not None and hnsw_ef < 1:
        raise InvalidInputError(f"hnsw_ef must be >= 1, got {hnsw_ef}")
    if query_filters is not None and len(query_filters) != len(queries):
        raise InvalidInputError(
            f"query_filters has {len(query_filters)} entries for {len(queries)} query vectors"
        )
    target = collection_target(client, alias)
    check_model(
        target,
        dim=queries.shape[1],
        model_name=model_name,
        model_version=model_version,
        distance=None,
        what="the query vectors' model",
    )
    shared = _as_filter(query_filter)
    per_query = query_filters if query_filters is not None else [None] * len(queries)
    filters = [_and(shared, _as_filter(f)) for f in per_query]
    params = models.SearchParams(hnsw_ef=hnsw_ef, exact=exact) if hnsw_ef is not None or exact else None
    retry = _Retry(max_retries, backoff_initial_s, backoff_max_s, sleep)
    results: list[list[Hit]] = []
    for start in range(0, len(queries), batch_size):
        stop = start + batch_size
        requests = [
            models.QueryRequest(
                query=q.tolist(),
                limit=top_k,
                score_threshold=score_threshold,
                filter=f,
                params=params,
                with_payload=True,
            )
            for q, f in zip(queries[start:stop], filters[start:stop], strict=True)
        ]
        try:
            with warnings.catch_warnings():
                # Local mode says, per request, that it ignores HNSW parameters (meant for a server).
                warnings.filterwarnings("ignore", message="Local mode performs exact", category=UserWarning)
                responses = retry.call(
                    f"search of {len(requests)} queries in {target.name}",
                    lambda requests=requests: client.query_batch_points(target.name, requests=requests),
                )
        except RetriesExhausted as exc:
            raise QdrantUnavailableError(
                f"Qdrant search in {target.name!r} failed after {exc.attempts} attempts: "
                f"{describe_error(exc.last)}"
            ) from exc.last
        results.extend([Hit(p.payload or {}, float(p.score)) for p in r.points] for r in responses)
    return results


# -- reading vectors -----------------------------------------------------------------------------
def collection_target_retrying(
    client: QdrantClient,
    alias: str,
    *,
    max_retries: int = 5,
    backoff_initial_s: float = 0.2,
    backoff_max_s: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> CollectionTarget:
    """:func:`collection_target`, with transient errors retried and then raised as
    :class:`QdrantUnavailableError`: readers (CLI, quality check) start here, so an unreachable
    server must give a message, not a client trace."""
    retry = _Retry(max_retries, backoff_initial_s, backoff_max_s, sleep)
    try:
        return retry.call(f"resolving {alias!r}", lambda: collection_target(client, alias))
    except RetriesExhausted as exc:
        raise QdrantUnavailableError(
            f"cannot reach Qdrant to resolve {alias!r} after {exc.attempts} attempts: "
            f"{describe_error(exc.last)}"
        ) from exc.last


def iter_vectors(
    client: QdrantClient,
    alias: str,
    batch_size: int = 1024,
    with_payload: Sequence[str] | bool = ("keyword_id", "keyword"),
    *,
    max_retries: int = 5,
    backoff_initial_s: float = 0.2,
    backoff_max_s: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[tuple[np.ndarray, list[dict[str, Any]]]]:
    """Every point behind ``alias`` as ``(vectors float32 [n, dim], payloads)`` blocks of <= ``batch_size``.

    Memory is one block, whatever the collection size: pages come from ``scroll`` (point-id order,
    continued from the offset Qdrant returns), in local and server mode alike. The alias is
    resolved once, so an alias swap during a long scan cannot mix two generations. A cosine
    collection stores its vectors L2-normalised, so that is what comes back. ``with_payload``
    names the payload fields to fetch (fewer fields, less transfer), or True/False for all/none.
    """
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
    target = collection_target_retrying(
        client,
        alias,
        max_retries=max_retries,
        backoff_initial_s=backoff_initial_s,
        backoff_max_s=backoff_max_s,
        sleep=sleep,
    )
    fields = with_payload if isinstance(with_payload, bool) else list(with_payload)
    retry = _Retry(max_retries, backoff_initial_s, backoff_max_s, sleep)
    offset: models.ExtendedPointId | None = None
    while True:
        try:
            records, offset = retry.call(
                f"scroll of {target.name}",
                lambda offset=offset: client.scroll(
                    target.name, limit=batch_size, offset=offset, with_payload=fields, with_vectors=True
                ),
            )
        except RetriesExhausted as exc:
            raise QdrantUnavailableError(
                f"Qdrant scroll of {target.name!r} failed after {exc.attempts} attempts: "
                f"{describe_error(exc.last)}"
            ) from exc.last
        if records:
            vectors = np.asarray([record.vector for record in records], dtype=np.float32)
            yield vectors, [record.payload or {} for record in records]
        if offset is None:
            return
