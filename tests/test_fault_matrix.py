"""The fault matrix (docs/fault-matrix.md): whole ``keyword_index`` runs through ``dag.test()`` with
a fault injected, each ending with the accounting identity, Qdrant and Elasticsearch holding the
same ids, and a re-run that changes no counts.

Real processes throughout: the inference server (killed and restarted by PID, or behind a loopback
gRPC proxy that answers UNAVAILABLE / RESOURCE_EXHAUSTED or is slow), the ES emulator (behind a
loopback HTTP proxy for 429 / 503 / partial bulks / resets; a real cluster with ``ES_URL``), Qdrant
local mode (locked by a second real process). Faults between tasks (a vanished input file, a
deleted staged chunk) are injected by a real Airflow listener when the task before succeeds. The
one exception is a Qdrant error mid-upsert: no Qdrant server can run here and local mode has no
network to break, so that fault is raised by a wrapper around the local client (said where used).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from embedding_pipeline.generations.agreement import verify_pair
from embedding_pipeline.local.airflow_runner import run_dag, task_states
from embedding_pipeline.runs.plan import run_dir_for
from embedding_pipeline.runs.report import read_report
from embedding_pipeline.sample.generate import generate
from embedding_pipeline.serving.process import LocalServer
from embedding_pipeline.stores.registry import open_stores
from es_emulator import BulkFaultProxy, first_n, reject_items_where
from grpc_fault_proxy import GrpcFaultProxy
from store_data import assert_keyword_run_balanced

DAG_ID = "keyword_index"
DATES = ["2024-01-01", "2024-01-02"]
ROWS = 600


@pytest.fixture
def fm(pipeline_services) -> dict[str, Any]:
    tmp_path = pipeline_services
    data = tmp_path / "data"
    generate(data, keywords=ROWS, dates=[DATES[0]], seed=21, bad_rate=0.02, tables=("keywords",))
    return {"tmp": tmp_path, "data": data, "alias": f"fm_{tmp_path.name.lower()[-30:]}"}


def conf(fm: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    return {
        "dt": DATES[0],
        "input_root": str(fm["data"]),
        "model_name": "tiny_bert",
        "chunk_rows": 200,
        "qdrant_alias": fm["alias"],
        "es_alias": fm["alias"],
        **overrides,
    }


def report_of(run: Any) -> dict[str, Any]:
    return read_report(run_dir_for(DAG_ID, run.run_id))


def consistent(fm: dict[str, Any], run: Any) -> dict[str, Any]:
    """The run succeeded, its report balances per store, both stores hold the same ids (the ids
    it wrote, and the whole pair), and what they hold is what it indexed."""
    assert str(run.state) == "success", task_states(run)
    report = report_of(run)
    assert_keyword_run_balanced(report)
    with open_stores() as stores:
        whole = verify_pair((stores["qdrant"], stores["es"]), (fm["alias"], fm["alias"]), "keyword_id")
    assert whole.ok, whole.describe()
    return report


def stored_ids(fm: dict[str, Any]) -> int:
    with open_stores() as stores:
        return verify_pair(
            (stores["qdrant"], stores["es"]), (fm["alias"], fm["alias"]), "keyword_id"
        ).compared


def rerun_changes_nothing(fm: dict[str, Any], first: dict[str, Any], **overrides: Any) -> None:
    before = stored_ids(fm)
    again = consistent(fm, run_dag(DAG_ID, conf(fm, **overrides)))
    assert again["embed"]["indexed"] == 0
    assert again["embed"]["unchanged"] == first["embed"]["unchanged"] + first["embed"]["indexed"]
    assert again["sinks"]["qdrant"]["indexed"] == again["sinks"]["es"]["indexed"] == 0
    assert stored_ids(fm) == before


@contextmanager
def when_task_succeeds(task_id: str, action: Callable[[Any], None]) -> Iterator[None]:
    """``action(task_instance)`` right after ``task_id`` succeeds (each map index), through a real
    Airflow listener: ``dag.test()`` runs the tasks in this process, between them."""
    from airflow.sdk._shared.listeners import hookimpl
    from airflow.sdk.listener import get_listener_manager

    class Listener:
        @hookimpl
        def on_task_instance_success(self, previous_state: Any, task_instance: Any) -> None:
            if task_instance.task_id == task_id:
                action(task_instance)

    listener = Listener()
    manager = get_listener_manager()
    manager.add_listener(listener)
    try:
        yield
    finally:
        manager.pm.unregister(listener)


# -- the inference server ------------------------------------------------------------------------


def test_inference_server_killed_mid_run_and_restarted(fm, repository, monkeypatch):
    """SIGKILL of the server (by PID) at the third inference request, restart 5 s later on the
    same ports: the embed task's client waits inside its retry budget; no task fails or retries."""
    server = LocalServer(repository, threads=1, log_path=fm["tmp"] / "s1.log", models=["tiny_bert"]).start()
    again = LocalServer(
        repository,
        threads=1,
        log_path=fm["tmp"] / "s2.log",
        models=["tiny_bert"],
        grpc_port=server.grpc_port,
        http_port=server.http_port,
    )
    restarted = threading.Event()

    def kill() -> None:
        assert server.process is not None
        server.process.kill()
        server.process.wait(timeout=30)
        threading.Timer(5.0, lambda: (again.start(), restarted.set())).start()

    plan = lambda method, n: ("call", kill) if method == "ModelInfer" and n == 3 else None  # noqa: E731
    monkeypatch.setenv("EMBEDDING_SERVER_HTTP_PORT", str(server.http_port))
    monkeypatch.setenv("EMBEDDING_SERVER_BATCH_SIZE", "16")
    try:
        with GrpcFaultProxy(f"127.0.0.1:{server.grpc_port}", plan) as proxy:
            monkeypatch.setenv("EMBEDDING_SERVER_GRPC_PORT", str(proxy.port))
            started = time.monotonic()
            run = run_dag(DAG_ID, conf(fm))
            took = time.monotonic() - started
            report = consistent(fm, run)
            assert restarted.is_set() and proxy.faults["ModelInfer call"] == 1
            assert all(ti.try_number == 1 for ti in run.get_task_instances()), "a task was retried"
            print(f"run with a server restart: {took:.1f} s")
            rerun_changes_nothing(fm, report)
    finally:
        restarted.wait(timeout=150)
        again.stop()
        server.stop()


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (lambda n: ("status", "UNAVAILABLE") if 2 <= n <= 5 else None, {"ModelInfer status": 4}),
        (lambda n: ("status", "RESOURCE_EXHAUSTED") if n in (2, 4, 6) else None, {"ModelInfer status": 3}),
        (lambda n: ("delay", 2.5) if n in (2, 5) else None, {"ModelInfer delay": 2}),  # over timeout_s=1
    ],
    ids=["unavailable", "resource_exhausted", "slow"],
)
def test_inference_server_errors_and_timeouts_are_retried_in_the_task(
    fm, server, monkeypatch, fault, expected
):
    monkeypatch.setenv("EMBEDDING_SERVER_TIMEOUT_S", "1")
    monkeypatch.setenv("EMBEDDING_SERVER_BATCH_SIZE", "16")
    plan = lambda method, n: fault(n) if method == "ModelInfer" else None  # noqa: E731
    with GrpcFaultProxy(f"127.0.0.1:{server.grpc_port}", plan) as proxy:
        monkeypatch.setenv("EMBEDDING_SERVER_GRPC_PORT", str(proxy.port))
        run = run_dag(DAG_ID, conf(fm))
        report = consistent(fm, run)
        assert dict(proxy.faults) == expected
        assert all(ti.try_number == 1 for ti in run.get_task_instances()), "a task was retried"
        rerun_changes_nothing(fm, report)


