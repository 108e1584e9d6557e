"""``dag.test()`` of keyword_index end to end: real local inference server, Qdrant local mode on
disk, and the noida-db Elasticsearch emulator (a real cluster when ``ES_URL`` is set)."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from embedding_pipeline.local.airflow_runner import run_dag
from embedding_pipeline.runs.dead_letter import read_dead_letters
from embedding_pipeline.runs.report_page import render_page, stage_pages
from embedding_pipeline.sample.generate import generate

DAG_ID = "keyword_index"
DATES = ["2024-01-01", "2024-01-02"]


@pytest.fixture
def pipeline_env(pipeline_services):
    tmp_path = pipeline_services
    alias = f"kw_{tmp_path.name.lower().replace('-', '_')[-40:]}"
    return {"alias": alias, "data": tmp_path / "data"}


def _conf(env: dict, **overrides) -> dict:
    return {
        "dt": DATES[0],
        "dt_end": DATES[1],
        "input_root": str(env["data"]),
        "model_name": "tiny_bert",
        "chunk_rows": 200,
        "qdrant_alias": env["alias"],
        "es_alias": env["alias"],
        **overrides,
    }


def _report(run) -> dict:
    finalize = next(ti for ti in run.get_task_instances() if ti.task_id == "finalize")
    assert str(finalize.state) == "success", {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    runs = sorted(
        Path(os.environ["EMBEDDING_PIPELINE_HOME"], "runs", DAG_ID).glob("*/report.json"),
        key=lambda p: p.stat().st_mtime,
    )
    return json.loads(runs[-1].read_text())


def _sink_counts(alias: str) -> tuple[int, int]:
    from embedding_pipeline.stores.elasticsearch.client import make_client
    from embedding_pipeline.stores.elasticsearch.indices import count_docs
    from embedding_pipeline.stores.elasticsearch.settings import EsSettings
    from embedding_pipeline.stores.qdrant.client import open_client
    from embedding_pipeline.stores.qdrant.collections import count_points

    with open_client() as client:
        points = count_points(client, alias)
    es = make_client(EsSettings.from_env())
    try:
        return points, count_docs(es, alias)
    finally:
        es.close()


def test_bad_rows_are_accounted_for_and_a_rerun_changes_nothing(pipeline_env):
    summary = generate(
        pipeline_env["data"],
        keywords=900,
        dates=DATES,
        seed=7,
        bad_rate=0.06,
        row_group_size=150,
        tables=("keywords",),
    )
    manifest = json.loads(Path(summary["tables"]["keywords"]["manifest"]).read_text())
    expected = {dt: manifest["partitions"][dt]["expected"] for dt in DATES}
    first_run = run_dag(DAG_ID, _conf(pipeline_env))
    first = _report(first_run)
    assert first["status"] == "ok" and first["rows_read"] == 900 and first["chunks"] >= 4
    expected_dead = sum(e["dead_lettered"] for e in expected.values())
    assert first["embed"]["dead_lettered"] == expected_dead > 0
    reasons: dict[str, int] = {}
    for e in expected.values():
        for reason, n in e["dead_letter"].items():
            reason = "empty_text" if reason == "whitespace_text" else reason  # one reason for both
            reasons[reason] = reasons.get(reason, 0) + n
    assert first["embed"]["dead_letters_by_reason"] == reasons
    # An id that recurs on a later date of the run is written once, from its latest row: the earlier
    # rows count as superseded (unchanged), never as a second write.
    superseded = first["embed"]["extra"]["superseded"]
    recurring = sum(
        p["injected"].get("duplicate_id_cross_partition", {}).get("count", 0)
        for p in manifest["partitions"].values()
    )
    assert 0 < superseded <= recurring and first["embed"]["unchanged"] == superseded
    for sink in ("qdrant", "es"):
        assert first["sinks"][sink]["indexed"] + expected_dead + superseded == 900
    run_dir = Path(first_run_dir(first))
    letters = read_dead_letters(run_dir, "embed")
    assert len(letters) == expected_dead and all(letter["reason"] and letter["row"] for letter in letters)
    counts = _sink_counts(pipeline_env["alias"])
    # Each sink holds exactly the distinct staged ids: a cross-partition duplicate (same id on two
    # dates) is an upsert of one point/document, never a second one.
    staged_ids = set()
    for path in (run_dir / "staged").glob("*.parquet"):
        staged_ids.update(pq.read_table(path, columns=["id"]).column(0).to_pylist())
    assert counts == (len(staged_ids),) * 2
    assert first["sinks"]["es"]["indexed"] == 900 - expected_dead - superseded
    # finalize's XCom names the embed step's dead letters: per store, read = written + dead letters.
    summary = _xcom(first_run, "finalize")
    assert summary["embed"]["dead_letters_by_reason"] == reasons
    for store in ("qdrant", "es"):
        part = summary["sinks"][store]
        written = part["indexed"] + part["dead_lettered"] + summary["embed"]["unchanged"]
        assert written + summary["embed"]["dead_lettered"] == 900
    assert summary["report"] == str(run_dir / "report.md")
    # The announce task sent the Asset event with what was read.
    assert _asset_events(first_run) == [{"partitions": DATES, "rows_read": 900}]
    # The UI's report page (plugins/pipeline_report) shows the report's numbers.
    page = render_page(DAG_ID, first["run_id"], stage_pages(DAG_ID, first["run_id"]))
    shown = dict(re.findall(r'data-field="([^"]+)" data-value="([^"]*)"', page))
    assert shown["keyword_index.embed.dead_lettered"] == str(expected_dead)
    for store in ("qdrant", "es"):
        for column in ("rows_in", "indexed", "unchanged", "deleted", "dead_lettered", "task_seconds"):
            assert shown[f"keyword_index.sinks.{store}.{column}"] == str(first["sinks"][store][column])
    for reason, count in reasons.items():
        assert f'data-field="keyword_index.dead_letters_by_reason.{reason}">{count:,}<' in page
    assert str(run_dir / "dead_letters") in page and page.count("<svg") >= 2

    # The same dates again: every valid row is unchanged (incremental), nothing is written.
    second = _report(run_dag(DAG_ID, _conf(pipeline_env)))
    assert second["embed"]["unchanged"] == 900 - expected_dead and second["embed"]["indexed"] == 0
    assert second["sinks"]["qdrant"]["indexed"] == second["sinks"]["es"]["indexed"] == 0
    assert _sink_counts(pipeline_env["alias"]) == counts


def _xcom(run, task_id: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        xcom = session.query(XComModel).filter_by(
            dag_id=DAG_ID, run_id=run.run_id, task_id=task_id, key="return_value"
        )
        value = xcom.one().value
        return value if isinstance(value, dict) else json.loads(value)


def _asset_events(run) -> list[dict]:
    """What the run's ``keyword_index`` Asset events carried (a follower DAG reads these)."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        events = session.query(AssetEvent).filter_by(source_dag_id=DAG_ID, source_run_id=run.run_id).all()
        return [event.extra for event in events]


