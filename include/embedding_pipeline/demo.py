"""The main job: everything on one machine, through Airflow, on embedded defaults.

sample data -> ``embedding_model_publish`` -> local inference server -> ``keyword_index`` over the
sample dates into Qdrant (local mode) and Elasticsearch (the noida-db emulator unless ``ES_URL``
names a cluster) -> a short report. Every process started here is stopped here, also on failure
or Ctrl-C (context managers stop them by PID).
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import ExitStack

from embedding_pipeline.errors import PipelineError
from embedding_pipeline.settings import ServerSettings, data_root, work_dir

QUERIES = ("北海道 ラーメン", "ワイヤレスイヤホン 安い", "cheap flights to tokyo")


def _check(run, dag_id: str) -> dict[str, str]:
    states = {
        f"{ti.task_id}[{ti.map_index}]" if ti.map_index >= 0 else ti.task_id: str(ti.state)
        for ti in run.get_task_instances()
    }
    if str(run.state) != "success":
        failed = {k: v for k, v in states.items() if v != "success"}
        raise PipelineError(
            f"{dag_id} did not succeed: {failed} (logs: AIRFLOW_HOME={os.environ['AIRFLOW_HOME']})"
        )
    return states


def run_demo(args: argparse.Namespace) -> int:
    from embedding_pipeline.airflow_runner import configure_airflow, migrate_db
    from embedding_pipeline.sample_data import generate
    from embedding_pipeline.server_process import LocalServer, free_port

    started = time.monotonic()
    # Airflow logs every task transition at INFO; the demo's own report is the readable output.
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO" if args.verbose else "WARNING")
    home = configure_airflow()
    print(f"[1/6] Airflow metadata DB in {home}")
    migrate_db(home)

    root = data_root()
    print(
        f"[2/6] sample data: {args.keywords} keywords, {args.products} products over {len(args.dates)} dates "
        f"({args.lang}, {args.bad_rate:.0%} bad rows) -> {root}"
    )
    summary = generate(
        root,
        keywords=args.keywords,
        products=args.products,
        dates=args.dates,
        lang=args.lang,
        bad_rate=args.bad_rate,
        row_group_size=2000,
    )
    expected_dead = summary["tables"]["keywords"]["expected_dead_letters"]

    repository = args.model_repository.resolve()
    http_port, grpc_port = free_port(), free_port()
    os.environ.update(
        EMBEDDING_MODEL_REPOSITORY=str(repository),
        EMBEDDING_SERVER_HTTP_PORT=str(http_port),
        EMBEDDING_SERVER_GRPC_PORT=str(grpc_port),
    )
    logs = work_dir() / "logs"
    with ExitStack() as stack:
        print(f"[3/6] local inference server on http {http_port} / grpc {grpc_port} (log {logs})")
        stack.enter_context(
            LocalServer(
                repository, http_port, grpc_port, threads=args.threads, log_path=logs / "inference-server.log"
            )
        )
        if os.environ.get("ES_URL"):
            print("      Elasticsearch: ES_URL is set, using that cluster")
        else:
            from embedding_pipeline.es_emulator import EsEmulator

            es_dir = work_dir() / "es-emulator" / time.strftime("%Y%m%dT%H%M%S")
            es_dir.mkdir(parents=True, exist_ok=True)
            emulator = stack.enter_context(EsEmulator(es_dir))
            os.environ["ES_URL"] = emulator.url
            print(
                f"      Elasticsearch: no ES_URL, started the noida-db emulator at {emulator.url} "
                "(not a real ES; set ES_URL for a cluster)"
            )
        from embedding_pipeline.airflow_runner import run_dag

        print(f"[4/6] dag.test(embedding_model_publish): {args.source} ({args.precision}) -> {args.name}")
        _check(
            run_dag(
                "embedding_model_publish",
                {"model_source": args.source, "model_name": args.name, "precision": args.precision},
            ),
            "embedding_model_publish",
        )
        print(f"[5/6] dag.test(keyword_index) for dt={args.dates[0]}..{args.dates[-1]}")
        index_started = time.monotonic()
        run = run_dag(
            "keyword_index",
            {"dt": args.dates[0], "dt_end": args.dates[-1], "input_root": str(root), "model_name": args.name},
        )
        states = _check(run, "keyword_index")
        from embedding_pipeline.keyword_index import run_dir_for

        run_dir = run_dir_for("keyword_index", run.run_id)
        print(
            f"      {len(states)} task instances succeeded in {time.monotonic() - index_started:.0f}s; "
            f"report {run_dir / 'report.md'}"
        )
        print("      " + (run_dir / "report.md").read_text().replace("\n", "\n      ").rstrip())
        print(f"      the generator injected {expected_dead} bad rows to dead-letter (see _injected.json)")
        print("[6/6] nearest keywords by meaning (Qdrant) for a few queries:")
        _show_neighbours(args.name)
    print(f"done in {time.monotonic() - started:.0f}s; every process started here was stopped.")
    return 0


def _show_neighbours(model_name: str) -> None:
    from embedding_pipeline.embedding_client import EmbeddingClient
    from embedding_pipeline.qdrant_sink import open_client, search

    with EmbeddingClient(ServerSettings.from_env().with_overrides(model_name=model_name)) as client:
        vectors = client.embed(list(QUERIES), role="query").vectors
    with open_client() as qdrant:
        results = search(qdrant, "keywords", vectors, top_k=3)
    for query, hits in zip(QUERIES, results, strict=True):
        shown = ", ".join(f"{hit.payload.get('keyword')} ({hit.score:.2f})" for hit in hits)
        print(f"      {query!r}: {shown}")