# -- Elasticsearch -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "plan",
    [
        first_n(3, ("status", 429)),
        first_n(2, ("status", 503)),
        first_n(2, reject_items_where(lambda i: i % 2 == 1)),
        first_n(2, ("drop_after", None)),  # applied by the cluster, the answer lost: a retry is a no-op
    ],
    ids=["429-for-a-while", "503", "partial-bulk", "reset-mid-bulk"],
)
def test_elasticsearch_faults_are_retried_without_loss_or_duplicates(fm, es_url, monkeypatch, plan):
    with BulkFaultProxy(es_url, plan) as proxy:
        monkeypatch.setenv("ES_URL", proxy.url)
        report = consistent(fm, run_dag(DAG_ID, conf(fm)))
        assert proxy.faults_injected >= 2  # the faults reached the run's bulk requests
    monkeypatch.setenv("ES_URL", es_url)
    rerun_changes_nothing(fm, report)


# -- Qdrant --------------------------------------------------------------------------------------

_HOLD_LOCK = """
import sys, time
from pathlib import Path
from embedding_pipeline.stores.qdrant.client import make_client
from embedding_pipeline.stores.qdrant.settings import QdrantSettings
client = make_client(QdrantSettings(path=sys.argv[1]))
Path(sys.argv[2]).write_text("held")
time.sleep(float(sys.argv[3]))
client.close()
"""


def test_qdrant_local_storage_locked_by_another_process(fm):
    """Another process holds the local storage when prepare opens it (started when plan
    succeeds, released 3 s later): the task waits for the lock instead of failing."""
    held = fm["tmp"] / "held"
    holders: list[subprocess.Popen] = []

    def hold(_: Any) -> None:
        args = [sys.executable, "-c", _HOLD_LOCK, os.environ["QDRANT_PATH"], str(held), "3"]
        holders.append(subprocess.Popen(args))
        deadline = time.monotonic() + 60
        while not held.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    # The storage exists before the holder opens it: a first run creates the collection.
    first = consistent(fm, run_dag(DAG_ID, conf(fm)))
    generate(fm["data"], keywords=ROWS, dates=[DATES[1]], seed=22, bad_rate=0.02, tables=("keywords",))
    with when_task_succeeds("plan", hold):
        report = consistent(fm, run_dag(DAG_ID, conf(fm, dt=DATES[1])))
    assert held.exists() and holders[0].wait(timeout=30) == 0
    assert report["embed"]["indexed"] > 0 and first["embed"]["indexed"] > 0
    rerun_changes_nothing(fm, report, dt=DATES[1])


