"""``embedding-pipeline airflow`` for real: ``airflow standalone`` (scheduler, LocalExecutor, API
server, DAG processor) with the local services; a backfill of ``embedding_chain`` over two dates runs
through the scheduler, not ``dag.test()``; Ctrl-C leaves no process behind.
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
import urllib.request
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
from embedding_pipeline.runs.plan import run_dir_for
from embedding_pipeline.sample.generate import generate
from embedding_pipeline.serving.process import free_port
from test_local_services import ENV_KEYS, live_pids_in_group

DATES = ["2024-01-01", "2024-01-02"]
KEYWORDS, PRODUCTS = 400, 80


class Api:
    """The Airflow REST API v2 with a token from the simple auth manager's generated password."""

    def __init__(self, base: str, password_file: Path) -> None:
        self.base = base
        password = json.loads(password_file.read_text())["admin"]
        login = {"username": "admin", "password": password}
        self.token = self.call("POST", "/auth/token", login)["access_token"]

    def call(self, method: str, path: str, body: dict | None = None) -> Any:
        request = urllib.request.Request(
            self.base + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={
                "Content-Type": "application/json",
                **({"Authorization": f"Bearer {self.token}"} if getattr(self, "token", None) else {}),
            },
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read() or b"null")

    def wait_for_dag(self, dag_id: str, timeout_s: float = 180) -> None:
        """Until the DAG processor has serialized ``dag_id`` (a backfill needs it)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.call("GET", f"/api/v2/dags/{dag_id}")
                return
            except urllib.error.HTTPError as exc:
                if exc.code != 404 or time.monotonic() > deadline:
                    raise
            time.sleep(2)

    def runs(self, dag_id: str) -> list[dict]:
        return self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns?order_by=logical_date")["dag_runs"]

    def answer(self, dag_id: str, run_id: str, task_id: str, option: str, timeout_s: float = 600) -> dict:
        """Wait until ``task_id`` asks for a person's input, then answer it as the UI's Required
        Actions page does; the request as the person saw it."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails"
        deadline = time.monotonic() + timeout_s
        while self.task_states(dag_id, run_id).get(task_id) != "awaiting_input":
            assert time.monotonic() < deadline, self.task_states(dag_id, run_id)
            time.sleep(2)
        # Answer as a person would, not within the second the task parked: Airflow 3.3's scheduler
        # takes the parking workload's late "success" executor event for an external state change
        # of the resumed task and fails it into a retry (seen with a 0.15 s answer).
        time.sleep(5)
        request = self.call("GET", path)
        self.call("PATCH", path, {"chosen_options": [option]})
        return request

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        tis = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=1000")
        return {
            t["task_id"] + (f"[{t['map_index']}]" if t["map_index"] >= 0 else ""): t["state"]
            for t in tis["task_instances"]
        }


def _report(run_id: str, stage: str) -> dict:
    return json.loads((Path(str(run_dir_for("embedding_chain", run_id, stage))) / "report.json").read_text())


