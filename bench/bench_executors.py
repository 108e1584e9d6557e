"""The same two-date backfill of ``embedding_chain`` on CeleryExecutor (two workers), LocalExecutor
(same PostgreSQL deployment, same two task slots) and ``dag.test()``: wall time, the latency from
``queued`` to ``running`` of each task instance, and the share of wall time that is Airflow rather
than work (wall minus the time at least one task instance was running).

On 2 cores scale-out is not the point; the fixed cost per task instance is. Each executor runs
twice, without and with the task preload (``embedding_pipeline.task_preload``: the launching
process imports the tasks' libraries once and every forked task inherits them), so the table
shows what the preload removes. Uses the published MiniLM, the local inference server, the ES
emulator and the embedded Qdrant (its tasks serialised).

    python bench/bench_executors.py [--keywords 2000] [--products 400] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import date, datetime
from pathlib import Path
from typing import Any

from harness import BENCH_DIR, md_table, pipeline_machine_info, publish, scratch_dir, write_results

DATES = ["2024-06-01", "2024-06-02"]


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


def _busy_s(spans: list[tuple[float, float]]) -> float:
    """Seconds in which at least one of ``spans`` was running (the union of the intervals)."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(spans):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def summarize(name: str, wall_s: float, instances: list[dict[str, Any]]) -> dict[str, Any]:
    ran = [t for t in instances if t.get("start_date") and t.get("end_date")]
    spans = [(_ts(t["start_date"]), _ts(t["end_date"])) for t in ran]
    queued = [_ts(t["start_date"]) - _ts(t["queued_when"]) for t in ran if t.get("queued_when")]
    busy = _busy_s(spans)  # type: ignore[arg-type]
    return {
        "executor": name,
        "wall_s": round(wall_s, 1),
        "task_instances": len(ran),
        "task_seconds": round(sum(b - a for a, b in spans), 1),  # type: ignore[operator]
        "busy_s": round(busy, 1),
        "airflow_share": round(1 - busy / wall_s, 3),
        "queued_to_running_median_s": round(statistics.median(queued), 2) if queued else None,
        "queued_to_running_p90_s": round(sorted(queued)[int(0.9 * (len(queued) - 1))], 2) if queued else None,
    }


def run_cluster(
    executor: str, root: Path, repository: Path, env: dict[str, str], conf: dict, dates: list[str]
) -> dict:
    sys.path.insert(0, str(BENCH_DIR.parent / "tests"))
    from airflow_api import Api
    from embedding_pipeline.local.celery_cluster import CeleryCluster

    with CeleryCluster(
        root, repository, workers=2, worker_concurrency=1, executor=executor, extra_env=env
    ) as c:
        api = Api(c.api_url, c.admin_password)
        api.wait_for_dag("embedding_chain")
        started = time.monotonic()
        runs = api.backfill("embedding_chain", dates, conf, timeout_s=3600)
        wall = time.monotonic() - started
        assert all(r["state"] == "success" for r in runs), runs
        instances = [t for r in runs for t in api.task_instances("embedding_chain", r["dag_run_id"])]
    # The backfill's wall time includes the scheduler creating the runs; the same for both executors.
    return summarize(executor, wall, instances)


def run_dag_test(conf: dict, dates: list[str]) -> dict:
    from embedding_pipeline.local.airflow_runner import run_dag

    started, instances = time.monotonic(), []
    for dt in dates:
        run = run_dag("embedding_chain", {**conf, "dt": dt})
        assert str(run.state) == "success"
        for ti in run.get_task_instances():
            instances.append(
                {
                    "start_date": ti.start_date and ti.start_date.isoformat(),
                    "end_date": ti.end_date and ti.end_date.isoformat(),
                    "queued_when": None,  # dag.test() runs each task in-process, no queue
                }
            )
    return summarize("dag.test()", time.monotonic() - started, instances)


def markdown(report: dict[str, Any]) -> str:
    m, dates = report["machine"], report.get("dates", DATES)  # results before 2026-12-07 name no dates
    rows = [
        [
            r["executor"] + {True: ", task preload", False: ", no preload"}.get(r.get("task_preload"), ""),
            r["wall_s"],
            r["task_instances"],
            r["task_seconds"],
            r["busy_s"],
            f"{100 * r['airflow_share']:.1f}%",
            r["queued_to_running_median_s"] if r["queued_to_running_median_s"] is not None else "-",
            r["queued_to_running_p90_s"] if r["queued_to_running_p90_s"] is not None else "-",
        ]
        for r in report["results"]
    ]
    lines = [
        f"# Executors: a {len(dates)}-date backfill of embedding_chain ({report['date']})",
        "",
        f"{m['cpu_count']} x {m['cpu_model']}, {m['memory_gb']} GB; {report['keywords']} keywords and "
        f"{report['products']} products over {len(dates)} dates, MiniLM fp32, "
        f"chunk_rows {report['chunk_rows']}. "
        "Celery: 2 workers x concurrency 1; LocalExecutor: parallelism 2; both on PostgreSQL + the "
        "compose file's settings. Airflow share = 1 - (time some task instance ran) / wall.",
        "",
        *md_table(
            [
                "executor",
                "wall s",
                "TIs",
                "task s",
                "busy s",
                "Airflow share",
                "queued->running p50 s",
                "p90 s",
            ],
            rows,
            "lrrrrrrr",
        ),
        "",
        *_reading(report["results"]),
    ]
    return "\n".join(lines)