def test_a_qdrant_error_mid_upsert_is_retried(fm, monkeypatch):
    """Qdrant answers 503 to two upserts in the middle of the run. No Qdrant server runs here and
    the embedded engine cannot fail on the wire, so the real exception qdrant-client raises for a
    503 (``UnexpectedResponse``) is raised by a wrapper around the embedded client's ``upsert``."""
    import httpx
    from embedding_pipeline.stores.qdrant.edge.client import EdgeClient
    from qdrant_client.http.exceptions import UnexpectedResponse

    calls = {"n": 0}
    real_upsert = EdgeClient.upsert

    def upsert(self: EdgeClient, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] in (2, 3):
            raise UnexpectedResponse(503, "Service Unavailable", b"injected", httpx.Headers())
        return real_upsert(self, *args, **kwargs)

    monkeypatch.setattr(EdgeClient, "upsert", upsert)
    report = consistent(fm, run_dag(DAG_ID, conf(fm)))
    assert calls["n"] > 3 and report["sinks"]["qdrant"]["extra"]["retries"] == 2
    monkeypatch.setattr(EdgeClient, "upsert", real_upsert)
    rerun_changes_nothing(fm, report)


# -- input and run files -------------------------------------------------------------------------


def test_a_schema_change_between_partitions(fm):
    """The second date's file has string ids instead of integers, no category, and a new nested
    column: both dates index, and an id given as 5 and as "5" is one keyword."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = fm["data"] / "keywords" / f"dt={DATES[1]}" / "part-0.parquet"
    path.parent.mkdir(parents=True)
    first_ids = pq.read_table(next((fm["data"] / "keywords" / f"dt={DATES[0]}").glob("part-*.parquet")))
    reused = [str(i) for i in first_ids.column("keyword_id").to_pylist()[:5] if i is not None]
    ids = reused + [f"new-{i}" for i in range(20)]
    table = pa.table(
        {
            "keyword_id": ids,
            "keyword": [f"changed keyword {i}" for i in range(len(ids))],
            "attributes": pa.array([{"source": "feed", "rank": i} for i in range(len(ids))]),
        }
    )
    pq.write_table(table, path)
    report = consistent(fm, run_dag(DAG_ID, conf(fm, dt_end=DATES[1])))
    assert report["partitions"] == DATES
    rerun_changes_nothing(fm, report, dt_end=DATES[1])


def test_an_input_file_that_vanishes_between_plan_and_embed(fm):
    moved: list[tuple[Path, Path]] = []

    def vanish(_: Any) -> None:
        for path in (fm["data"] / "keywords" / f"dt={DATES[0]}").glob("part-*.parquet"):
            aside = path.with_name(f"_{path.name}")  # "_" files are not data
            path.rename(aside)
            moved.append((aside, path))

    with when_task_succeeds("plan", vanish):
        run = run_dag(DAG_ID, conf(fm))
    assert str(run.state) == "failed" and moved
    failed = [ti for ti in run.get_task_instances() if str(ti.state) == "failed"]
    assert {ti.task_id for ti in failed} == {"embed"} and all(ti.try_number == 1 for ti in failed)
    assert "finalize" not in {ti.task_id for ti in run.get_task_instances() if str(ti.state) == "success"}
    for aside, path in moved:
        aside.rename(path)
    report = consistent(fm, run_dag(DAG_ID, conf(fm)))  # nothing was committed: the re-run writes all
    assert report["embed"]["extra"]["embedded"] == report["sinks"]["qdrant"]["indexed"] > 0
    rerun_changes_nothing(fm, report)


def test_a_staged_chunk_deleted_between_embed_and_upsert(fm):
    removed: list[str] = []

    def delete_first_chunk(ti: Any) -> None:
        if ti.map_index == 0:  # the chunk embed[0] just staged
            staged = sorted(Path(str(run_dir_for(DAG_ID, ti.run_id))).glob("staged/*.parquet"))[0]
            staged.unlink()
            removed.append(staged)

    with when_task_succeeds("embed", delete_first_chunk):
        run = run_dag(DAG_ID, conf(fm))
    assert str(run.state) == "failed" and removed
    states = task_states(run)
    assert states["qdrant_upsert[0]"] == states["es_index[0]"] == "failed", states
    report = consistent(fm, run_dag(DAG_ID, conf(fm)))
    rerun_changes_nothing(fm, report)


def test_the_matrix_document_names_every_test_here():
    """docs/fault-matrix.md and this module mirror each other."""
    doc = (Path(__file__).parents[1] / "docs" / "fault-matrix.md").read_text()
    here = [name for name in globals() if name.startswith("test_") and "matrix_document" not in name]
    assert [name for name in here if name not in doc] == []
