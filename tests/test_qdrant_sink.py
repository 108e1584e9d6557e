"""The Qdrant store's contract against both embedded engines: Qdrant's own (qdrant-edge, the
default) and qdrant-client's local mode, which stands in for a Qdrant server here (same client
calls, no engine of ours). Each ``memory_client`` test runs on both.

Faults local mode cannot produce (timeouts, 503s, gRPC UNAVAILABLE) are injected by a small proxy
around the real client: it raises realistic client exceptions for chosen ``upsert`` calls and
delegates everything else, so the engine doing the writing is always the real one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from embedding_pipeline.errors import ConfigError, InvalidInputError
from embedding_pipeline.retry import RetryPolicy
from embedding_pipeline.runs.dead_letter import DeadLetterWriter, read_dead_letters
from embedding_pipeline.runs.staging import StagedChunkWriter, point_id
from embedding_pipeline.settings import work_dir
from embedding_pipeline.stages.keywords.documents import KEYWORD_POINTS
from embedding_pipeline.stores.qdrant import upsert as qdrant_upsert
from embedding_pipeline.stores.qdrant.client import make_client, open_client
from embedding_pipeline.stores.qdrant.collections import (
    METADATA_KEY,
    count_points,
    ensure_collection,
    resolve_alias,
    staged_model,
)
from embedding_pipeline.stores.qdrant.errors import (
    CollectionMismatchError,
    CollectionNotFoundError,
    QdrantLockedError,
    QdrantSinkError,
    QdrantUnavailableError,
    StorageFormatError,
)
from embedding_pipeline.stores.qdrant.search import SearchOptions, search
from embedding_pipeline.stores.qdrant.settings import QdrantSettings
from embedding_pipeline.stores.qdrant.upsert import REASON_EXHAUSTED, REASON_INVALID, upsert_chunk
from qdrant_client import QdrantClient
from qdrant_client.http import models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

ALIAS = "keywords"
DIM = 384
CATEGORIES = ["food", "travel", "beauty", "sports"]


def stage_chunk(
    path: Path,
    n: int,
    *,
    dim: int = DIM,
    model: str = "minilm",
    version: int = 1,
    seed: int = 0,
    bad_rows: dict[int, float] | None = None,
    dt: str = "2024-05-01",
) -> tuple[Path, np.ndarray]:
    """A staged chunk of ``n`` random unit vectors; ``bad_rows`` puts a value (NaN/inf) in row i."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for row, value in (bad_rows or {}).items():
        vectors[row, 3] = value
    writer = StagedChunkWriter(path, dim, "keywords", model, version)
    ids = [f"k{i:05d}" for i in range(n)]
    payloads = [{"category": CATEGORIES[i % len(CATEGORIES)], "lang": "ja", "dt": dt} for i in range(n)]
    for start in range(0, n, 1000):
        end = min(n, start + 1000)
        writer.write(
            ids[start:end],
            vectors[start:end],
            [f"キーワード {i}" for i in ids[start:end]],
            payloads[start:end],
        )
    return writer.close(), vectors


def corrupt_point_ids(path: Path, rows: list[int]) -> None:
    """Rewrite a staged chunk with malformed point ids at ``rows`` (the engine must reject them)."""
    table = pq.read_table(path)
    point_ids = table.column("point_id").to_pylist()
    for row in rows:
        point_ids[row] = f"not-a-uuid-{row}"
    table = table.set_column(table.schema.get_field_index("point_id"), "point_id", [point_ids])
    pq.write_table(table, path)


def ensure_minilm(client: Any, dim: int = DIM) -> None:
    ensure_collection(client, ALIAS, dim=dim, model_name="minilm", model_version=1)


@pytest.fixture(params=["edge", "python"])
def memory_client(request: pytest.FixtureRequest) -> Iterator[QdrantClient]:
    """A throwaway store on each engine (qdrant-edge in a temporary folder; local mode in memory)."""
    with open_client(QdrantSettings(path=":memory:", local_engine=request.param)) as client:
        yield client


@pytest.fixture
def dead(tmp_path: Path) -> DeadLetterWriter:
    return DeadLetterWriter(tmp_path / "run", "qdrant_upsert", "chunk-0")


def written(dead: DeadLetterWriter) -> list[dict[str, Any]]:
    """The letters a writer holds, as its part file has them (flushed here)."""
    dead.flush()
    return read_dead_letters(dead.path.parent.parent, dead.stage)