def first_run_dir(report: dict) -> str:
    from embedding_pipeline.runs.plan import run_dir_for

    return str(run_dir_for(DAG_ID, report["run_id"]))


def test_missing_partition_is_skipped_or_fails_on_request(pipeline_env):
    generate(pipeline_env["data"], keywords=100, dates=[DATES[0]], seed=1, tables=("keywords",))
    empty = run_dag(DAG_ID, _conf(pipeline_env, dt="2023-06-01", dt_end=None))
    report = _report(empty)
    assert report["status"] == "no_data" and report["missing_partitions"] == ["2023-06-01"]
    assert report["rows_read"] == 0 and report["chunks"] == 0
    # An empty night: nothing was embedded or written, and no Asset event tells followers otherwise.
    states = {ti.task_id: str(ti.state) for ti in empty.get_task_instances()}
    assert str(empty.state) == "success" and states["go_live"] == "success", states
    assert states["embed"] == states["qdrant_upsert"] == states["announce"] == "skipped", states
    assert _asset_events(empty) == []
    run = run_dag(DAG_ID, _conf(pipeline_env, dt="2023-06-01", dt_end=None, missing_partition="fail"))
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert str(run.state) == "failed" and states["plan"] == "failed"


def test_bad_files_fail_the_run_or_go_to_the_dead_letter(pipeline_env):
    generate(
        pipeline_env["data"], keywords=300, dates=[DATES[0]], seed=3, bad_files=True, tables=("keywords",)
    )
    run = run_dag(DAG_ID, _conf(pipeline_env, dt_end=None))
    assert str(run.state) == "failed"
    assert {ti.task_id: str(ti.state) for ti in run.get_task_instances()}["plan"] == "failed"
    report = _report(run_dag(DAG_ID, _conf(pipeline_env, dt_end=None, bad_files="dead_letter")))
    # Rejected: the non-Parquet file and the one without a text column. String ids are accepted
    # (business keys may be SKUs), and the zero-row file simply contributes no rows.
    assert report["status"] == "ok" and report["rejected_files"] == 2
    files = read_dead_letters(Path(first_run_dir(report)), "plan")
    assert sorted(Path(f["record_id"]).name for f in files) == [
        "part-badschema-notext.parquet",
        "part-garbage.parquet",
    ]
    assert all(f["reason"] == "bad_file" and f["error"] for f in files)


def test_dead_letter_threshold_fails_the_run(pipeline_env):
    generate(pipeline_env["data"], keywords=300, dates=[DATES[0]], seed=5, bad_rate=0.2, tables=("keywords",))
    run = run_dag(DAG_ID, _conf(pipeline_env, dt_end=None, max_dead_letter_ratio=0.05))
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert str(run.state) == "failed" and states["finalize"] == "failed" and states["es_index"] == "success"


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("dt", "2024-13-45"),
        ("chunk_rows", 10),
        ("max_chunks", 2000),
        ("es_alias", "Upper"),
        ("max_dead_letter_ratio", 1.5),
        ("bad_files", "ignore"),
        ("model_name", "../x"),
    ],
)
def test_bad_params_are_refused(airflow_db, param, value):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(DagBag(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).get_dag(DAG_ID).params)
    with pytest.raises(ParamValidationError):
        params[param] = value