def _reading(results: list[dict[str, Any]]) -> list[str]:
    """Fixed cost per task instance: its task-seconds above ``dag.test()``'s (in-process, imports
    paid once) for the same work, per executor, without and with the preload."""
    test = next((r for r in results if r["executor"] == "dag.test()"), None)
    clusters = [r for r in results if "task_preload" in r]
    if test is None or not clusters:
        return []
    lines = [
        "Fixed cost per task instance (task-seconds above `dag.test()`'s "
        f"{test['task_seconds']} for the same work, per task instance): "
        + "; ".join(
            f"{r['executor']} {'with' if r['task_preload'] else 'without'} preload "
            f"{(r['task_seconds'] - test['task_seconds']) / max(r['task_instances'], 1):.2f} s"
            for r in clusters
        )
        + ". `start_date` is stamped when a worker's supervisor takes the task, so queued -> running "
        "stays small and the fixed cost (a forked task process, imports, client and store set-up, "
        "Execution API round trips) lands in task seconds.",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keywords", type=int, default=2000)
    parser.add_argument("--products", type=int, default=400)
    parser.add_argument("--chunk-rows", type=int, default=500)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="200 keywords, 50 products, one date, LocalExecutor with the preload only",
    )
    args = parser.parse_args()
    dates = DATES[:1] if args.quick else DATES
    if args.quick:
        args.keywords, args.products, args.chunk_rows = 200, 50, 100
    variants = (
        [("LocalExecutor", True)]
        if args.quick
        else [(e, p) for e in ("CeleryExecutor", "LocalExecutor") for p in (False, True)]
    )
    from embedding_pipeline.local.airflow_runner import configure_airflow, migrate_db
    from embedding_pipeline.local.es_emulator import EsEmulator
    from embedding_pipeline.sample.generate import generate
    from embedding_pipeline.serving.process import LocalServer

    with scratch_dir(args.keep, "bench-executors-") as scratch:
        repository = scratch / "model_repository"
        model = publish("minilm", repository, scratch)
        data = scratch / "data"
        generate(
            data, keywords=args.keywords, products=args.products, dates=dates, seed=4, row_group_size=500
        )
        conf = {"chunk_rows": args.chunk_rows, "top_k": 10, "model_name": model["name"]}
        results = []
        with (
            LocalServer(repository, log_path=scratch / "server.log") as server,
            EsEmulator(scratch) as es,
        ):
            services = {
                "EMBEDDING_DATA_ROOT": str(data),
                "EMBEDDING_MODEL_REPOSITORY": str(repository),
                "EMBEDDING_SERVER_GRPC_PORT": str(server.grpc_port),
                "EMBEDDING_SERVER_HTTP_PORT": str(server.http_port),
                "ES_URL": es.url,
                "HF_HUB_OFFLINE": "1",
            }
            for executor, preload in variants:
                name = f"{executor}-{'preload' if preload else 'plain'}"
                root = scratch / name
                env = {
                    **services,
                    "QDRANT_PATH": str(root / "qdrant"),
                    "EMBEDDING_PIPELINE_HOME": str(root / "work"),
                    "EMBEDDING_TASK_PRELOAD": "1" if preload else "0",
                }
                alias = name.lower().replace("-", "_")
                aliases = {"qdrant_alias": f"{alias}_kw", "es_alias": f"{alias}_kw"}
                aliases["product_alias"] = f"{alias}_pr"
                result = run_cluster(executor, root, repository, env, {**conf, **aliases}, dates)
                results.append({**result, "task_preload": preload})
                print(json.dumps(results[-1]), flush=True)
            os.environ.update(services, QDRANT_PATH=str(scratch / "dagtest" / "qdrant"))
            os.environ["EMBEDDING_PIPELINE_HOME"] = str(scratch / "dagtest" / "work")
            migrate_db(configure_airflow(scratch / "dagtest" / "airflow"))
            aliases = {"qdrant_alias": "dagtest_kw", "es_alias": "dagtest_kw", "product_alias": "dagtest_pr"}
            results.append(run_dag_test({**conf, **aliases, "input_root": str(data)}, dates))
            print(json.dumps(results[-1]), flush=True)
    report = {
        "date": date.today().isoformat(),
        "machine": pipeline_machine_info(),
        "keywords": args.keywords,
        "products": args.products,
        "chunk_rows": args.chunk_rows,
        "dates": dates,
        "results": results,
    }
    write_results(BENCH_DIR / "results", "executors", args.quick, report, markdown)


if __name__ == "__main__":
    main()