class FaultProxy:
    """The real client, with ``upsert`` failing as scripted by ``fault(call_no, points) -> exc|None``."""

    def __init__(
        self, real: QdrantClient, fault: Callable[[int, list[models.PointStruct]], Exception | None]
    ):
        self.real, self.fault = real, fault
        self.upsert_sizes: list[int] = []
        self.calls: list[str] = []

    def upsert(self, collection_name: str, points: list[models.PointStruct], **kwargs: Any) -> Any:
        self.upsert_sizes.append(len(points))
        self.calls.append("upsert")
        error = self.fault(len(self.upsert_sizes), points)
        if error is not None:
            raise error
        return self.real.upsert(collection_name, points=points, **kwargs)

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        return getattr(self.real, name)


def http_error(status: int) -> UnexpectedResponse:
    return UnexpectedResponse(status, "error", b'{"status":{"error":"injected"}}', httpx.Headers())


class RpcFailure(grpc.RpcError):
    """Shaped like grpc's _InactiveRpcError: an RpcError with ``code()`` and ``details()``."""

    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(f"<_InactiveRpcError status = {code}>")
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "injected"


# -- settings and client ---------------------------------------------------------------------------
def test_settings_default_local_on_disk_env_server_and_no_secret_in_repr(monkeypatch, tmp_path) -> None:
    for key in ("QDRANT_URL", "QDRANT_API_KEY", "QDRANT_PATH", "QDRANT_PREFER_GRPC"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("EMBEDDING_PIPELINE_HOME", str(tmp_path))
    default = QdrantSettings.from_env()
    assert default.is_local and default.local_path == str(work_dir() / "qdrant") == str(tmp_path / "qdrant")

    monkeypatch.setenv("QDRANT_URL", "https://user:hunter2@qdrant.example:6333")
    monkeypatch.setenv("QDRANT_API_KEY", "s3cret-key")
    monkeypatch.setenv("QDRANT_PREFER_GRPC", "true")
    server = QdrantSettings.from_env(upsert_batch=128)
    assert not server.is_local and server.prefer_grpc and server.upsert_batch == 128
    assert server.api_key == "s3cret-key"
    shown = repr(server) + str(server)
    assert "s3cret-key" not in shown and "hunter2" not in shown
    assert "qdrant.example" in shown

    with pytest.raises(ConfigError, match="either path"):
        QdrantSettings(path=tmp_path, url="http://localhost:6333")
    with pytest.raises(ConfigError, match="port"):
        QdrantSettings(host="localhost", grpc_port=70000)


@pytest.mark.parametrize("engine", ["edge", "python"])
def test_local_storage_locked_by_another_process_gives_clear_error(engine: str, tmp_path: Path) -> None:
    storage = tmp_path / "qdrant"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys
                from embedding_pipeline.stores.qdrant.client import make_client
                from embedding_pipeline.stores.qdrant.settings import QdrantSettings
                client = make_client(QdrantSettings(path={str(storage)!r}, local_engine={engine!r}))
                print("ready", flush=True)
                sys.stdin.read()
                client.close()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        settings = QdrantSettings(path=storage, lock_wait_s=0.3, local_engine=engine)
        with pytest.raises(QdrantLockedError) as info:
            make_client(settings)
        message = str(info.value)
        assert str(storage) in message and "another process" in message
        assert "one at a time" in message and "QDRANT_URL" in message
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    assert holder.returncode == 0
    with open_client(QdrantSettings(path=storage, lock_wait_s=0, local_engine=engine)) as client:
        assert client.get_collections().collections == []  # released: opens again


def test_the_embedded_engine_refuses_a_local_mode_folder_and_says_what_to_do(tmp_path: Path) -> None:
    """The two engines keep different files: reading the other's folder is refused, not emptied."""
    with open_client(QdrantSettings(path=tmp_path / "q", local_engine="python")) as client:
        ensure_minilm(client)
    with pytest.raises(StorageFormatError, match="QDRANT_LOCAL_ENGINE=python") as info:
        make_client(QdrantSettings(path=tmp_path / "q"))
    assert "mode=full" in str(info.value)
    with open_client(QdrantSettings(path=tmp_path / "q", local_engine="python")) as client:
        assert resolve_alias(client, ALIAS) == "keywords-g1"  # untouched
    with pytest.raises(ConfigError, match="local_engine"):
        QdrantSettings(local_engine="rust")


# -- collections ---------------------------------------------------------------------------------
def test_ensure_collection_on_disk_creates_generation_indexes_then_alias(monkeypatch, tmp_path) -> None:
    """The real default (``<work_dir>/qdrant`` on disk, the embedded engine); aliases, metadata and
    payload indexes survive a reopen."""
    monkeypatch.setenv("EMBEDDING_PIPELINE_HOME", str(tmp_path))
    monkeypatch.delenv("QDRANT_URL", raising=False)
    monkeypatch.delenv("QDRANT_PATH", raising=False)
    settings = QdrantSettings.from_env()
    with open_client(settings) as real:
        proxy = FaultProxy(real, lambda *_: None)
        target = ensure_collection(
            proxy, ALIAS, dim=DIM, model_name="minilm", model_version=3, schema=KEYWORD_POINTS
        )  # type: ignore[arg-type]
        assert target.created and target.name == "keywords-g1" and target.alias == ALIAS
        created = proxy.calls.index("create_collection")
        indexed = [i for i, call in enumerate(proxy.calls) if call == "create_payload_index"]
        aliased = proxy.calls.index("update_collection_aliases")
        assert (
            len(indexed) == len(KEYWORD_POINTS.payload_indexes())
            and created < min(indexed)
            and max(indexed) < aliased
        )

    catalog = json.loads((tmp_path / "qdrant" / "catalog.json").read_text())
    assert catalog["aliases"] == {ALIAS: "keywords-g1"}
    assert (tmp_path / "qdrant" / "collections" / "keywords-g1" / "segments").is_dir()
    with open_client(settings) as client:  # a fresh process view: everything came from disk
        assert resolve_alias(client, ALIAS) == "keywords-g1"
        info = client.get_collection(ALIAS)
        vectors = info.config.params.vectors
        assert vectors.size == DIM and vectors.distance == models.Distance.COSINE
        recorded = info.config.metadata[METADATA_KEY]
        assert (recorded["model_name"], recorded["model_version"], recorded["dim"]) == ("minilm", "3", DIM)
        assert recorded["payload_indexes"] == {
            "keyword_id": "keyword",
            "dt": "keyword",
            "dt_version": "integer",
            "category": "keyword",
            "lang": "keyword",
            "content_hash": "keyword",
            "model_version": "integer",
        }
        proxy = FaultProxy(client, lambda *_: None)
        again = ensure_collection(
            proxy, ALIAS, dim=DIM, model_name="minilm", model_version=3, schema=KEYWORD_POINTS
        )  # type: ignore[arg-type]
        assert not again.created and again.name == "keywords-g1"
        assert not {"create_collection", "create_payload_index", "update_collection_aliases"} & set(
            proxy.calls
        )
        assert [c.name for c in client.get_collections().collections] == ["keywords-g1"]


def test_ensure_collection_refuses_another_model_or_dim_naming_both(memory_client: QdrantClient) -> None:
    ensure_minilm(memory_client)
    with pytest.raises(CollectionMismatchError) as info:
        ensure_collection(memory_client, ALIAS, dim=768, model_name="multilingual-e5", model_version=2)
    message = str(info.value)
    assert (
        "minilm v1" in message and "384" in message and "multilingual-e5 v2" in message and "768" in message
    )
    with pytest.raises(CollectionMismatchError, match=r"minilm v1 .*minilm v2.*model differ"):
        ensure_collection(memory_client, ALIAS, dim=DIM, model_name="minilm", model_version=2)
    with pytest.raises(CollectionMismatchError, match="distance differ"):
        ensure_collection(
            memory_client, ALIAS, dim=DIM, model_name="minilm", model_version=1, distance=models.Distance.DOT
        )
    assert [c.name for c in memory_client.get_collections().collections] == ["keywords-g1"]


def test_ensure_collection_adopts_an_unaliased_generation_left_by_a_crash(
    memory_client: QdrantClient,
) -> None:
    memory_client.create_collection(
        "keywords-g1", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE)
    )
    target = ensure_collection(memory_client, ALIAS, dim=DIM, model_name="minilm", model_version=1)
    assert not target.created and target.name == "keywords-g1"
    assert resolve_alias(memory_client, ALIAS) == "keywords-g1"
    assert (target.model_name, target.model_version) == ("minilm", "1")  # claimed: others are refused
    with pytest.raises(CollectionMismatchError, match="minilm v1"):
        ensure_collection(memory_client, ALIAS, dim=DIM, model_name="e5", model_version=1)
    with pytest.raises(CollectionNotFoundError, match="ensure_collection"):
        count_points(memory_client, "products")


