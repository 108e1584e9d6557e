"""The task preload through Airflow's own start-up hook: a process started as ``airflow
scheduler`` or ``airflow celery worker`` has the tasks' libraries imported before it forks any
task; every other Airflow process (dag-processor, API server, a ``dag.test()`` run) does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from embedding_pipeline.task_preload import launches_tasks

ROOT = Path(__file__).resolve().parents[1]
HEAVY = (
    "qdrant_client",
    "pyarrow.parquet",
    "elasticsearch",
    "grpc",
    "embedding_pipeline.stages.keywords.stage",
)


@pytest.mark.parametrize(
    ("argv", "launches"),
    [
        (["airflow", "scheduler"], True),
        (["/venv/bin/airflow", "scheduler", "--num-runs", "5"], True),
        (["airflow", "celery", "worker", "--concurrency", "2"], True),
        (["airflow", "celery", "flower"], False),
        (["airflow", "dag-processor"], False),
        (["airflow", "api-server", "--port", "8080"], False),
        (["airflow", "standalone"], False),  # its scheduler is a child process of its own
        (["pytest"], False),
        (["airflow"], False),
    ],
)
def test_only_the_processes_that_fork_tasks_preload(argv: list[str], launches: bool) -> None:
    assert launches_tasks(argv) is launches


def _modules_after_airflow_starts(command: str, tmp_path: Path, **env: str) -> dict[str, bool]:
    """Start Python as ``airflow <command>`` would be, import airflow (which imports the plugins
    folder's airflow_local_settings), and report which heavy modules are loaded."""
    script = (
        "import json, sys\n"
        f"sys.argv = ['airflow', *{command.split()!r}]\n"
        "import airflow.settings\n"
        f"print(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))\n"
    )
    environment = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        **env,
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_airflow_start_up_preloads_in_the_scheduler_only(tmp_path: Path) -> None:
    assert all(_modules_after_airflow_starts("scheduler", tmp_path).values())
    assert not any(_modules_after_airflow_starts("dag-processor", tmp_path).values())
    assert not any(_modules_after_airflow_starts("scheduler", tmp_path, EMBEDDING_TASK_PRELOAD="0").values())
