"""DAG parse cost: what the dag-processor pays per DAG file on every parse loop.

Each sample is a fresh interpreter (as a parsing subprocess is): it imports ``airflow.sdk`` (timed:
the bare SDK import), then Airflow's ``DagBag`` (the processor's own cost, not timed), then parses
one DAG file with ``DagBag`` (timed). A minimal DAG file that imports only ``airflow.sdk`` is
parsed the same way, so "above bare" is the time our imports and wiring add. The set of modules a
file's parse imports is recorded too: heavy packages there are the usual cause of a slow parse.

    .venv/bin/python bench/bench_dag_parse.py [--repeats 7] [--label before]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

from harness import PROJECT_ROOT as ROOT
from harness import machine_info, md_table, write_results

HEAVY = (
    "numpy",
    "pyarrow",
    "pandas",
    "onnxruntime",
    "torch",
    "elasticsearch",
    "qdrant_client",
    "tritonclient",
)
BARE_DAG = """
from datetime import datetime
from airflow.sdk import dag, task

@dag(dag_id="bare", schedule=None, start_date=datetime(2024, 1, 1))
def bare():
    @task
    def hello() -> None:
        pass

    hello()

bare()
"""

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import airflow.sdk
t_sdk = time.perf_counter() - t0
from airflow.dag_processing.dagbag import DagBag
before = set(sys.modules)
t1 = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
t_parse = time.perf_counter() - t1
new = sorted(set(sys.modules) - before)
errors = {k: str(v) for k, v in bag.import_errors.items()}
print(json.dumps({"sdk_s": t_sdk, "parse_s": t_parse, "errors": errors, "dags": sorted(bag.dag_ids),
                  "new_modules": new}))
"""


def sample(dag_file: Path, airflow_home: Path) -> dict[str, Any]:
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dag_file.parent),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT / "include")]),
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(dag_file)], env=env, capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["errors"] or not result["dags"]:
        raise SystemExit(f"{dag_file} did not parse: {result['errors'] or 'no DAG'}")
    return result


def measure(repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-dag-parse-") as scratch:
        home = Path(scratch) / "airflow"
        bare = Path(scratch) / "bare" / "bare_dag.py"
        bare.parent.mkdir(parents=True)
        bare.write_text(BARE_DAG)
        files = {"(bare airflow.sdk DAG)": bare} | {p.name: p for p in sorted((ROOT / "dags").glob("*.py"))}
        samples: dict[str, list[dict[str, Any]]] = {name: [] for name in files}
        for _ in range(repeats):  # interleaved, so load on the machine hits every file alike
            for name, path in files.items():
                samples[name].append(sample(path, home))
    bare_median = statistics.median(s["parse_s"] for s in samples["(bare airflow.sdk DAG)"])
    rows = {}
    for name, runs in samples.items():
        parse = statistics.median(s["parse_s"] for s in runs)
        new = runs[-1]["new_modules"]
        rows[name] = {
            "parse_s_median": round(parse, 4),
            "above_bare_s": round(parse - bare_median, 4),
            "sdk_import_s_median": round(statistics.median(s["sdk_s"] for s in runs), 4),
            "modules_imported": len(new),
            "pipeline_modules": [
                m
                for m in new
                if m.split(".")[0] in ("embedding_pipeline", "pipeline_stages", "pipeline_hooks")
            ],
            "heavy_packages": sorted({m.split(".")[0] for m in new if m.split(".")[0] in HEAVY}),
            "parse_s_all": [round(s["parse_s"], 4) for s in runs],
        }
    return rows


def markdown(report: dict[str, Any]) -> str:
    rows = [
        [
            name,
            f"{row['parse_s_median']:.3f}",
            f"{row['above_bare_s']:+.3f}",
            f"{row['sdk_import_s_median']:.3f}",
            row["modules_imported"],
            ", ".join(row["heavy_packages"]) or "-",
        ]
        for name, row in report["files"].items()
    ]
    headers = [
        "DAG file",
        "parse (median s)",
        "above bare (s)",
        "`airflow.sdk` import (s)",
        "modules imported",
    ]
    lines = [
        f"# DAG parse cost ({report['label']}, {report['date']})",
        "",
        f"{report['machine']['cpu_model']}, {report['machine']['cpu_count']} CPUs; median of "
        f"{report['repeats']} fresh interpreters per file; load before/after {report['load']}.",
        "",
        *md_table([*headers, "heavy packages"], rows),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="one repeat: a smoke run")
    parser.add_argument("--label", default="current", help="names the results file, e.g. before/after")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    load_before = os.getloadavg()
    files = measure(args.repeats)
    report = {
        "date": date.today().isoformat(),
        "label": args.label,
        "repeats": args.repeats,
        "machine": machine_info(("apache-airflow",)),
        "load": [round(x, 2) for x in (load_before[0], os.getloadavg()[0])],
        "files": files,
    }
    write_results(args.output_dir, f"dag-parse-{args.label}", args.quick, report, markdown)


if __name__ == "__main__":
    main()