# -- upsert --------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["edge", "python"])
@pytest.mark.parametrize(("where", "n"), [("memory", 3000), ("disk", 400)])
def test_upsert_is_idempotent_and_points_carry_their_payload(
    where: str, n: int, engine: str, tmp_path: Path, dead: DeadLetterWriter
) -> None:
    staged, vectors = stage_chunk(tmp_path / "staged" / "c0.parquet", n)
    path = ":memory:" if where == "memory" else tmp_path / "qdrant"
    settings = QdrantSettings(path=path, local_engine=engine)
    with open_client(settings) as client:
        ensure_collection(client, ALIAS, **staged_model(staged))
        first = upsert_chunk(client, ALIAS, staged, dead, schema=KEYWORD_POINTS, batch_size=256)
        assert (first.rows_in, first.indexed, first.dead_lettered) == (n, n, 0) and first.balanced
        assert first.stage == "qdrant_upsert" and first.extra["collection"] == "keywords-g1"
        assert count_points(client, ALIAS) == n == client.count("keywords-g1").count
        second = upsert_chunk(client, ALIAS, staged, dead, schema=KEYWORD_POINTS, batch_size=100)
        assert second.indexed == n and count_points(client, ALIAS) == n

        (point,) = client.retrieve(ALIAS, [point_id("keywords", "k00007")], with_vectors=True)
        assert point.payload == {
            "keyword_id": "k00007",
            "keyword": "キーワード k00007",
            "content_hash": point.payload["content_hash"],
            "model_name": "minilm",
            "model_version": 1,
            "category": "sports",
            "lang": "ja",
            "dt": "2024-05-01",
            "dt_version": 20240501,
        }
        assert len(point.payload["content_hash"]) == 64
        np.testing.assert_allclose(point.vector, vectors[7], atol=1e-6)
    assert dead.flush() is None


