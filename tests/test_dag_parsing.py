"""What parsing a DAG file costs and decides: the dag-processor parses every file on every loop, so
DAG files and ``plugins/`` import only light modules; and the Qdrant tasks' concurrency comes from
the resolved settings, a Connection in the metadata DB included.

Parse cost is checked by what gets imported (counted in a fresh interpreter, as a parsing process
starts), never by wall time; ``bench/bench_dag_parse.py`` measures the time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DAG_FILES = sorted((ROOT / "dags").glob("*.py"))
# Each of these costs from 0.1 s to seconds to import; none is needed to define a DAG.
HEAVY = ("numpy", "pyarrow", "pandas", "onnxruntime", "torch", "transformers", "elasticsearch",
         "qdrant_client", "tritonclient", "grpc", "kserve")  # fmt: skip

PROBE = r"""
import json, sys
import airflow.sdk
from airflow.dag_processing.dagbag import DagBag
before = set(sys.modules)
bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": sorted(bag.dag_ids),
                  "new": sorted(set(sys.modules) - before)}))
"""


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_parsing_a_dag_file_imports_no_heavy_package(dag_file: Path, session_dir: Path) -> None:
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(session_dir / "parse-probe"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT / "include")]),
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(dag_file)], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == {} and result["dags"], result["errors"]
    heavy = sorted({m for m in result["new"] if m.split(".")[0] in HEAVY})
    assert heavy == [], f"{dag_file.name} imports at parse time: {heavy[:20]}"
    # The library modules a parse may touch: Params, option dataclasses, settings - all light.
    ours = {m for m in result["new"] if m.startswith("embedding_pipeline.")}
    light = {"embedding_pipeline.runs", "embedding_pipeline.runs.input_kinds"}  # Param enums and limits
    prefixes = ("embedding_pipeline.serving", "embedding_pipeline.runs")
    assert not {m for m in ours - light if m.startswith(prefixes)}, ours


READ_SERIALIZED = r"""
import json, sys
from airflow.models.serialized_dag import SerializedDagModel
from airflow.utils.session import create_session
with create_session() as session:
    print(json.dumps([SerializedDagModel.get_dag(d, session=session).get_task(t).max_active_tis_per_dag
                      for d, t in json.loads(sys.argv[1])]))
"""


def _parse_with_the_dag_processor() -> set[int | None]:
    """Run Airflow's real dag-processor once over the DAGs folder, then read back (in a fresh
    process: nothing cached) the concurrency each Qdrant task has in the serialized DAGs."""
    airflow = str(Path(sys.executable).with_name("airflow"))
    # The three parses run seconds apart: let each one parse and store its result.
    env = {
        **os.environ,
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "0",
        "AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL": "0",
    }
    run = subprocess.run(
        [airflow, "dag-processor", "--num-runs", "1"], env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    read = subprocess.run(
        [sys.executable, "-c", READ_SERIALIZED, json.dumps(QDRANT_TASKS)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert read.returncode == 0, read.stderr[-3000:]
    return set(json.loads(read.stdout.strip().splitlines()[-1]))


QDRANT_TASKS = (
    ("keyword_index", "qdrant_upsert"),
    ("product_link", "link"),
    ("embedding_chain", "keyword_index.qdrant_upsert"),
    ("embedding_chain", "product_link.link"),
)


@pytest.mark.slow
def test_qdrant_tasks_fan_out_with_a_qdrant_connection_stored_in_the_metadata_db(airflow_db, monkeypatch):
    """Without a server, the Qdrant tasks of both stages (and the chain's copies) run one at a time:
    local mode locks its storage folder. A ``qdrant_default`` Connection stored in the metadata DB -
    not in the environment - must let them fan out: the dag-processor serves Connection look-ups
    to its parsing processes, which is what this runs for real."""
    from embedding_pipeline.stores.qdrant.settings import SERVER_TASK_CONCURRENCY

    for name in ("QDRANT_URL", "AIRFLOW_CONN_QDRANT_DEFAULT"):
        monkeypatch.delenv(name, raising=False)
    assert _parse_with_the_dag_processor() == {1}

    airflow = str(Path(sys.executable).with_name("airflow"))
    add = [airflow, "connections", "add", "qdrant_default", "--conn-type", "qdrant", "--conn-host", "qdrant"]
    subprocess.run([*add, "--conn-port", "6333"], check=True, capture_output=True, timeout=120)
    try:
        assert _parse_with_the_dag_processor() == {SERVER_TASK_CONCURRENCY}
    finally:
        subprocess.run([airflow, "connections", "delete", "qdrant_default"], check=True, capture_output=True)
    assert _parse_with_the_dag_processor() == {1}
