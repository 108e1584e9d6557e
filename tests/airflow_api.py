"""The Airflow REST API v2 as the tests drive it: log in, trigger, backfill, wait, read task instances."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


class Api:
    """The Airflow REST API v2 with a token for ``admin`` (simple or FAB auth manager alike)."""

    def __init__(self, base: str, password: str) -> None:
        self.base = base
        login = {"username": "admin", "password": password}
        self.token = self.call("POST", "/auth/token", login)["access_token"]

    @classmethod
    def with_password_file(cls, base: str, password_file: Path) -> Api:
        """Logged in with the password the simple auth manager generated into ``password_file``."""
        return cls(base, json.loads(password_file.read_text())["admin"])

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

    def backfill(self, dag_id: str, dates: list[str], conf: dict, timeout_s: float = 900) -> list[dict]:
        """A backfill of ``dag_id`` over ``dates`` (one run at a time), waited for; its runs by date.

        The DAG is unpaused: Airflow starts no run of a paused DAG, backfills included."""
        backfill = self.call(
            "POST",
            "/api/v2/backfills",
            {
                "dag_id": dag_id,
                "from_date": f"{dates[0]}T00:00:00Z",
                "to_date": f"{dates[-1]}T23:00:00Z",
                "max_active_runs": 1,
                "reprocess_behavior": "none",
                "dag_run_conf": conf,
            },
        )
        self.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        deadline = time.monotonic() + timeout_s
        while self.call("GET", f"/api/v2/backfills/{backfill['id']}")["completed_at"] is None:
            assert time.monotonic() < deadline, self.runs(dag_id)
            time.sleep(3)
        return [r for r in self.runs(dag_id) if r["run_type"] == "backfill"]

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

    def wait_for_run(self, dag_id: str, run_id: str, timeout_s: float = 600) -> dict:
        deadline = time.monotonic() + timeout_s
        while (run := self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"))["state"] in (
            "queued",
            "running",
        ):
            assert time.monotonic() < deadline, self.task_states(dag_id, run_id)
            time.sleep(3)
        return run

    def task_instance(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
        return self.call("GET", path + (f"/{map_index}" if map_index >= 0 else ""))

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=1000"
        return self.call("GET", path)["task_instances"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        return {label(t): t["state"] for t in self.task_instances(dag_id, run_id)}


def label(task_instance: dict) -> str:
    """``task_id`` or ``task_id[map_index]`` for a mapped task instance."""
    index = task_instance["map_index"]
    return task_instance["task_id"] + (f"[{index}]" if index >= 0 else "")
