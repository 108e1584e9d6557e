"""``run_dag_in_child``: a DAG run in a child process (what the demo uses so that Ctrl-C works) with
a real ``dag.test()`` in that child, against the session's SQLite metadata DB. The demo test covers
Ctrl-C and SIGTERM; these cover the outcome and a child that dies on its own (an OOM kill)."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from embedding_pipeline.errors import PipelineError
from embedding_pipeline.local.airflow_runner import run_dag_in_child

DAG = """
import time
from datetime import datetime
from pathlib import Path

from airflow.sdk import dag, task


@dag(schedule=None, start_date=datetime(2024, 1, 1))
def runner_probe():
    @task
    def first(marker: str) -> str:
        Path(marker).write_text(str(__import__("os").getpid()))
        return "ok"

    @task
    def nap(previous: str, seconds: int) -> str:
        time.sleep(seconds)
        return previous

    nap(first("{marker}"), {seconds})


runner_probe()
"""


@pytest.fixture
def probe_dag(airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A two-task DAG of its own folder (the child inherits the environment); ``first`` writes the
    child's PID to a marker file when it runs."""

    def make(seconds: int) -> Path:
        folder = tmp_path / "dags"
        folder.mkdir(exist_ok=True)
        marker = tmp_path / "first.pid"
        (folder / "runner_probe.py").write_text(DAG.format(marker=marker, seconds=seconds))
        monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(folder))
        return marker

    return make


def _runs(airflow_db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(airflow_db / "airflow.db") as db:
        query = "SELECT run_id, state FROM dag_run WHERE dag_id = 'runner_probe' ORDER BY id"
        return db.execute(query).fetchall()


def test_the_outcome_comes_back_from_the_child(probe_dag, airflow_db: Path) -> None:
    marker = probe_dag(seconds=0)
    outcome = run_dag_in_child("runner_probe", {})
    assert outcome.state == "success" and outcome.failed_tasks == {}
    assert outcome.task_states == {"first": "success", "nap": "success"}
    assert int(marker.read_text()) != os.getpid()  # it ran in the child
    assert (outcome.run_id, "success") in _runs(airflow_db)


def test_a_child_killed_mid_run_fails_its_run_and_says_so(probe_dag, airflow_db: Path) -> None:
    """As an OOM kill would: SIGKILL to the child while ``nap`` runs. The caller gets a clear error,
    and the run is marked failed instead of staying "running" in the metadata DB."""
    marker = probe_dag(seconds=120)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_dag_in_child("runner_probe", {})
        except BaseException as exc:  # the assertion below reads it
            errors.append(exc)

    caller = threading.Thread(target=run)
    caller.start()
    deadline = time.monotonic() + 180
    while not marker.exists():
        assert caller.is_alive() and time.monotonic() < deadline, errors
        time.sleep(0.2)
    time.sleep(2)  # into `nap`
    os.kill(int(marker.read_text()), signal.SIGKILL)
    caller.join(timeout=120)
    assert not caller.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], PipelineError)
    assert "dag.test(runner_probe) in a child process was killed by signal 9" in str(errors[0])
    killed = [state for _, state in _runs(airflow_db)]
    assert killed[-1] == "failed" and "running" not in killed
