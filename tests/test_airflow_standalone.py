"""``embedding-pipeline airflow`` for real: ``airflow standalone`` (scheduler, LocalExecutor, API
server, DAG processor) with the local services, started once for this module. A backfill of
``embedding_chain`` over two dates runs through the scheduler, not ``dag.test()``; task processes
killed in the middle of their writes are retried by Airflow with nothing lost or doubled; Ctrl-C
leaves no process behind (the last test: it stops the standalone).
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from airflow_api import Api
from embedding_pipeline.generations.agreement import verify_pair
from embedding_pipeline.runs.plan import run_dir_for
from embedding_pipeline.runs.report import read_report
from embedding_pipeline.sample.generate import generate
from embedding_pipeline.serving.process import free_port
from embedding_pipeline.stores.elasticsearch.bulk import BulkOptions
from embedding_pipeline.stores.qdrant.client import open_client
from embedding_pipeline.stores.qdrant.collections import count_points
from embedding_pipeline.stores.registry import open_stores
from es_emulator import BulkFaultProxy, Hold
from store_data import assert_keyword_run_balanced
from test_local_services import ENV_KEYS, live_pids_in_group

DATES = ["2024-01-01", "2024-01-02"]
KEYWORDS, PRODUCTS = 400, 80
KILL_DT, KILL_ROWS, KILL_ALIAS = "2024-02-01", 3000, "killed_keywords"


def _report(run_id: str, stage: str) -> dict:
    return read_report(run_dir_for("embedding_chain", run_id, stage))


@dataclass
class Standalone:
    """The running ``embedding-pipeline airflow`` of this module and what it printed."""

    runner: subprocess.Popen[str]
    api: Api
    root: Path
    es_url: str  # the ES emulator the runner started
    ready_s: float
    seen: list[str]
    groups: set[int] = field(default_factory=set)  # process groups it started


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standalone]:
    """The Airflow a user gets from `make airflow` (free ports, its own home and data), once per
    module: starting it takes a minute or two. Stopped by the last test; stopped by PID here too."""
    root = tmp_path_factory.mktemp("standalone")
    generate(root / "data", keywords=KEYWORDS, products=PRODUCTS, dates=DATES, seed=8, row_group_size=100)
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in ENV_KEYS}
    env.update(
        EMBEDDING_PIPELINE_HOME=str(root / "work"),
        AIRFLOW_HOME=str(root / "airflow"),
        EMBEDDING_MODEL_REPOSITORY=str(root / "model_repository"),
        EMBEDDING_DATA_ROOT=str(root / "data"),
        PYTHONUNBUFFERED="1",
    )
    env.pop("EMBEDDING_STAGING_URL", None)
    command = [sys.executable, "-m", "embedding_pipeline.local.airflow_standalone", "--port", str(port)]
    started = time.monotonic()
    runner = subprocess.Popen(
        [*command, "--free-ports"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # Ctrl-C reaches only the runner, as in a terminal
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in runner.stdout or ()], daemon=True).start()
    seen: list[str] = []
    groups = {runner.pid}
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            # This process reads the runs' reports and the stores where the standalone writes them.
            monkeypatch.setenv("EMBEDDING_PIPELINE_HOME", str(root / "work"))
            monkeypatch.delenv("EMBEDDING_STAGING_URL", raising=False)
            while not any("Airflow: UI at" in line for line in seen):
                assert time.monotonic() - started < 400, f"no UI after 400 s:\n{''.join(seen)}"
                assert runner.poll() is None or not lines.empty(), f"runner exited:\n{''.join(seen)}"
                try:
                    seen.append(lines.get(timeout=1))
                except queue.Empty:
                    continue
                groups.update(int(pid) for pid in re.findall(r"\bpid (\d+)\)", seen[-1]))
            ready_s = time.monotonic() - started
            es_url = next(m[1] for line in seen if (m := re.search(r"emulator at (http://\S+)", line)))
            password_file = root / "airflow" / "simple_auth_manager_passwords.json.generated"
            api = Api.with_password_file(f"http://127.0.0.1:{port}", password_file)
            yield Standalone(runner, api, root, es_url, ready_s, seen, groups)
    finally:
        if runner.poll() is None:
            runner.send_signal(signal.SIGINT)
            with suppress(subprocess.TimeoutExpired):
                runner.wait(timeout=180)
        for pgid in groups:  # never leave a failed test's processes behind
            if live_pids_in_group(pgid):
                os.killpg(pgid, signal.SIGKILL)


@pytest.mark.slow
def test_standalone_runs_a_chain_backfill(standalone: Standalone):
    """UI and login, then a backfill of the chain for one date through the scheduler (the DAG
    unpaused: Airflow starts no run of a paused DAG, backfills included), processing its dt and
    publishing the bundled model; the nightly run the unpause schedules finds no partition and ends
    no_data. Then a full rebuild over both dates that asks before each swap."""
    seen, root, groups = standalone.seen, standalone.root, standalone.groups
    assert len(groups) == 4, seen  # the runner, the emulator, the server and the standalone
    ui_line = next(line for line in seen if "Airflow: UI at" in line)
    password_file = root / "airflow" / "simple_auth_manager_passwords.json.generated"
    assert f"user admin, password in {password_file}" in ui_line
    api = standalone.api
    assert api.call("GET", "/api/v2/monitor/health")["metadatabase"]["status"] == "healthy"
    assert all(live_pids_in_group(pgid) for pgid in groups)
    log = root / "work" / "logs" / "airflow-standalone.log"
    api.wait_for_dag("embedding_chain")
    # One date: backfills over several dates, on two workers, are tests/test_celery_executor.py's.
    backfilled = api.backfill("embedding_chain", DATES[:1], {"chunk_rows": 100, "top_k": 5})
    runs = api.runs("embedding_chain")
    assert [r["data_interval_start"][:10] for r in backfilled] == DATES[:1], runs
    for position, run in enumerate(backfilled):
        states = api.task_states("embedding_chain", run["dag_run_id"])
        assert run["state"] == "success", ({k: v for k, v in states.items() if v != "success"}, log)
        # The run publishes the bundled model (publish_model=if_missing: none is published yet).
        assert states["model.export"] == "success"
        keywords = _report(run["dag_run_id"], "keyword_index")
        products = _report(run["dag_run_id"], "product_link")
        for report in (keywords, products):
            assert report["status"] == "ok" and report["partitions"] == [DATES[position]], report
            assert report["problems"] == []
        assert keywords["rows_read"] == KEYWORDS // len(DATES)
        assert products["rows_read"] == PRODUCTS // len(DATES)
        assert sum(1 for state in states if state.startswith("keyword_index.embed[")) > 1  # mapped
    for run in runs:
        events = _asset_events(api, run["dag_run_id"])
        if run["run_type"] == "scheduled":  # the latest interval, scheduled by the unpause
            assert run["state"] == "success"
            assert _report(run["dag_run_id"], "product_link")["status"] == "no_data"
            assert events == {}  # an empty night: followers of the Assets are not woken
        else:  # the backfilled date: one event per stage, from its announce task
            assert events == {
                "keyword_index": {"partitions": DATES[:1], "rows_read": KEYWORDS // len(DATES)},
                "product_links": {"partitions": DATES[:1], "rows_read": PRODUCTS // len(DATES)},
            }

    # A full rebuild that asks a person before each swap: the keyword swap approved, the
    # product swap rejected (its generation stays gated and unaliased, no Asset event).
    conf = {"dt": DATES[-1], "mode": "full", "approve_swap": True, "chunk_rows": 100, "top_k": 5}
    run_id = api.call("POST", "/api/v2/dags/embedding_chain/dagRuns", {"logical_date": None, "conf": conf})[
        "dag_run_id"
    ]
    asked = api.answer("embedding_chain", run_id, "keyword_index.approve_swap", "Approve")
    assert asked["subject"] == "Swap keyword_index to generation 2?", asked
    assert "| counts | yes | expected " in asked["body"] and "keywords -> keywords-g1" in asked["body"]
    api.answer("embedding_chain", run_id, "product_link.approve_swap", "Reject")
    run = api.wait_for_run("embedding_chain", run_id)
    states = api.task_states("embedding_chain", run_id)
    assert run["state"] == "success", states
    assert states["keyword_index.go_live"] == "success" and states["product_link.go_live"] == "skipped"
    keywords = _report(run_id, "keyword_index")["generation"]
    assert keywords["status"] == "swapped" and {m["to"] for m in keywords["swapped"]} == {"keywords-g2"}
    products = _report(run_id, "product_link")["generation"]
    assert products["status"] == "gated" and products["swapped"] == [], products


def _asset_events(api: Api, run_id: str) -> dict[str, dict]:
    """The stage Asset events a chain run sent (through the scheduler), by Asset name: their extras
    (the model stage's ``embedding_model`` event is left out)."""
    query = urllib.parse.urlencode({"source_dag_id": "embedding_chain", "source_run_id": run_id})
    events = api.call("GET", f"/api/v2/assets/events?{query}")["asset_events"]
    stages = [e for e in events if e["name"] in ("keyword_index", "product_links")]
    assert all(e["source_task_id"].endswith(".announce") for e in stages), stages
    return {e["name"]: e["extra"] for e in stages}


def _at(report: dict, path: str):
    """The value at a dotted report.json path (``sinks.qdrant.indexed``)."""
    value = report
    for key in path.split("."):
        value = value[key]
    return value


@pytest.mark.slow
def test_the_report_view_and_the_form_in_a_browser(standalone: Standalone, tmp_path: Path):
    """Debian's Chromium through Playwright, signed in through the login form: the backfill run's
    "Pipeline report" tab shows exactly report.json's numbers for both stages, and says where the
    files are; the page refuses a caller without a session. The trigger form shows every Param's
    title and description in its section, and a value the schema refuses does not start a run.
    (Runs after the backfill test, whose run it opens.)"""
    from ui_browser import open_trigger_form, report_tab, section_text, shown_fields, signed_in

    api, base = standalone.api, standalone.api.base
    (run,) = [r for r in api.runs("embedding_chain") if r["run_type"] == "backfill"]
    run_id = run["dag_run_id"]
    reports = {stage: _report(run_id, stage) for stage in ("keyword_index", "product_link")}
    password_file = standalone.root / "airflow" / "simple_auth_manager_passwords.json.generated"
    url = f"{base}/pipeline-report/dags/embedding_chain/runs/{urllib.parse.quote(run_id, safe='')}"
    with pytest.raises(urllib.error.HTTPError) as refused:  # no session cookie, no token
        urllib.request.urlopen(url, timeout=30)
    assert refused.value.code in (401, 403)
    with signed_in(base, json.loads(password_file.read_text())["admin"]) as page:
        frame = report_tab(page, base, "embedding_chain", run_id)
        shown = shown_fields(frame)
        compared = 0
        for field, (value, text) in shown.items():
            stage, _, path = field.partition(".")
            if path.startswith("dead_letters_by_reason."):
                continue  # summed over the steps: tests/test_report_page.py checks those
            expected = _at(reports[stage], path)
            if value is None:  # shown as text only (status, rows read)
                assert text == (f"{expected:,}" if isinstance(expected, int) else str(expected)), field
            else:
                assert value == str(expected), field
            compared += 1
        assert compared >= 2 * 20, sorted(shown)  # both stages' tables, statuses and rows read
        files = " ".join(frame.locator(".files").all_inner_texts())
        for stage in reports:
            assert str(run_dir_for("embedding_chain", run_id, stage)) in files
        page.screenshot(path=str(tmp_path / "report-view.png"), full_page=True)

        dialog = open_trigger_form(page, base, "embedding_chain")
        dag = api.call("GET", "/api/v2/dags/embedding_chain/details")
        sections: dict[str, list[dict]] = {}
        for name, param in dag["params"].items():
            schema = param["schema"]
            assert schema.get("section") and schema.get("title") and param.get("description"), name
            sections.setdefault(schema["section"], []).append({"name": name, **schema, **param})
        for section, params in sections.items():
            text = " ".join(section_text(page, dialog, section).split())
            for param in params:
                assert param["title"] in text and " ".join(param["description"].split()) in text, param[
                    "name"
                ]
        before = len(api.runs("embedding_chain"))
        section_text(page, dialog, "Stores")
        page.locator("#element_product_alias").fill("Products")  # an index name cannot be upper case
        dialog.get_by_role("button", name="Trigger").click()
        page.get_by_text("Failed to Trigger Dag").first.wait_for()
        assert len(api.runs("embedding_chain")) == before


@pytest.mark.slow
def test_task_processes_killed_mid_write_are_retried_without_loss_or_duplicates(
    standalone: Standalone, monkeypatch: pytest.MonkeyPatch
):
    """SIGKILL (by the PID Airflow records for the task instance) of the qdrant_upsert process
    while it is writing (some of the chunk's points committed to the embedded Qdrant, not all) and of the
    es_index process while its second bulk request is in flight (held by a proxy, which lets the
    cluster apply it after the client died). The scheduler's retry of each (LocalExecutor,
    retry_delay 30 s) re-sends the chunk: the run succeeds, the identity balances, and both stores
    hold exactly the chunk's ids, each once. ``elasticsearch_default`` is created in the metadata DB
    through the REST API, pointing at the proxy: the tasks read it there."""
    api = standalone.api
    data = standalone.root / "kill-data"
    generate(data, keywords=KILL_ROWS, dates=[KILL_DT], seed=12, bad_rate=0, tables=("keywords",))
    hold = Hold()
    with BulkFaultProxy(standalone.es_url, lambda n: ("hold", hold) if n == 2 else None) as proxy:
        port = int(proxy.url.rsplit(":", 1)[1])
        connection = {"connection_id": "elasticsearch_default", "conn_type": "elasticsearch"}
        api.call("POST", "/api/v2/connections", {**connection, "host": "127.0.0.1", "port": port})
        try:
            api.wait_for_dag("embedding_chain")
            api.call("PATCH", "/api/v2/dags/embedding_chain", {"is_paused": False})
            conf = {"dt": KILL_DT, "input_root": str(data), "chunk_rows": KILL_ROWS}
            conf |= {"qdrant_alias": KILL_ALIAS, "es_alias": KILL_ALIAS, "top_k": 5}
            run_id = api.call(
                "POST", "/api/v2/dags/embedding_chain/dagRuns", {"logical_date": None, "conf": conf}
            )["dag_run_id"]
            points_at_kill = _kill_mid_writes(standalone, run_id, hold)
            run = api.wait_for_run("embedding_chain", run_id, timeout_s=900)
        finally:
            hold.release.set()
            api.call("DELETE", "/api/v2/connections/elasticsearch_default")
    assert run["state"] == "success", api.task_states("embedding_chain", run_id)
    for task_id in ("keyword_index.qdrant_upsert", "keyword_index.es_index"):
        retried = api.task_instance("embedding_chain", run_id, task_id, 0)
        assert (retried["state"], retried["try_number"]) == ("success", 2), retried
    assert 0 < points_at_kill < KILL_ROWS
    assert proxy.faults_injected == 1
    report = _report(run_id, "keyword_index")
    assert_keyword_run_balanced(report)
    assert report["rows_read"] == report["sinks"]["qdrant"]["indexed"] == report["sinks"]["es"]["indexed"]
    assert report["rows_read"] == KILL_ROWS
    # The retry found the documents of the killed attempt's two bulks, the held one included (the
    # cluster applied it after its client died): it created only the third bulk's.
    bulk = BulkOptions().chunk_docs
    assert report["sinks"]["es"]["extra"]["created"] == KILL_ROWS - 2 * bulk, report["sinks"]["es"]
    monkeypatch.setenv("ES_URL", standalone.es_url)
    with open_stores() as stores:
        whole = verify_pair((stores["qdrant"], stores["es"]), (KILL_ALIAS, KILL_ALIAS), "keyword_id")
        points = stores.client("qdrant").count(KILL_ALIAS, exact=True).count
        documents = stores.client("es").count(index=KILL_ALIAS)["count"]
    assert whole.ok and whole.compared == KILL_ROWS, whole.describe()
    assert points == documents == KILL_ROWS  # each id once


def _kill_mid_writes(standalone: Standalone, run_id: str, hold: Hold) -> int:
    """SIGKILL the running es_index once its bulk is held and the running qdrant_upsert once its
    writes are under way: once the collection's write-ahead log has grown by ~500 points (the
    engine appends ~2 KB per point, measured). The number of points committed when it was killed,
    counted by opening the store in the 30 s before Airflow retries the task."""
    api, dag_id = standalone.api, "embedding_chain"
    storage = standalone.root / "work" / "qdrant" / "collections"
    es_killed = points_at_kill = 0
    deadline = time.monotonic() + 600
    while not (points_at_kill and es_killed):
        assert time.monotonic() < deadline, api.task_states(dag_id, run_id)
        if not es_killed and hold.seen.is_set():
            es_killed = _kill_task_process(api.task_instance(dag_id, run_id, "keyword_index.es_index", 0))
            if es_killed:
                hold.release.set()  # the cluster applies the bulk its client no longer waits for
        if not points_at_kill and _wal_bytes(storage.glob(f"{KILL_ALIAS}-g*/wal/*")) > 1_000_000:
            task = api.task_instance(dag_id, run_id, "keyword_index.qdrant_upsert", 0)
            if _kill_task_process(task):
                with open_client() as qdrant:  # its storage lock died with it; the retry waits 30 s
                    points_at_kill = count_points(qdrant, KILL_ALIAS)
        time.sleep(0.005)
    return points_at_kill


def _wal_bytes(files: Iterator[Path]) -> int:
    """Bytes allocated to write-ahead log files (preallocated sparse: allocation is what was written)."""
    total = 0
    for path in files:
        with suppress(FileNotFoundError):
            total += path.stat().st_blocks * 512
    return total


def _kill_task_process(task: dict) -> int:
    """SIGKILL the task instance's process (the PID Airflow records when the task starts) and wait
    until it is gone; the PID, or 0 when the task is not running in a live process."""
    pid = task.get("pid")
    if task["state"] != "running" or not pid:
        return 0
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    while True:
        try:
            if "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text():
                return pid  # dead, not yet reaped by its supervisor
        except FileNotFoundError:
            return pid
        time.sleep(0.01)


@pytest.mark.slow
def test_ctrl_c_stops_everything_it_started(standalone: Standalone):
    """Ctrl-C (SIGINT to the runner) stops Airflow and the services it started: no process of any
    of their groups is left."""
    stop_started = time.monotonic()
    standalone.runner.send_signal(signal.SIGINT)
    assert standalone.runner.wait(timeout=180) == 0
    stop_s = time.monotonic() - stop_started
    left = {pgid: live_pids_in_group(pgid) for pgid in standalone.groups}
    assert not any(left.values()), left
    print(f"standalone ready after {standalone.ready_s:.0f}s, everything stopped {stop_s:.0f}s after SIGINT")