def test_partitions_follow_params_data_interval_or_run_after():
    from datetime import UTC, datetime

    from embedding_pipeline.errors import ConfigError
    from embedding_pipeline.runs.plan import resolve_partitions

    assert resolve_partitions("2024-01-30", "2024-02-02", None, None) == [
        "2024-01-30",
        "2024-01-31",
        "2024-02-01",
        "2024-02-02",
    ]
    interval = datetime(2024, 3, 5, 1, tzinfo=UTC)
    assert resolve_partitions(None, None, interval, datetime(2024, 3, 6, 1, tzinfo=UTC)) == ["2024-03-05"]
    assert resolve_partitions(None, None, None, datetime(2024, 3, 6, 9, tzinfo=UTC)) == ["2024-03-05"]
    with pytest.raises(ConfigError, match="before dt"):
        resolve_partitions("2024-02-02", "2024-02-01", None, None)
    with pytest.raises(ConfigError, match="dt_end needs dt"):
        resolve_partitions(None, "2024-02-01", None, None)


def test_run_files_go_to_object_storage_when_a_staging_url_is_set(pipeline_env, tmp_path, monkeypatch):
    """Staged chunks, dead letters and the report through ObjectStoragePath (fsspec ``file://`` here;
    ``s3://``/``gs://`` take the same code path with a Connection for credentials)."""
    from embedding_pipeline.runs.plan import run_dir_for

    store = tmp_path / "object-store"
    monkeypatch.setenv("EMBEDDING_STAGING_URL", f"file://{store}")
    generate(
        pipeline_env["data"], keywords=400, dates=[DATES[0]], seed=11, bad_rate=0.05, tables=("keywords",)
    )
    run = run_dag(DAG_ID, _conf(pipeline_env, dt_end=None))
    assert str(run.state) == "success"
    run_dir = run_dir_for(DAG_ID, run.run_id)
    assert str(run_dir).startswith("file://")
    local = store / DAG_ID / Path(str(run_dir)).name
    report = json.loads((local / "report.json").read_text())
    assert report["status"] == "ok" and report["rows_read"] == 400
    assert len(list((local / "staged").glob("*.parquet"))) == report["chunks"]
    letters = read_dead_letters(str(run_dir), "embed")
    assert len(letters) == report["embed"]["dead_lettered"] > 0
    assert not (Path(os.environ["EMBEDDING_PIPELINE_HOME"]) / "runs" / DAG_ID / local.name).exists()


def test_latest_partition_wins_in_both_sinks_whatever_order_dates_run_in(pipeline_env):
    """A keyword id on two dates: indexing dt2, then dt1 (a late backfill) keeps dt2's text in ES and
    Qdrant; dt1's rows of those ids are not even embedded (the state knows dt2 spoke later): they
    count as unchanged and are reported as superseded."""
    from embedding_pipeline.runs.staging import point_id
    from embedding_pipeline.stores.elasticsearch.client import open_es
    from embedding_pipeline.stores.qdrant.client import open_client
    from embedding_pipeline.stores.qdrant.collections import resolve_alias

    summary = generate(
        pipeline_env["data"], keywords=500, dates=DATES, seed=13, bad_rate=0.08, tables=("keywords",)
    )
    manifest = json.loads(Path(summary["tables"]["keywords"]["manifest"]).read_text())
    recurring = manifest["partitions"][DATES[1]]["injected"]["duplicate_id_cross_partition"]["ids"]
    assert recurring
    conf = _conf(pipeline_env, dt_end=None, max_dead_letter_ratio=0.5)
    _report(run_dag(DAG_ID, {**conf, "dt": DATES[1]}))
    older = _report(run_dag(DAG_ID, {**conf, "dt": DATES[0]}))
    assert older["embed"]["extra"]["superseded"] == older["embed"]["unchanged"] == len(recurring)
    for sink in ("qdrant", "es"):
        written = older["sinks"][sink]["indexed"] + older["embed"]["unchanged"]
        assert written + older["embed"]["dead_lettered"] == older["rows_read"]
    alias = pipeline_env["alias"]
    with open_es() as es:
        docs = es.mget(index=alias, ids=[str(i) for i in recurring])["docs"]
    assert {doc["_source"]["dt"] for doc in docs} == {DATES[1]}
    with open_client() as client:
        points = client.retrieve(
            resolve_alias(client, alias), ids=[point_id("keyword", str(i)) for i in recurring]
        )
    assert {point.payload["dt"] for point in points} == {DATES[1]}
    # Both sinks hold the same (dt2) text for every recurring id.
    assert {(p.payload["keyword_id"], p.payload["keyword"]) for p in points} == {
        (d["_id"], d["_source"]["keyword"]) for d in docs
    }
