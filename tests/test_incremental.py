"""Incremental runs through the stage functions: real inference server (tiny BERT), Qdrant local
mode and the ES emulator (a real cluster with ``ES_URL``). Skips, field-only updates, deletes by
tombstone and by snapshot, the delete guard, late backfills and model changes."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from embedding_pipeline.errors import SetupError
from embedding_pipeline.runs.changes import DeleteGuardError
from embedding_pipeline.runs.input_kinds import InputSpec
from embedding_pipeline.runs.state import IndexState, ModelChangedError, delta_table
from stage_runner import run_keywords

MODEL = "tiny_bert"
_runs = itertools.count()


def write_keywords(root: Path, dt: str, rows: list[dict[str, Any]]) -> None:
    """One partition file of keyword rows (keyword_id, keyword, category[, deleted])."""
    path = root / "keywords" / f"dt={dt}" / "part-0.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {key: [row.get(key) for row in rows] for key in ("keyword_id", "keyword", "category")}
    table = pa.table(
        {
            "keyword_id": pa.array(columns["keyword_id"], pa.int64()),
            "keyword": pa.array(columns["keyword"], pa.string()),
            "category": pa.array(columns["category"], pa.string()),
        }
    )
    if any("deleted" in row for row in rows):
        table = table.append_column("deleted", pa.array([bool(row.get("deleted")) for row in rows]))
    pq.write_table(table, path)


def stored_keywords(alias: str) -> tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]]:
    """(Qdrant, ES): keyword_id -> (keyword, category) of every stored keyword."""
    from elasticsearch.helpers import scan
    from embedding_pipeline.stores.elasticsearch.client import open_es
    from embedding_pipeline.stores.qdrant.client import open_client
    from embedding_pipeline.stores.qdrant.search import iter_vectors

    with open_client() as qdrant:
        points = {
            str(p["keyword_id"]): (p["keyword"], p.get("category"))
            for _, payloads in iter_vectors(qdrant, alias, batch_size=256, with_payload=True)
            for p in payloads
        }
    with open_es() as es:
        es.indices.refresh(index=alias)
        docs = {
            hit["_id"]: (hit["_source"]["keyword"], hit["_source"].get("category"))
            for hit in scan(es, index=alias, query={"query": {"match_all": {}}})
        }
    return points, docs


@pytest.fixture
def kw(pipeline_services) -> dict[str, Any]:
    tmp_path = pipeline_services
    return {"root": tmp_path / "data", "alias": f"kw_{tmp_path.name.lower()[-30:]}", "tmp": tmp_path}


def run(kw: dict[str, Any], dts: list[str], **spec: Any) -> dict[str, Any]:
    run_dir = kw["tmp"] / "runs" / f"r{next(_runs)}"
    return run_keywords(kw["root"], dts, run_dir, MODEL, InputSpec(**spec), kw["alias"])


def _row(i: int, text: str | None = None, category: str = "food", **extra: Any) -> dict[str, Any]:
    return {"keyword_id": i, "keyword": text or f"keyword number {i}", "category": category, **extra}


def test_unchanged_rows_are_skipped_fields_update_without_embedding_and_tombstones_delete(kw):
    write_keywords(kw["root"], "2024-01-01", [_row(i) for i in range(10)])
    first = run(kw, ["2024-01-01"], tombstone_column="deleted", max_delete_ratio=0.2)
    assert first["embed"]["extra"]["embedded"] == 10 and first["sinks"]["qdrant"]["indexed"] == 10

    write_keywords(
        kw["root"],
        "2024-01-02",
        [
            *[_row(i) for i in range(5)],  # unchanged
            _row(5, "a new text for five"),  # text changed: re-embedded
            _row(6, category="toys"),  # field changed: no embedding
            _row(7, deleted=True),  # tombstone
            _row(42, deleted=True),  # tombstone for an id nobody stored
            _row(10, "brand new keyword"),  # new
        ],
    )
    second = run(kw, ["2024-01-02"], tombstone_column="deleted", max_delete_ratio=0.2)
    embed = second["embed"]
    assert embed["extra"]["embedded"] == 2 and embed["extra"]["fields_updated"] == 1
    assert embed["unchanged"] == 6 and embed["deleted"] == 1 and embed["extra"]["unknown_deletes"] == 1
    for store in ("qdrant", "es"):
        sink = second["sinks"][store]
        assert (sink["indexed"], sink["deleted"], sink["dead_lettered"]) == (3, 1, 0), store
        assert second["rows_read"] == sink["indexed"] + embed["unchanged"] + sink["deleted"]
    expected = {str(i): (f"keyword number {i}", "food") for i in (0, 1, 2, 3, 4, 8, 9)}
    expected |= {"5": ("a new text for five", "food"), "6": ("keyword number 6", "toys")}
    expected["10"] = ("brand new keyword", "food")
    assert stored_keywords(kw["alias"]) == (expected, expected)

    again = run(
        kw, ["2024-01-02"], tombstone_column="deleted", max_delete_ratio=0.2
    )  # a re-run changes nothing
    assert again["embed"]["extra"]["embedded"] == 0 and again["embed"]["indexed"] == 0
    assert stored_keywords(kw["alias"]) == (expected, expected)


def test_snapshots_delete_absent_ids_behind_the_guard_and_late_backfills_change_nothing(kw):
    write_keywords(kw["root"], "2024-02-01", [_row(i) for i in range(40)])
    run(kw, ["2024-02-01"], kind="snapshot")
    write_keywords(kw["root"], "2024-02-03", [_row(i) for i in range(40) if i != 3] + [_row(50)])
    second = run(kw, ["2024-02-03"], kind="snapshot")
    assert second["embed"]["deleted"] == 1 and second["embed"]["extra"]["embedded"] == 1
    expected = {str(i): (f"keyword number {i}", "food") for i in [*range(40), 50] if i != 3}
    assert stored_keywords(kw["alias"]) == (expected, expected)

    # A late snapshot of an older date: every id was seen later, nothing changes (3 stays deleted).
    write_keywords(kw["root"], "2024-02-02", [_row(i, "old text") for i in range(40)])
    late = run(kw, ["2024-02-02"], kind="snapshot")
    assert late["embed"]["indexed"] == 0 and late["embed"]["deleted"] == 0
    assert stored_keywords(kw["alias"]) == (expected, expected)

    # A truncated export: 31 of 40 stored ids missing is far over 5% -> refused before any write.
    write_keywords(kw["root"], "2024-02-04", [_row(i) for i in range(10)])
    with pytest.raises(DeleteGuardError, match=r"delete 31 of 40 stored ids .*max_delete_ratio=5\.0%"):
        run(kw, ["2024-02-04"], kind="snapshot")
    assert stored_keywords(kw["alias"]) == (expected, expected)
    forced = run(kw, ["2024-02-04"], kind="snapshot", max_delete_ratio=0.8)
    assert forced["embed"]["deleted"] == 31
    assert set(stored_keywords(kw["alias"])[0]) == {str(i) for i in range(10)}


def test_latest_date_wins_within_a_run_and_a_tombstone_wins_within_a_partition(kw):
    write_keywords(kw["root"], "2024-03-01", [_row(1, "first"), _row(2, "two")])
    write_keywords(kw["root"], "2024-03-02", [_row(1, "second"), _row(2, "two again"), _row(2, deleted=True)])
    report = run(kw, ["2024-03-01", "2024-03-02"], tombstone_column="deleted")
    assert report["embed"]["dead_letters_by_reason"] == {"duplicate_id": 1}
    assert stored_keywords(kw["alias"])[0] == {"1": ("second", "food")}


def test_an_incremental_run_with_another_model_is_refused_naming_both(kw):
    write_keywords(kw["root"], "2024-04-01", [_row(i) for i in range(3)])
    run(kw, ["2024-04-01"])
    run_dir = kw["tmp"] / "runs" / "other-model"
    with pytest.raises(SetupError, match=r"tiny_bert v1 .* tiny_xlm_roberta v1"):
        run_keywords(kw["root"], ["2024-04-01"], run_dir, "tiny_xlm_roberta", InputSpec(), kw["alias"])


def test_the_state_refuses_another_model_or_role_and_says_what_to_do(tmp_path):
    """The stores record the model but not the role a text was embedded with: the state does."""
    state = IndexState(tmp_path / "state.parquet")
    identity = {"model_name": "m", "model_version": 1, "role": "query"}
    state.check_identity(identity, "the product generation")  # no state yet: anything goes
    state.commit([delta_table([("a", 20240101, 1, 2, False)])], set(), identity)
    state.check_identity(identity, "the product generation")
    with pytest.raises(
        ModelChangedError, match=r"m v1 \(role query\) .* m v1 \(role passage\).*full rebuild"
    ):
        state.check_identity({**identity, "role": "passage"}, "the product generation")