def test_an_older_date_never_overwrites_a_newer_one_even_when_it_read_first(
    memory_client: QdrantClient, tmp_path: Path, dead: DeadLetterWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a server two chunks of different dates can race: dt1 reads the stored points before dt2
    writes them. Simulated by making the read see nothing; the conditional upsert (the engine's
    ``update_filter``) must still keep dt2's points, insert ids dt2 lacks, and overwrite points
    written before ``dt_version`` existed."""
    newer, newer_vectors = stage_chunk(tmp_path / "d2.parquet", 40, seed=2, dt="2024-05-02")
    older, older_vectors = stage_chunk(tmp_path / "d1.parquet", 60, seed=1, dt="2024-05-01")
    ensure_minilm(memory_client)
    upsert_chunk(memory_client, ALIAS, newer, dead, schema=KEYWORD_POINTS)
    legacy = point_id("keywords", "k00030")  # as stored by a version without dt_version
    memory_client.set_payload("keywords-g1", {"dt": "2024-06-01"}, points=[legacy])
    memory_client.delete_payload("keywords-g1", ["dt_version"], points=[legacy])

    monkeypatch.setattr(qdrant_upsert, "_drop_superseded", lambda _c, _n, _r, pts, rows: (pts, rows, 0))
    result = upsert_chunk(memory_client, ALIAS, older, dead, schema=KEYWORD_POINTS)
    assert result.balanced and result.indexed == 60  # counted as indexed: the read saw no newer point

    stored = {
        p.payload["keyword_id"]: p
        for p in memory_client.scroll("keywords-g1", limit=1000, with_vectors=True)[0]
    }
    assert len(stored) == 60
    for i in range(60):
        point = stored[f"k{i:05d}"]
        if i < 40 and i != 30:  # dt2 holds it: dt1's write is refused by the engine
            assert (point.payload["dt"], point.payload["dt_version"]) == ("2024-05-02", 20240502), i
            np.testing.assert_allclose(point.vector, newer_vectors[i], atol=1e-6)
        else:  # only dt1 has it, or the stored point had no dt_version: dt1 writes it
            assert (point.payload["dt"], point.payload["dt_version"]) == ("2024-05-01", 20240501), i
            np.testing.assert_allclose(point.vector, older_vectors[i], atol=1e-6)


def test_chunk_of_another_model_is_refused_before_writing(
    memory_client: QdrantClient, tmp_path, dead
) -> None:
    ensure_minilm(memory_client)
    other_dim, _ = stage_chunk(tmp_path / "e5.parquet", 10, dim=768, model="multilingual-e5", version=2)
    with pytest.raises(CollectionMismatchError) as info:
        upsert_chunk(memory_client, ALIAS, other_dim, dead, schema=KEYWORD_POINTS)
    message = str(info.value)
    assert (
        "minilm v1" in message and "384" in message and "multilingual-e5 v2" in message and "768" in message
    )
    same_dim, _ = stage_chunk(tmp_path / "v2.parquet", 10, model="minilm", version=2)
    with pytest.raises(CollectionMismatchError, match="minilm v2"):
        upsert_chunk(memory_client, ALIAS, same_dim, dead, schema=KEYWORD_POINTS)
    assert count_points(memory_client, ALIAS) == 0


def test_non_finite_vectors_are_dead_lettered_and_the_rest_indexed(memory_client, tmp_path, dead) -> None:
    bad = {3: np.nan, 150: np.nan, 299: np.nan, 77: np.inf}
    staged, _ = stage_chunk(tmp_path / "c.parquet", 300, bad_rows=bad)
    ensure_minilm(memory_client)
    result = upsert_chunk(memory_client, ALIAS, staged, dead, schema=KEYWORD_POINTS, batch_size=64)
    assert (result.rows_in, result.indexed, result.dead_lettered) == (300, 296, 4) and result.balanced
    assert result.dead_letters_by_reason == {REASON_INVALID: 4}
    assert count_points(memory_client, ALIAS) == 296
    letters = read_dead_letters(tmp_path / "run", "qdrant_upsert")
    assert sorted(letter["record_id"] for letter in letters) == ["k00003", "k00077", "k00150", "k00299"]
    assert all("non-finite" in letter["error"] and letter["row"]["keyword"] for letter in letters)
    assert result.dead_letter_path and Path(result.dead_letter_path).is_file()


def test_rows_staging_cannot_vouch_for_are_dead_lettered(memory_client, tmp_path, dead) -> None:
    """Points are built without pydantic's per-point check: a row with no point id or with a
    ``dt`` that is no date must still reach the dead letter with its reason, not the engine."""
    staged, _ = stage_chunk(tmp_path / "c.parquet", 200)
    table = pq.read_table(staged)
    point_ids, payloads = table.column("point_id").to_pylist(), table.column("payload").to_pylist()
    point_ids[7] = None
    payloads[42] = json.dumps({"category": "a", "lang": "ja", "dt": "2024-13-45"})
    table = table.set_column(table.schema.get_field_index("point_id"), "point_id", [point_ids])
    table = table.set_column(table.schema.get_field_index("payload"), "payload", [payloads])
    pq.write_table(table, staged)
    ensure_minilm(memory_client)
    result = upsert_chunk(memory_client, ALIAS, staged, dead, schema=KEYWORD_POINTS, batch_size=64)
    assert (result.indexed, result.dead_lettered) == (198, 2) and result.balanced
    letters = {letter["record_id"]: letter["error"] for letter in written(dead)}
    assert "no point id" in letters["k00007"] and "2024-13-45" in letters["k00042"]
    assert count_points(memory_client, ALIAS) == 198


def test_points_the_engine_rejects_are_isolated_by_bisection(memory_client, tmp_path, dead) -> None:
    """Malformed point ids are rejected by the real engine for the whole batch; bisection finds them."""
    staged, _ = stage_chunk(tmp_path / "c.parquet", 512)
    corrupt_point_ids(staged, [5, 300, 301])
    ensure_minilm(memory_client)
    proxy = FaultProxy(memory_client, lambda *_: None)
    result = upsert_chunk(proxy, ALIAS, staged, dead, schema=KEYWORD_POINTS, batch_size=128)  # type: ignore[arg-type]
    assert (result.indexed, result.dead_lettered) == (509, 3) and result.balanced
    assert result.dead_letters_by_reason == {REASON_INVALID: 3}
    letters = {letter["record_id"]: letter for letter in written(dead)}
    assert set(letters) == {"k00005", "k00300", "k00301"}
    assert all("UUID" in letter["error"] for letter in letters.values())  # each engine's own words
    assert count_points(memory_client, ALIAS) == 509
    # bisection, not point-by-point: 4 batches + about 2*log2(128) requests per bad point
    assert len(proxy.upsert_sizes) < 4 + 3 * 2 * 7 + 4


TRANSIENT_FAULTS = {
    "http-503": lambda: http_error(503),
    "http-429": lambda: http_error(429),
    "timeout": lambda: ResponseHandlingException(httpx.ReadTimeout("timed out")),
    "connection-reset": lambda: ResponseHandlingException(httpx.ConnectError("connection reset by peer")),
    "grpc-unavailable": lambda: RpcFailure(grpc.StatusCode.UNAVAILABLE),
    "grpc-resource-exhausted": lambda: RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED),
}


@pytest.mark.parametrize("fault", sorted(TRANSIENT_FAULTS))
def test_transient_errors_are_retried_with_exponential_backoff(fault, memory_client, tmp_path, dead) -> None:
    """Injected faults: local mode never fails transiently, so the proxy fails the first 3 upserts."""
    staged, _ = stage_chunk(tmp_path / "c.parquet", 600)
    ensure_minilm(memory_client)
    proxy = FaultProxy(memory_client, lambda call, _: TRANSIENT_FAULTS[fault]() if call <= 3 else None)
    sleeps: list[float] = []
    result = upsert_chunk(
        proxy,  # type: ignore[arg-type]
        ALIAS,
        staged,
        dead,
        schema=KEYWORD_POINTS,
        batch_size=200,
        retry=RetryPolicy(max_retries=4, backoff_initial_s=0.1, backoff_max_s=10, sleep=sleeps.append),
    )
    assert (result.indexed, result.dead_lettered, result.extra["retries"]) == (600, 0, 3)
    assert count_points(memory_client, ALIAS) == 600
    assert proxy.upsert_sizes == [200] * 6  # the same batch three more times, then the other two
    for attempt, delay in enumerate(sleeps):
        cap = 0.1 * 2**attempt
        assert cap / 2 <= delay <= cap  # exponential, jittered within [cap/2, cap]


def test_points_that_keep_failing_transiently_are_dead_lettered(memory_client, tmp_path, dead) -> None:
    """Injected: any request carrying a poisoned point times out; bisection isolates those points."""
    staged, _ = stage_chunk(tmp_path / "c.parquet", 256)
    poisoned = {point_id("keywords", f"k{i:05d}") for i in (10, 100, 200)}

    def fault(_: int, points: list[models.PointStruct]) -> Exception | None:
        hit = any(p.id in poisoned for p in points)
        return ResponseHandlingException(httpx.ReadTimeout("timed out")) if hit else None

    ensure_minilm(memory_client)
    result = upsert_chunk(
        FaultProxy(memory_client, fault),  # type: ignore[arg-type]
        ALIAS,
        staged,
        dead,
        schema=KEYWORD_POINTS,
        batch_size=128,
        retry=RetryPolicy(max_retries=2, sleep=lambda _: None),
    )
    assert (result.indexed, result.dead_lettered) == (253, 3) and result.balanced
    assert result.dead_letters_by_reason == {REASON_EXHAUSTED: 3}
    letters = written(dead)
    assert {letter["record_id"] for letter in letters} == {"k00010", "k00100", "k00200"}
    assert all(letter["attempt"] == 3 and "ReadTimeout" in letter["error"] for letter in letters)
    assert count_points(memory_client, ALIAS) == 253


def test_an_outage_fails_the_task_instead_of_dead_lettering_everything(memory_client, tmp_path, dead) -> None:
    """Injected: every upsert answers 503. Dead-lettering the chunk would hide an outage."""
    staged, _ = stage_chunk(tmp_path / "c.parquet", 64)
    ensure_minilm(memory_client)
    proxy = FaultProxy(memory_client, lambda *_: http_error(503))
    with pytest.raises(QdrantUnavailableError, match="kept failing transiently"):
        upsert_chunk(
            proxy,
            ALIAS,
            staged,
            dead,
            schema=KEYWORD_POINTS,
            batch_size=64,
            retry=RetryPolicy(max_retries=1, sleep=lambda _: None),
        )  # type: ignore[arg-type]
    assert len(proxy.upsert_sizes) < 30
    assert not (tmp_path / "run" / "dead_letters").exists()


def test_a_permanent_request_error_is_raised_not_bisected(memory_client, tmp_path, dead) -> None:
    """Injected: 401 (bad API key) is nobody's point's fault: fail at once, no retries, no dead letters."""
    staged, _ = stage_chunk(tmp_path / "c.parquet", 64)
    ensure_minilm(memory_client)
    proxy = FaultProxy(memory_client, lambda *_: http_error(401))
    with pytest.raises(QdrantSinkError, match="not retryable"):
        upsert_chunk(
            proxy,
            ALIAS,
            staged,
            dead,
            schema=KEYWORD_POINTS,
            retry=RetryPolicy(sleep=lambda _: pytest.fail("must not retry")),
        )  # type: ignore[arg-type]
    assert proxy.upsert_sizes == [64] and len(dead) == 0


# -- search ---------------------------------------------------------------------------------------
@pytest.fixture
def indexed(memory_client: QdrantClient, tmp_path: Path, dead: DeadLetterWriter) -> np.ndarray:
    staged, vectors = stage_chunk(tmp_path / "c.parquet", 2000, seed=1)
    ensure_minilm(memory_client)
    upsert_chunk(memory_client, ALIAS, staged, dead, schema=KEYWORD_POINTS)
    return vectors


def brute_force(vectors: np.ndarray, queries: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Cosine scores of every (query, point), masked-out points at -inf."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T
    if mask is not None:
        scores[:, ~mask] = -np.inf
    return scores


def test_search_returns_exact_nearest_neighbours(memory_client, indexed: np.ndarray) -> None:
    rng = np.random.default_rng(7)
    # queries near known points, plus pure noise: both must match brute force exactly
    queries = np.vstack(
        [indexed[:10] + 0.3 / np.sqrt(DIM) * rng.standard_normal((10, DIM)), rng.standard_normal((10, DIM))]
    )
    hits = search(memory_client, ALIAS, queries.astype(np.float32), SearchOptions(top_k=5, batch_size=8))
    scores = brute_force(indexed, queries)
    assert len(hits) == 20 and all(len(h) == 5 for h in hits)
    for q, query_hits in enumerate(hits):
        expected = np.argsort(-scores[q])[:5]
        assert [h.payload["keyword_id"] for h in query_hits] == [f"k{i:05d}" for i in expected]
        np.testing.assert_allclose([h.score for h in query_hits], scores[q, expected], atol=1e-5)
    assert [payload["keyword_id"] for payload, _ in hits[0][:1]] == ["k00000"]


def test_search_fetches_only_the_payload_fields_asked_for(memory_client, indexed: np.ndarray) -> None:
    """The linker reads two fields of each hit: only those come back, the hits unchanged."""
    every = search(memory_client, ALIAS, indexed[:4], SearchOptions(top_k=6))
    fields = ("keyword_id", "keyword")
    some = search(memory_client, ALIAS, indexed[:4], SearchOptions(top_k=6, with_payload=fields))
    assert all(len(hit.payload) > 2 for hits in every for hit in hits)
    for full, narrow in zip(every, some, strict=True):
        assert [h.payload for h in narrow] == [{k: h.payload[k] for k in fields} for h in full]
        assert [h.score for h in narrow] == pytest.approx([h.score for h in full])


def test_search_honours_score_threshold_and_payload_filter(memory_client, indexed: np.ndarray) -> None:
    queries = indexed[[0, 1, 2]] + 0.05
    scores = brute_force(indexed, queries)
    threshold = float(np.sort(scores[0])[-3])  # exactly 3 points reach it for query 0
    hits = search(memory_client, ALIAS, queries, SearchOptions(top_k=10, score_threshold=threshold - 1e-6))
    for q, query_hits in enumerate(hits):
        expected = [i for i in np.argsort(-scores[q]) if scores[q, i] >= threshold - 1e-6][:10]
        assert [h.payload["keyword_id"] for h in query_hits] == [f"k{i:05d}" for i in expected]
    assert len(hits[0]) == 3

    is_travel = np.array([CATEGORIES[i % len(CATEGORIES)] == "travel" for i in range(len(indexed))])
    masked = brute_force(indexed, queries, is_travel)
    for query_filter in (
        {"category": "travel"},
        models.Filter(must=[models.FieldCondition(key="category", match=models.MatchValue(value="travel"))]),
    ):
        hits = search(memory_client, ALIAS, queries, SearchOptions(top_k=7, query_filter=query_filter))
        for q, query_hits in enumerate(hits):
            assert {h.payload["category"] for h in query_hits} == {"travel"}
            expected = np.argsort(-masked[q])[:7]
            assert [h.payload["keyword_id"] for h in query_hits] == [f"k{i:05d}" for i in expected]


def test_search_passes_hnsw_ef_and_exact_to_the_engine(memory_client, indexed: np.ndarray) -> None:
    """What a server's HNSW search would use reaches every request (recorded by a wrapper: local
    mode, the only engine here, searches exhaustively and ignores both); the hits stay the exact ones."""
    seen: list[Any] = []

    class Recording:
        def __getattr__(self, name: str) -> Any:
            return getattr(memory_client, name)

        def query_batch_points(self, collection_name: str, requests: list, **kwargs: Any) -> Any:
            seen.extend(r.params for r in requests)
            return memory_client.query_batch_points(collection_name, requests=requests, **kwargs)

    queries = indexed[:5] + 0.05
    plain = search(Recording(), ALIAS, queries, SearchOptions(top_k=4, batch_size=2))  # type: ignore[arg-type]
    assert seen == [None] * 5
    seen.clear()
    tuned = search(Recording(), ALIAS, queries, SearchOptions(top_k=4, hnsw_ef=128, batch_size=2))  # type: ignore[arg-type]
    assert [(p.hnsw_ef, p.exact) for p in seen] == [(128, False)] * 5
    seen.clear()
    exact = search(Recording(), ALIAS, queries, SearchOptions(top_k=4, exact=True, batch_size=2))  # type: ignore[arg-type]
    assert [(p.hnsw_ef, p.exact) for p in seen] == [(None, True)] * 5

    def ids_scores(hits: list[list[Any]]) -> tuple[list[list[str]], np.ndarray]:
        ids = [[h.payload["keyword_id"] for h in q] for q in hits]
        return ids, np.array([[h.score for h in q] for q in hits])

    for hits in (tuned, exact):
        assert ids_scores(hits)[0] == ids_scores(plain)[0]
        np.testing.assert_allclose(ids_scores(hits)[1], ids_scores(plain)[1])
    with pytest.raises(InvalidInputError, match="hnsw_ef must be >= 1"):
        search(memory_client, ALIAS, queries, SearchOptions(top_k=4, hnsw_ef=0))


def test_search_refuses_query_vectors_of_another_model(memory_client, indexed: np.ndarray) -> None:
    with pytest.raises(CollectionMismatchError, match=r"minilm v1 \(dim 384.*dim 768"):
        search(memory_client, ALIAS, np.ones((2, 768), dtype=np.float32), SearchOptions(top_k=3))
    with pytest.raises(CollectionMismatchError, match="e5 v1"):
        search(memory_client, ALIAS, indexed[:2], SearchOptions(top_k=3, model_name="e5", model_version=1))
    assert (
        len(
            search(
                memory_client,
                ALIAS,
                indexed[:2],
                SearchOptions(top_k=3, model_name="minilm", model_version=1),
            )
        )
        == 2
    )


def test_dead_letter_rows_are_replayable_json(memory_client, tmp_path, dead) -> None:
    staged, _ = stage_chunk(tmp_path / "c.parquet", 20, bad_rows={4: np.nan})
    ensure_minilm(memory_client)
    result = upsert_chunk(memory_client, ALIAS, staged, dead, schema=KEYWORD_POINTS)
    (line,) = Path(result.dead_letter_path).read_text(encoding="utf-8").splitlines()
    row = json.loads(line)["row"]
    assert row["id"] == "k00004" and row["keyword"] == "キーワード k00004"
    assert row["point_id"] == point_id("keywords", "k00004") and row["payload"]["category"] == "food"


def test_search_retries_a_transient_error(memory_client, indexed: np.ndarray) -> None:
    """Injected: the first batched query answers 503 (local mode cannot); the retry gets the answer."""
    calls: list[int] = []

    class FlakySearch:
        def __getattr__(self, name: str) -> Any:
            return getattr(memory_client, name)

        def query_batch_points(self, collection_name: str, requests: list, **kwargs: Any) -> Any:
            calls.append(len(requests))
            if len(calls) == 1:
                raise http_error(503)
            return memory_client.query_batch_points(collection_name, requests=requests, **kwargs)

    sleeps: list[float] = []
    hits = search(
        FlakySearch(), ALIAS, indexed[:3], SearchOptions(top_k=2), retry=RetryPolicy(sleep=sleeps.append)
    )  # type: ignore[arg-type]
    assert [h[0].payload["keyword_id"] for h in hits] == ["k00000", "k00001", "k00002"]
    assert calls == [3, 3] and len(sleeps) == 1
