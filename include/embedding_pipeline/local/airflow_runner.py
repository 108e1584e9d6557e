"""Run this project's DAGs in-process with ``dag.test()`` on embedded defaults.

Used by the main job (``embedding-pipeline demo``) and the tests: it points Airflow at a
project-local ``AIRFLOW_HOME`` (SQLite), this repository's ``dags/`` and ``plugins/``, migrates the
metadata database once, and runs a DAG with a ``conf``. ``dag.test()`` only runs DAGs from the
configured DAGs folder, hence the explicit configuration.

``dag.test()`` cannot be interrupted in-process: Airflow's task runner turns a ``KeyboardInterrupt``
into a failure of the running task and the test loop goes on with the next runnable ones, so a
Ctrl-C would take effect minutes later. :func:`run_dag_in_child` runs it in a child process of its
own session instead: the parent alone receives the terminal's Ctrl-C (or a SIGTERM), kills the child
at once and marks the run it left behind failed, so that a scheduler sharing the metadata database
(``embedding-pipeline airflow``) does not find a ``max_active_runs=1`` DAG blocked by a dead run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from embedding_pipeline.errors import PipelineError
from embedding_pipeline.settings import PROJECT_ROOT, work_dir


def configure_airflow(home: Path | None = None) -> Path:
    """Set the Airflow environment for this process (call before importing airflow)."""
    home = home or Path(os.environ.get("AIRFLOW_HOME", work_dir() / "airflow"))
    home.mkdir(parents=True, exist_ok=True)
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(PROJECT_ROOT / "dags"))
    os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(PROJECT_ROOT / "plugins"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    plugins = str(PROJECT_ROOT / "plugins")
    if plugins not in sys.path:
        sys.path.insert(0, plugins)
    return home


def migrate_db(home: Path) -> None:
    """``airflow db migrate`` once per home (a marker file skips it afterwards)."""
    marker = home / ".migrated"
    if marker.exists():
        return
    airflow = Path(sys.executable).with_name("airflow")
    result = subprocess.run(
        [str(airflow), "db", "migrate"], env=os.environ.copy(), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise PipelineError(f"airflow db migrate failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    marker.write_text("ok\n")


def run_dag(dag_id: str, conf: dict | None = None):
    """``dag.test()`` a DAG of this project and return its DagRun (state, task instances)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        raise PipelineError(f"DAG import errors: {bag.import_errors}")
    dag = bag.get_dag(dag_id)
    if dag is None:
        raise PipelineError(f"no DAG {dag_id!r} in {os.environ['AIRFLOW__CORE__DAGS_FOLDER']}")
    return dag.test(run_conf=conf or {})


@dataclass(frozen=True)
class RunOutcome:
    """What a DAG run in a child process ended as (the parent has no DagRun object of it)."""

    dag_id: str
    run_id: str
    state: str
    task_states: dict[str, str]  # "task_id" or "task_id[map_index]" -> state

    @property
    def failed_tasks(self) -> dict[str, str]:
        return {k: v for k, v in self.task_states.items() if v not in ("success", "skipped")}


def task_states(run) -> dict[str, str]:
    """``task_id`` (``task_id[i]`` for mapped ones) -> state of every task instance of ``run``."""
    return {
        f"{ti.task_id}[{ti.map_index}]" if ti.map_index >= 0 else ti.task_id: str(ti.state)
        for ti in run.get_task_instances()
    }


def run_dag_in_child(dag_id: str, conf: dict | None = None) -> RunOutcome:
    """:func:`run_dag` in a child process that a Ctrl-C or SIGTERM of this one stops at once.

    The child inherits this process's environment (the services' addresses) and output. On
    ``KeyboardInterrupt`` - or ``SystemExit`` from a SIGTERM handler - the child's process group is
    killed, the runs it left ``running`` are marked failed, and the exception propagates.
    """
    from embedding_pipeline.local.services import uninterruptible

    with tempfile.TemporaryDirectory(prefix="run-dag-") as scratch:
        conf_path, result_path = Path(scratch) / "conf.json", Path(scratch) / "result.json"
        conf_path.write_text(json.dumps(conf or {}))
        started = datetime.now(UTC)
        child = subprocess.Popen(
            [sys.executable, "-m", __name__, dag_id, str(conf_path), str(result_path)],
            start_new_session=True,  # the terminal's Ctrl-C reaches this process only
        )
        try:
            returncode = child.wait()
        except BaseException:
            with uninterruptible():
                _kill_group(child)
                _fail_runs_left_running(dag_id, conf or {}, since=started)
            raise
        if returncode != 0 or not result_path.exists():
            # Killed (OOM, a kill -9) or crashed: it may have left its run "running" just the same.
            _fail_runs_left_running(dag_id, conf or {}, since=started)
            how = f"was killed by signal {-returncode}" if returncode < 0 else f"exited with {returncode}"
            raise PipelineError(f"dag.test({dag_id}) in a child process {how} (its output is above)")
        return RunOutcome(**json.loads(result_path.read_text()))


def _kill_group(child: subprocess.Popen) -> None:
    """SIGKILL: the child holds no resource of its own but the run's rows, fixed up afterwards."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def _fail_runs_left_running(dag_id: str, conf: dict, since: datetime) -> None:
    """Mark failed (running task instances failed, pending ones skipped) what the killed child left.

    ``dag.test()`` does not let its caller name the run, so the child's run is recognised as the
    manual run of ``dag_id`` with this ``conf`` started since ``since`` and still running: a
    scheduled or backfill run that a scheduler on the same database started meanwhile is left alone.
    """
    from airflow.api.common.mark_tasks import set_dag_run_state_to_failed
    from airflow.models.dagrun import DagRun
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunType

    dag = SerializedDagModel.get_dag(dag_id)
    if dag is None:
        return
    for run in DagRun.find(dag_id=dag_id, state=DagRunState.RUNNING, run_type=DagRunType.MANUAL):
        if (run.start_date is None or run.start_date >= since) and (run.conf or {}) == conf:
            set_dag_run_state_to_failed(dag=dag, run_id=run.run_id, commit=True)
            print(f"{dag_id} run {run.run_id} was interrupted: marked failed", file=sys.stderr)


def _child_main(argv: list[str]) -> int:
    dag_id, conf_path, result_path = argv
    configure_airflow()
    run = run_dag(dag_id, json.loads(Path(conf_path).read_text()))
    outcome = RunOutcome(dag_id=dag_id, run_id=run.run_id, state=str(run.state), task_states=task_states(run))
    Path(result_path).write_text(json.dumps(outcome.__dict__))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
