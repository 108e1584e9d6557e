"""Collections by alias: create a generation with its payload indexes and recorded model, resolve
an alias, and refuse vectors of another model, dimension or distance."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from qdrant_client.client_base import QdrantBase
from qdrant_client.http import models

from embedding_pipeline.errors import ConfigError
from embedding_pipeline.retry import RetriesExhausted, RetryPolicy
from embedding_pipeline.runs.staging import staged_metadata
from embedding_pipeline.runs.storage import as_path
from embedding_pipeline.stores.qdrant.errors import (
    CollectionMismatchError,
    CollectionNotFoundError,
    QdrantSinkError,
    QdrantUnavailableError,
    describe_error,
    is_transient,
)
from embedding_pipeline.stores.qdrant.schema import STORE_PAYLOAD_INDEXES, PointSchema

log = logging.getLogger(__name__)

METADATA_KEY = "embedding_pipeline"


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


def resolve_alias(client: QdrantBase, alias: str) -> str | None:
    """The physical collection ``alias`` points at; a plain collection of that name counts too."""
    for description in client.get_aliases().aliases:
        if description.alias_name == alias:
            return description.collection_name
    return alias if client.collection_exists(alias) else None


def _resolve(client: QdrantBase, alias: str) -> str:
    name = resolve_alias(client, alias)
    if name is None:
        raise CollectionNotFoundError(
            f"Qdrant has no collection or alias {alias!r}: create it with ensure_collection() "
            "(the indexing DAG does so before its upsert tasks)"
        )
    return name


def collection_target(client: QdrantBase, alias: str) -> CollectionTarget:
    """Resolve ``alias`` and read the collection's vector config and recorded model."""
    return _read_target(client, alias, _resolve(client, alias))


def collection_target_retrying(
    client: QdrantBase, alias: str, retry: RetryPolicy = RetryPolicy()
) -> CollectionTarget:
    """:func:`collection_target`, with transient errors retried and then raised as
    :class:`QdrantUnavailableError`: readers (CLI, quality check) start here, so an unreachable
    server must give a message, not a client trace."""
    try:
        return retry.call(f"resolving {alias!r}", lambda: collection_target(client, alias), is_transient)
    except RetriesExhausted as exc:
        raise QdrantUnavailableError(
            f"cannot reach Qdrant to resolve {alias!r} after {exc.attempts} attempts: "
            f"{describe_error(exc.last)}"
        ) from exc.last


def _read_target(client: QdrantBase, alias: str, name: str) -> CollectionTarget:
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
            "are not comparable: run a full rebuild (mode=full) into a new generation, which swaps "
            "the alias when it passes its gate, or use the model the collection was built with."
        )


def _metadata(
    alias: str,
    generation: int,
    model: Mapping[str, Any],
    distance: models.Distance,
    payload_indexes: Mapping[str, models.PayloadSchemaType],
) -> dict[str, Any]:
    return {
        METADATA_KEY: {
            "alias": alias,
            "generation": generation,
            "model_name": model["model_name"],
            "model_version": str(model["model_version"]),
            "dim": model["dim"],
            "distance": distance.value,
            "payload_indexes": {k: models.PayloadSchemaType(v).value for k, v in payload_indexes.items()},
        }
    }


def _wanted_indexes(schema: PointSchema | None) -> dict[str, models.PayloadSchemaType]:
    wanted = schema.payload_indexes() if schema else dict(STORE_PAYLOAD_INDEXES)
    return {name: models.PayloadSchemaType(kind) for name, kind in wanted.items()}


def _create_or_adopt(
    client: QdrantBase,
    alias: str,
    name: str,
    generation: int,
    model: Mapping[str, Any],
    schema: PointSchema | None,
    distance: models.Distance,
) -> bool:
    """Create ``name`` (size, distance, model in its metadata, payload indexes), or validate and
    adopt it when it exists; True when it was created here."""
    if model["dim"] < 1:
        raise ConfigError(f"vector dimension must be >= 1, got {model['dim']}")
    indexes = _wanted_indexes(schema)
    meta = _metadata(alias, generation, model, distance, indexes)
    created = False
    if not client.collection_exists(name):
        try:
            client.create_collection(
                name, vectors_config=models.VectorParams(size=model["dim"], distance=distance), metadata=meta
            )
            created = True
            log.info("created Qdrant collection %s (dim %d, %s)", name, model["dim"], distance.value)
        except Exception:
            if not client.collection_exists(name):  # not a lost race: a real failure
                raise
    target = _read_target(client, alias, name)
    check_model(target, **model, distance=distance, what="the model")
    _ensure_payload_indexes(client, name, indexes, meta, created)
    return created


def create_generation(
    client: QdrantBase,
    alias: str,
    generation: int,
    *,
    dim: int,
    model_name: str,
    model_version: int | str,
    schema: PointSchema | None = None,
    distance: models.Distance = models.Distance.COSINE,
) -> CollectionTarget:
    """Build ``<alias>-g<generation>`` beside the live one, without touching the alias: a full
    rebuild fills it, then :func:`~embedding_pipeline.stores.qdrant.generations.swap_alias` moves
    the alias. An existing collection of that name (a retried task) is validated and reused."""
    model = {"model_name": model_name, "model_version": model_version, "dim": dim}
    name = physical_name(alias, generation)
    created = _create_or_adopt(client, alias, name, generation, model, schema, distance)
    return replace(_read_target(client, alias, name), created=created)


def ensure_collection(
    client: QdrantBase,
    alias: str,
    *,
    dim: int,
    model_name: str,
    model_version: int | str,
    schema: PointSchema | None = None,
    distance: models.Distance = models.Distance.COSINE,
    generation: int = 1,
) -> CollectionTarget:
    """Make ``alias`` point at a collection for this model, creating ``<alias>-g<generation>`` if needed.

    Order matters: collection (size ``dim``, ``distance``, model in its metadata), then payload
    indexes (the store's own fields, plus ``schema``'s), then the alias - so a reader never sees a
    collection without its indexes. Safe to call from parallel tasks against a server (a lost
    creation race adopts the winner's collection) and after a crash between steps (an unaliased
    ``-g<generation>`` is validated and adopted). An existing collection built with another model,
    dimension or distance raises :class:`CollectionMismatchError` naming both.
    """
    model = {"model_name": model_name, "model_version": model_version, "dim": dim}
    name = resolve_alias(client, alias) or physical_name(alias, generation)
    created = _create_or_adopt(client, alias, name, generation, model, schema, distance)
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
    client: QdrantBase,
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


def staged_model(staged_path: str | Path) -> dict[str, Any]:
    """``model_name``, ``model_version`` and ``dim`` of the model a staged chunk was embedded with."""
    meta = staged_metadata(as_path(str(staged_path)))
    missing = {"dim", "model_name", "model_version"} - set(meta)
    if missing:
        raise QdrantSinkError(f"staged chunk {staged_path} lacks metadata {sorted(missing)}")
    return {"model_name": meta["model_name"], "model_version": meta["model_version"], "dim": int(meta["dim"])}


def count_points(client: QdrantBase, alias: str) -> int:
    """Exact number of points behind ``alias``."""
    return client.count(_resolve(client, alias), exact=True).count