@pytest.mark.slow
def test_standalone_runs_a_chain_backfill_and_leaves_no_process_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The Airflow a user gets from `make airflow`: UI and login, then a backfill of the chain over two
    dates through the scheduler (the DAG unpaused: Airflow starts no run of a paused DAG, backfills
    included), each run processing its own dt; the second run skips the publish (the model is there);
    the nightly run the unpause schedules finds no partition and ends no_data. Ctrl-C stops it all."""
    generate(tmp_path / "data", keywords=KEYWORDS, products=PRODUCTS, dates=DATES, seed=8, row_group_size=100)
    monkeypatch.setenv("EMBEDDING_PIPELINE_HOME", str(tmp_path / "work"))  # where the runs write reports
    monkeypatch.delenv("EMBEDDING_STAGING_URL", raising=False)
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in ENV_KEYS}
    env.update(
        EMBEDDING_PIPELINE_HOME=str(tmp_path / "work"),
        AIRFLOW_HOME=str(tmp_path / "airflow"),
        EMBEDDING_MODEL_REPOSITORY=str(tmp_path / "model_repository"),
        EMBEDDING_DATA_ROOT=str(tmp_path / "data"),
        PYTHONUNBUFFERED="1",
    )
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
    log = tmp_path / "work" / "logs" / "airflow-standalone.log"
    try:
        while not any("Airflow: UI at" in line for line in seen):
            assert time.monotonic() - started < 400, f"no UI after 400 s:\n{''.join(seen)}"
            assert runner.poll() is None or not lines.empty(), f"runner exited:\n{''.join(seen)}"
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                continue
            groups.update(int(pid) for pid in re.findall(r"\bpid (\d+)\)", seen[-1]))
        ready_s = time.monotonic() - started
        assert len(groups) == 4, seen  # the runner, the emulator, the server and the standalone
        ui_line = next(line for line in seen if "Airflow: UI at" in line)
        password_file = tmp_path / "airflow" / "simple_auth_manager_passwords.json.generated"
        assert f"user admin, password in {password_file}" in ui_line
        api = Api(f"http://127.0.0.1:{port}", password_file)
        assert api.call("GET", "/api/v2/monitor/health")["metadatabase"]["status"] == "healthy"
        assert all(live_pids_in_group(pgid) for pgid in groups)

        api.wait_for_dag("embedding_chain")
        backfill = api.call(
            "POST",
            "/api/v2/backfills",
            {
                "dag_id": "embedding_chain",
                "from_date": f"{DATES[0]}T00:00:00Z",
                "to_date": f"{DATES[-1]}T23:00:00Z",
                "max_active_runs": 1,
                "reprocess_behavior": "none",
                "dag_run_conf": {"chunk_rows": 100, "top_k": 5},
            },
        )
        api.call("PATCH", "/api/v2/dags/embedding_chain", {"is_paused": False})
        deadline = time.monotonic() + 900
        while api.call("GET", f"/api/v2/backfills/{backfill['id']}")["completed_at"] is None:
            assert time.monotonic() < deadline, api.runs("embedding_chain")
            time.sleep(3)
        runs = api.runs("embedding_chain")
        backfilled = [r for r in runs if r["run_type"] == "backfill"]
        assert [r["data_interval_start"][:10] for r in backfilled] == DATES, runs
        for position, run in enumerate(backfilled):
            states = api.task_states("embedding_chain", run["dag_run_id"])
            assert run["state"] == "success", ({k: v for k, v in states.items() if v != "success"}, log)
            # The first run publishes the bundled model (publish_model=if_missing); the second finds it.
            assert states["model.export"] == ("success" if position == 0 else "skipped")
            keywords = _report(run["dag_run_id"], "keyword_index")
            products = _report(run["dag_run_id"], "product_link")
            for report in (keywords, products):
                assert report["status"] == "ok" and report["partitions"] == [DATES[position]], report
                assert report["problems"] == []
            assert keywords["rows_read"] == KEYWORDS // len(DATES)
            assert products["rows_read"] == PRODUCTS // len(DATES)
            assert sum(1 for state in states if state.startswith("keyword_index.embed[")) > 1  # mapped
        for run in runs:
            if run["run_type"] == "scheduled":  # the latest interval, scheduled by the unpause
                assert run["state"] == "success"
                assert _report(run["dag_run_id"], "product_link")["status"] == "no_data"

        # A full rebuild that asks a person before each swap: the keyword swap approved, the
        # product swap rejected (its generation stays gated and unaliased, no Asset event).
        conf = {"dt": DATES[-1], "mode": "full", "approve_swap": True, "chunk_rows": 100, "top_k": 5}
        run_id = api.call(
            "POST", "/api/v2/dags/embedding_chain/dagRuns", {"logical_date": None, "conf": conf}
        )["dag_run_id"]
        asked = api.answer("embedding_chain", run_id, "keyword_index.approve_swap", "Approve")
        assert asked["subject"] == "Swap keyword_index to generation 2?", asked
        assert "| counts | yes | expected " in asked["body"] and "keywords -> keywords-g1" in asked["body"]
        api.answer("embedding_chain", run_id, "product_link.approve_swap", "Reject")
        deadline = time.monotonic() + 600
        while (run := api.call("GET", f"/api/v2/dags/embedding_chain/dagRuns/{run_id}"))[
            "state"
        ] == "running":
            assert time.monotonic() < deadline, api.task_states("embedding_chain", run_id)
            time.sleep(3)
        states = api.task_states("embedding_chain", run_id)
        assert run["state"] == "success", states
        assert states["keyword_index.go_live"] == "success" and states["product_link.go_live"] == "skipped"
        keywords = _report(run_id, "keyword_index")["generation"]
        assert keywords["status"] == "swapped" and {m["to"] for m in keywords["swapped"]} == {"keywords-g2"}
        products = _report(run_id, "product_link")["generation"]
        assert products["status"] == "gated" and products["swapped"] == [], products

        stop_started = time.monotonic()
        runner.send_signal(signal.SIGINT)
        assert runner.wait(timeout=180) == 0
        stop_s = time.monotonic() - stop_started
        left = {pgid: live_pids_in_group(pgid) for pgid in groups}
        assert not any(left.values()), left
        print(f"standalone ready after {ready_s:.0f}s, everything stopped {stop_s:.0f}s after SIGINT")
    finally:
        if runner.poll() is None:
            runner.send_signal(signal.SIGINT)
            with suppress(subprocess.TimeoutExpired):
                runner.wait(timeout=180)
        for pgid in groups:  # never leave a failed test's processes behind
            if live_pids_in_group(pgid):
                os.killpg(pgid, signal.SIGKILL)
