"""Elasticsearch sink against the noida-db ES emulator, or a real cluster when ``ES_URL`` is set.

Every test that talks to a cluster is marked ``es_live``: ``ES_URL=https://... pytest -m es_live``
runs the same assertions against real Elasticsearch (credentials from ``ES_USERNAME``/``ES_PASSWORD``
or ``ES_API_KEY``, TLS from ``ES_CA_CERTS``/``ES_FINGERPRINT``). Each test uses its own alias and
deletes its indices afterwards. Retry paths go through :class:`BulkFaultProxy` because the
emulator never answers 429 and cannot drop connections.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from elasticsearch import Elasticsearch
from embedding_pipeline.errors import ConfigError
from embedding_pipeline.retry import RetryPolicy
from embedding_pipeline.runs.dead_letter import DeadLetterWriter, read_dead_letters
from embedding_pipeline.runs.staging import StagedChunkWriter
from embedding_pipeline.stages.keywords.documents import ensure_keyword_index, keyword_document
from embedding_pipeline.stages.keywords.stage import ES_STAGE as STAGE
from embedding_pipeline.stages.keywords.stage import index_keyword_chunk
from embedding_pipeline.stores.elasticsearch.bulk import BulkOptions, item_failure_reason
from embedding_pipeline.stores.elasticsearch.bulk_load import (
    begin_bulk_load,
    bulk_load_settings,
    end_bulk_load,
    get_bulk_settings,
)
from embedding_pipeline.stores.elasticsearch.client import make_client
from embedding_pipeline.stores.elasticsearch.errors import EsIndexError, EsUnavailableError
from embedding_pipeline.stores.elasticsearch.indices import count_docs, ensure_index
from embedding_pipeline.stores.elasticsearch.settings import EsSettings
from es_emulator import (
    BulkFaultProxy,
    EsEmulator,
    FaultPlan,
    always,
    first_n,
    reject_all_items,
    reject_items_where,
)

LIVE = bool(os.environ.get("ES_URL"))
MODEL, VERSION, DIM = "tiny_bert", 1, 8
live = pytest.mark.es_live

Row = tuple[str, str, dict[str, Any]]


# --------------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def es_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EsSettings]:
    """A real cluster from ``ES_URL``, else a fresh noida-db emulator process for this module."""
    if LIVE:
        yield EsSettings.from_env()
        return
    with EsEmulator(tmp_path_factory.mktemp("es-emulator")) as emulator:
        yield EsSettings(hosts=(emulator.url,), request_timeout=30)


@pytest.fixture(scope="module")
def es(es_settings: EsSettings) -> Iterator[Elasticsearch]:
    client = make_client(es_settings)
    yield client
    client.close()


def _delete_alias_indices(es: Elasticsearch, alias: str) -> None:
    # By name: real clusters refuse wildcard deletes (action.destructive_requires_name).
    names = list(es.indices.get(index=f"{alias}*", allow_no_indices=True, expand_wildcards="all").body)
    for name in names:
        es.indices.delete(index=name, ignore_unavailable=True)


@pytest.fixture
def alias(es: Elasticsearch) -> Iterator[str]:
    name = f"test-kw-{uuid.uuid4().hex[:10]}"
    yield name
    _delete_alias_indices(es, name)


@pytest.fixture
def keyword_index(es: Elasticsearch, alias: str) -> str:
    return ensure_keyword_index(es, alias, model_name=MODEL, model_version=VERSION, dim=DIM).index


@contextmanager
def faulty_client(settings: EsSettings, plan: FaultPlan) -> Iterator[tuple[Elasticsearch, BulkFaultProxy]]:
    """A client whose requests pass through a fault-injecting proxy in front of the cluster."""
    with BulkFaultProxy(settings.hosts[0], plan, settings.ca_certs) as proxy:
        client = make_client(replace(settings, hosts=(proxy.url,), max_retries=0))
        try:
            yield client, proxy
        finally:
            client.close()


def keyword_rows(n: int, start: int = 0, variant: str = "a") -> list[Row]:
    words = [
        "東京 ラーメン",
        "大阪 たこ焼き 人気",
        "京都 旅館 安い",
        "cheap flights tokyo",
        "北海道 カニ 通販",
    ]
    rows = []
    for i in range(start, start + n):
        payload: dict[str, Any] = {
            "category": ["food", "travel", None][i % 3],
            "lang": "en" if i % 5 == 3 else "ja",
            "updated_at": "2024-05-01 10:00:00" if i % 2 else "2024-05-01T10:00:00+09:00",
            "dt": "2024-05-01",
        }
        if i % 7 == 0:
            del payload["lang"]  # optional fields may be missing altogether
        rows.append((f"k{i:05d}", f"{words[i % len(words)]} {variant}{i}", payload))
    return rows


def stage(path: Path, rows: list[Row], *, model_name: str = MODEL, dim: int = DIM, batch: int = 64) -> Path:
    writer = StagedChunkWriter(path, dim, "keyword", model_name, VERSION)
    rng = np.random.default_rng(0)
    for i in range(0, len(rows), batch):
        part = rows[i : i + batch]
        vectors = rng.standard_normal((len(part), dim)).astype(np.float32)
        writer.write([r[0] for r in part], vectors, [r[1] for r in part], [r[2] for r in part])
    return writer.close()


def index_chunk(es: Elasticsearch, alias: str, path: Path, run_dir: Path, max_retries: int = 5):
    """Bulks of 100 documents and fast retries (the waits are not what these tests measure)."""
    dead = DeadLetterWriter(run_dir, STAGE, path.stem)
    retry = RetryPolicy(max_retries=max_retries, backoff_initial_s=0.01, backoff_max_s=0.05)
    return index_keyword_chunk(es, alias, path, dead, BulkOptions(chunk_docs=100, retry=retry))


# --------------------------------------------------------------------------------------------------
# Settings, documents, classification (no cluster)
# --------------------------------------------------------------------------------------------------


def test_settings_from_env_never_show_secrets() -> None:
    settings = EsSettings.from_env(
        {
            "ES_URL": "https://elastic:url-secret@es1:9200, https://es2:9200",
            "ES_PASSWORD": "env-secret",
            "ES_API_KEY": "key-secret",
            "ES_CA_CERTS": "/certs/ca.crt",
            "ES_FINGERPRINT": "AB:CD",
            "ES_BULK_CHUNK_DOCS": "250",
        }
    )
    assert settings.hosts == ("https://es1:9200", "https://es2:9200")
    assert settings.username == "elastic" and settings.password == "env-secret"
    assert settings.ssl_assert_fingerprint == "AB:CD" and settings.bulk_chunk_docs == 250
    shown = repr(settings) + str(settings)
    for secret in ("url-secret", "env-secret", "key-secret"):
        assert secret not in shown
    assert "password='<set>'" in shown
    with pytest.raises(ConfigError, match="ES_BULK_CHUNK_DOCS"):
        EsSettings.from_env({"ES_BULK_CHUNK_DOCS": "many"})
    with pytest.raises(ConfigError, match="scheme"):
        EsSettings(hosts=("es1:9200",))


def test_keyword_document_keeps_known_fields_only() -> None:
    doc = keyword_document(
        "k1",
        "東京 ラーメン",
        "h",
        {"category": None, "updated_at": "2024-05-01 10:00:00", "dt": "2024-05-01", "extra": 1},
        model_name="m",
        model_version=2,
        indexed_at="2024-05-02T00:00:00+00:00",
    )
    assert doc["updated_at"] == "2024-05-01T10:00:00"
    assert "category" not in doc and "lang" not in doc and "extra" not in doc
    assert doc["model_version"] == 2 and doc["keyword_id"] == "k1"


def test_item_failure_classification() -> None:
    rejected = {"type": "es_rejected_execution_exception", "reason": "queue full"}
    assert item_failure_reason(429, rejected) == "retry"
    assert item_failure_reason(500, rejected) == "retry"
    for status in (502, 503, 504):
        assert item_failure_reason(status, "gateway") == "retry"
    assert item_failure_reason(400, {"type": "document_parsing_exception"}) == "es_mapping_error"
    assert item_failure_reason(400, {"type": "strict_dynamic_mapping_exception"}) == "es_mapping_error"
    assert item_failure_reason(409, {"type": "version_conflict_engine_exception"}) == "es_version_conflict"
    assert item_failure_reason(400, {"type": "illegal_argument_exception"}) == "es_rejected"


# --------------------------------------------------------------------------------------------------
# Index management
# --------------------------------------------------------------------------------------------------


@live
def test_alias_points_at_generation_index_with_explicit_mapping(es: Elasticsearch, alias: str) -> None:
    target = ensure_keyword_index(es, alias, model_name=MODEL, model_version=VERSION, dim=DIM)
    assert target.created and target.index == f"{alias}-g1"
    assert es.indices.get_alias(name=alias).body == {
        target.index: {"aliases": {alias: {"is_write_index": True}}}
    }

    mapping = es.indices.get_mapping(index=alias).body[target.index]["mappings"]
    assert mapping["dynamic"] in ("strict", "false")
    props = mapping["properties"]
    assert props["keyword"]["type"] == "text" and props["keyword"]["analyzer"] == "cjk"
    assert props["keyword"]["fields"]["raw"] == {"type": "keyword", "ignore_above": 512}
    expected_types = {
        "keyword_id": "keyword",
        "category": "keyword",
        "lang": "keyword",
        "updated_at": "date",
        "model_name": "keyword",
        "model_version": "integer",
        "content_hash": "keyword",
        "indexed_at": "date",
    }
    assert {name: props[name]["type"] for name in expected_types} == expected_types
    assert props["dt"]["type"] in ("keyword", "date")
    assert mapping["_meta"] == {"kind": "keyword", "model_name": MODEL, "model_version": VERSION, "dim": DIM}

    # The field analyses CJK text into a bigram, unlike the standard analyzer (one token per ideograph).
    tokens = es.indices.analyze(index=alias, field="keyword", text="東京").body["tokens"]
    assert [t["token"] for t in tokens] == ["東京"]

    again = ensure_keyword_index(es, alias, model_name=MODEL, model_version=VERSION, dim=DIM)
    assert again.index == target.index and not again.created


@live
def test_rejected_analyzer_is_a_clear_error(es: Elasticsearch, alias: str) -> None:
    try:
        ensure_keyword_index(es, alias, model_name=MODEL, model_version=VERSION, dim=DIM, analyzer="kuromoji")
    except EsIndexError as exc:
        message = str(exc)
    else:
        pytest.skip("this cluster has the analysis-kuromoji plugin")
    assert "kuromoji" in message and "plugin" in message and f"{alias}-g1" in message
    assert not es.indices.exists_alias(name=alias)


@live
def test_existing_index_with_conflicting_type_is_refused(es: Elasticsearch, alias: str) -> None:
    es.indices.create(
        index=f"{alias}-g1",
        mappings={"properties": {"keyword_id": {"type": "long"}, "keyword": {"type": "text"}}},
        aliases={alias: {"is_write_index": True}},
    )
    with pytest.raises(EsIndexError) as caught:
        ensure_keyword_index(es, alias, model_name=MODEL, model_version=VERSION, dim=DIM)
    message = str(caught.value)
    assert f"{alias}-g1" in message and alias in message
    assert "'keyword_id' is long, expected keyword" in message
    assert "analyzer 'default', expected 'cjk'" in message


@live
def test_fields_a_newer_release_writes_are_added_to_an_existing_index(es: Elasticsearch, alias: str) -> None:
    """Only-additive differences (a new field, a new sub-field of an object) are put into the live
    mapping, so `dynamic: strict` accepts the new documents; a changed type is refused and then
    nothing is added."""
    old = {
        "dynamic": "strict",
        "properties": {"id": {"type": "keyword"}, "link": {"properties": {"top_k": {"type": "integer"}}}},
    }
    first = ensure_index(es, alias, old)
    new = {
        "dynamic": "strict",
        "properties": {
            "id": {"type": "keyword"},
            "link": {"properties": {"top_k": {"type": "integer"}, "exact": {"type": "boolean"}}},
            "linked_at": {"type": "date"},
        },
    }
    again = ensure_index(es, alias, new)
    assert (again.index, again.created) == (first.index, False)
    mapping = es.indices.get_mapping(index=first.index).body[first.index]["mappings"]
    assert mapping["properties"]["link"]["properties"]["exact"]["type"] == "boolean"
    assert mapping["properties"]["linked_at"]["type"] == "date"
    es.index(
        index=alias,
        id="1",
        document={"id": "1", "link": {"top_k": 3, "exact": True}, "linked_at": "2024-01-01"},
        refresh=True,
    )
    assert count_docs(es, alias) == 1

    conflicting = {
        "properties": {**new["properties"], "id": {"type": "long"}, "added_later": {"type": "keyword"}}
    }
    with pytest.raises(EsIndexError, match="'id' is keyword, expected long") as caught:
        ensure_index(es, alias, conflicting)
    assert "'added_later' is missing" in str(caught.value)
    mapping = es.indices.get_mapping(index=first.index).body[first.index]["mappings"]
    assert "added_later" not in mapping["properties"]


@live
def test_model_mismatch_with_index_meta_is_refused(
    es: Elasticsearch, alias: str, keyword_index: str, tmp_path: Path
) -> None:
    with pytest.raises(EsIndexError) as caught:
        ensure_keyword_index(es, alias, model_name="other_model", model_version=VERSION, dim=384)
    message = str(caught.value)
    assert "'other_model'" in message and repr(MODEL) in message
    assert "_meta.dim is 8, expected 384" in message

    chunk = stage(tmp_path / "other.parquet", keyword_rows(5), model_name="other_model")
    with pytest.raises(EsIndexError, match="model_name: chunk 'other_model', index 'tiny_bert'"):
        index_chunk(es, alias, chunk, tmp_path)
    assert count_docs(es, alias) == 0


@live
def test_concrete_index_named_like_the_alias_is_refused(es: Elasticsearch, alias: str) -> None:
    es.indices.create(index=alias)
    with pytest.raises(EsIndexError, match="concrete index, not an alias"):
        ensure_keyword_index(es, alias, model_name=MODEL, model_version=VERSION, dim=DIM)


@live
def test_chunk_without_alias_fails_before_writing(es: Elasticsearch, alias: str, tmp_path: Path) -> None:
    chunk = stage(tmp_path / "c.parquet", keyword_rows(3))
    with pytest.raises(EsIndexError, match="does not exist"):
        index_chunk(es, alias, chunk, tmp_path)
    assert not es.indices.exists(index=alias)  # no auto-created concrete index with a dynamic mapping


# --------------------------------------------------------------------------------------------------
# Indexing, idempotency, dead letters
# --------------------------------------------------------------------------------------------------


@live
def test_reindexing_the_same_chunk_changes_no_counts_but_updates_content(
    es: Elasticsearch, alias: str, keyword_index: str, tmp_path: Path
) -> None:
    first = index_chunk(es, alias, stage(tmp_path / "c1.parquet", keyword_rows(450)), tmp_path)
    assert (first.rows_in, first.indexed, first.dead_lettered) == (450, 450, 0)
    assert first.extra["created"] == 450 and first.balanced and first.dead_letter_path is None
    assert count_docs(es, alias) == 450

    doc = es.get(index=alias, id="k00001")
    assert doc["_index"] == keyword_index
    assert doc["_source"]["keyword"] == "大阪 たこ焼き 人気 a1"
    assert doc["_source"]["model_name"] == MODEL and doc["_source"]["dt"] == "2024-05-01"
    hits = es.search(index=alias, query={"term": {"keyword.raw": "大阪 たこ焼き 人気 a1"}})["hits"]["hits"]
    assert [hit["_id"] for hit in hits] == ["k00001"]

    second = index_chunk(es, alias, stage(tmp_path / "c1.parquet", keyword_rows(450, variant="b")), tmp_path)
    assert (second.rows_in, second.indexed, second.dead_lettered) == (450, 450, 0)
    assert second.extra["created"] == 0 and second.extra["updated"] == 450
    assert count_docs(es, alias) == 450
    updated = es.get(index=alias, id="k00001")["_source"]
    assert updated["keyword"] == "大阪 たこ焼き 人気 b1"
    assert updated["content_hash"] != doc["_source"]["content_hash"]


@live
def test_permanent_item_errors_go_to_the_dead_letter_while_the_rest_index(
    es: Elasticsearch, alias: str, keyword_index: str, tmp_path: Path
) -> None:
    rows = keyword_rows(200)
    bad_dates = {"k00010", "k00111", "k00199"}
    for i, (row_id, _, payload) in enumerate(rows):
        if row_id in bad_dates:
            payload["updated_at"] = "not a date"
        if i == 50:
            payload["category"] = {"nested": "object"}  # an object where the mapping says keyword
    long_id = "x" * 600
    rows.append((long_id, "too long an id", {"dt": "2024-05-01"}))

    result = index_chunk(es, alias, stage(tmp_path / "bad.parquet", rows), tmp_path)
    assert result.rows_in == 201 and result.balanced
    assert result.dead_letters_by_reason == {"es_mapping_error": 4, "es_invalid_id": 1}
    assert result.indexed == 196 and count_docs(es, alias) == 196

    letters = {letter["record_id"]: letter for letter in read_dead_letters(tmp_path, STAGE)}
    assert set(letters) == {*bad_dates, "k00050", long_id}
    assert result.dead_letter_path and Path(result.dead_letter_path).is_file()
    date_letter = letters["k00010"]
    assert date_letter["stage"] == STAGE and date_letter["attempt"] == 1
    assert date_letter["error"].startswith("400 ") and "updated_at" in date_letter["error"]
    assert "parsing_exception" in date_letter["error"]  # ES's own error type, not a paraphrase
    assert date_letter["row"]["keyword_id"] == "k00010" and date_letter["row"]["updated_at"] == "not a date"
    assert "category" in letters["k00050"]["error"]
    assert not es.exists(index=alias, id="k00010") and es.exists(index=alias, id="k00011")


# --------------------------------------------------------------------------------------------------
# Bulk-load settings
# --------------------------------------------------------------------------------------------------


@live
def test_bulk_settings_are_restored_after_the_load_and_after_an_exception(
    es: Elasticsearch, alias: str, tmp_path: Path
) -> None:
    ensure_keyword_index(
        es,
        alias,
        model_name=MODEL,
        model_version=VERSION,
        dim=DIM,
        settings={"refresh_interval": "5s", "number_of_replicas": 1},
    )
    original = get_bulk_settings(es, alias)
    assert original == {"refresh_interval": "5s", "number_of_replicas": "1"}

    with bulk_load_settings(es, alias) as previous:
        assert previous["refresh_interval"] == "5s" and str(previous["number_of_replicas"]) == "1"
        assert get_bulk_settings(es, alias) == {"refresh_interval": "-1", "number_of_replicas": "0"}
        index_chunk(es, alias, stage(tmp_path / "c.parquet", keyword_rows(120)), tmp_path)
        assert es.count(index=alias)["count"] == 0  # refresh is really off: not searchable yet
    assert get_bulk_settings(es, alias) == original
    assert es.count(index=alias)["count"] == 120  # refreshed at the end, without count_docs' refresh

    with pytest.raises(RuntimeError, match="task died"), bulk_load_settings(es, alias):
        assert get_bulk_settings(es, alias)["refresh_interval"] == "-1"
        raise RuntimeError("task died")
    assert get_bulk_settings(es, alias) == original


@live
def test_bulk_settings_default_values_are_restored_as_defaults(
    es: Elasticsearch, alias: str, keyword_index: str
) -> None:
    before = get_bulk_settings(es, alias)
    assert before["refresh_interval"] is None  # never set: the cluster default applies
    with bulk_load_settings(es, alias):
        assert get_bulk_settings(es, alias)["refresh_interval"] == "-1"
    assert get_bulk_settings(es, alias) == before


@live
def test_retried_setup_and_lost_xcom_still_restore_the_original_settings(
    es: Elasticsearch, alias: str, keyword_index: str
) -> None:
    es.indices.put_settings(index=alias, settings={"index": {"refresh_interval": "2s"}})
    original = get_bulk_settings(es, alias)
    first = begin_bulk_load(es, alias)
    retried = begin_bulk_load(es, alias)  # a retried setup task sees the bulk values in the settings
    assert retried == first and retried["refresh_interval"] == "2s"
    json.dumps(retried)  # travels through XCom
    end_bulk_load(es, alias)  # teardown without the setup's XCom: uses the values recorded in _meta
    assert get_bulk_settings(es, alias) == original
    end_bulk_load(es, alias, first)  # a retried teardown is harmless
    assert get_bulk_settings(es, alias) == original


@live
def test_concurrent_chunk_tasks_between_setup_and_teardown(
    es: Elasticsearch, alias: str, keyword_index: str, tmp_path: Path
) -> None:
    """The DAG shape: one setup task, mapped loaders in parallel (threads here), one teardown."""
    original = get_bulk_settings(es, alias)
    previous = begin_bulk_load(es, alias)
    chunks = [stage(tmp_path / f"c{n}.parquet", keyword_rows(150, start=n * 150)) for n in range(4)]
    results: list[Any] = []
    errors: list[BaseException] = []

    def load(path: Path) -> None:
        try:
            results.append(index_chunk(es, alias, path, tmp_path))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(path,)) for path in chunks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    end_bulk_load(es, alias, previous)
    assert not errors
    assert sum(r.indexed for r in results) == 600 and all(r.balanced for r in results)
    assert get_bulk_settings(es, alias) == original
    assert es.count(index=alias)["count"] == 600


# --------------------------------------------------------------------------------------------------
# Retries through the fault-injecting proxy
# --------------------------------------------------------------------------------------------------


@live
def test_429_items_are_retried_until_indexed(
    es: Elasticsearch, es_settings: EsSettings, alias: str, keyword_index: str, tmp_path: Path
) -> None:
    chunk = stage(tmp_path / "c.parquet", keyword_rows(250))
    with faulty_client(es_settings, first_n(2, reject_all_items())) as (client, proxy):
        result = index_chunk(client, alias, chunk, tmp_path, max_retries=3)
    assert proxy.faults_injected == 2
    assert (result.indexed, result.dead_lettered) == (250, 0)
    assert result.extra["retried_items"] >= 100
    assert count_docs(es, alias) == 250


@live
def test_partially_rejected_bulk_retries_only_the_rejected_items(
    es: Elasticsearch, es_settings: EsSettings, alias: str, keyword_index: str, tmp_path: Path
) -> None:
    chunk = stage(tmp_path / "c.parquet", keyword_rows(300))
    plan = first_n(3, reject_items_where(lambda i: i % 3 == 0))
    with faulty_client(es_settings, plan) as (client, proxy):
        result = index_chunk(client, alias, chunk, tmp_path, max_retries=3)
    assert proxy.faults_injected == 3
    # Requests 1-3 are faulted: the first batch of 100 loses 34 items, their retry (34) loses 12,
    # that retry (12) loses 4, and the 4th request gets through; later batches are not touched.
    assert result.extra["retried_items"] == 34 + 12 + 4 and result.extra["created"] == 300
    assert (result.indexed, result.dead_lettered) == (300, 0)
    assert count_docs(es, alias) == 300


@live
def test_whole_request_503_is_retried(
    es: Elasticsearch, es_settings: EsSettings, alias: str, keyword_index: str, tmp_path: Path
) -> None:
    chunk = stage(tmp_path / "c.parquet", keyword_rows(120))
    with faulty_client(es_settings, first_n(2, ("status", 503))) as (client, proxy):
        result = index_chunk(client, alias, chunk, tmp_path, max_retries=3)
    assert proxy.faults_injected == 2
    assert (result.indexed, result.dead_lettered) == (120, 0)
    assert count_docs(es, alias) == 120


@live
def test_always_429_dead_letters_with_retries_exhausted(
    es: Elasticsearch, es_settings: EsSettings, alias: str, keyword_index: str, tmp_path: Path
) -> None:
    chunk = stage(tmp_path / "c.parquet", keyword_rows(60))
    with faulty_client(es_settings, always(reject_all_items())) as (client, proxy):
        result = index_chunk(client, alias, chunk, tmp_path, max_retries=2)
    assert proxy.bulk_requests == 3  # one try + two retries
    assert result.rows_in == 60 and result.indexed == 0 and result.balanced
    assert result.dead_letters_by_reason == {"es_retries_exhausted": 60}
    letters = read_dead_letters(tmp_path, STAGE)
    assert len(letters) == 60 and {letter["attempt"] for letter in letters} == {3}
    assert all("es_rejected_execution_exception" in letter["error"] for letter in letters)
    assert count_docs(es, alias) == 0


@live
def test_dropped_connections_are_retried_then_raise(
    es: Elasticsearch, es_settings: EsSettings, alias: str, keyword_index: str, tmp_path: Path
) -> None:
    chunk = stage(tmp_path / "c.parquet", keyword_rows(80))
    with faulty_client(es_settings, first_n(1, ("drop", None))) as (client, _):
        result = index_chunk(client, alias, chunk, tmp_path, max_retries=2)
    assert (result.indexed, result.dead_lettered) == (80, 0) and result.extra["connection_retries"] == 1

    with (
        faulty_client(es_settings, always(("drop", None))) as (client, proxy),
        pytest.raises(EsUnavailableError, match="cannot reach Elasticsearch after 3 attempts"),
    ):
        index_chunk(client, alias, chunk, tmp_path, max_retries=2)
    assert proxy.bulk_requests == 3


@live
def test_concurrent_ensure_creates_one_generation(es: Elasticsearch, alias: str) -> None:
    """Mapped tasks may all call ensure_keyword_index at once: exactly one index comes out."""
    targets: list[Any] = []

    def ensure() -> None:
        targets.append(ensure_keyword_index(es, alias, model_name=MODEL, model_version=VERSION, dim=DIM))

    threads = [threading.Thread(target=ensure) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(targets) == 4 and {t.index for t in targets} == {f"{alias}-g1"}
    assert list(es.indices.get(index=f"{alias}-g*").body) == [f"{alias}-g1"]


@live
def test_orphaned_generation_is_skipped_not_adopted(es: Elasticsearch, alias: str) -> None:
    es.indices.create(index=f"{alias}-g1", mappings={"properties": {"keyword_id": {"type": "long"}}})
    target = ensure_keyword_index(es, alias, model_name=MODEL, model_version=VERSION, dim=DIM)
    assert target.index == f"{alias}-g2" and target.created
    assert list(es.indices.get_alias(name=alias).body) == [f"{alias}-g2"]
