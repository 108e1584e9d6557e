"""Run this project's DAGs in-process with ``dag.test()`` on embedded defaults.

Used by the main job (``embedding-pipeline demo``) and the tests: it points Airflow at a
project-local ``AIRFLOW_HOME`` (SQLite), this repository's ``dags/`` and ``plugins/``, migrates the
metadata database once, and runs a DAG with a ``conf``. ``dag.test()`` only runs DAGs from the
configured DAGs folder, hence the explicit configuration.
"""

from __future__ import annotations

import os
import subprocess
import sys
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
