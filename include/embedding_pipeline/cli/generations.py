"""``generations``, ``rebuild`` and ``rollback``: the blue/green lifecycle from the command line.

embedding-pipeline generations               every generation of every alias: live, served, model, count
embedding-pipeline rebuild --dt 2024-01-03   embedding_chain with mode=full through Airflow (dag.test)
embedding-pipeline rollback [--stage all]    every alias back to the previous generation that served

With nothing configured, the services are found or started as for the search commands (the ES
emulator on its persistent data, the local inference server) and stopped afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from embedding_pipeline.cli.format import format_table
from embedding_pipeline.cli.services import local_services
from embedding_pipeline.errors import PipelineError
from embedding_pipeline.settings import data_root
from embedding_pipeline.stages.names import KEYWORD_ALIAS, PRODUCT_ALIAS, STAGES

REBUILD_DAGS = ("embedding_chain", *STAGES)


def _by_stage(args: argparse.Namespace) -> dict[str, Any]:
    from embedding_pipeline.stages.names import stage_aliases

    return stage_aliases(args.keyword_alias, args.keyword_alias, args.product_alias)


def _generations(args: argparse.Namespace) -> int:
    from embedding_pipeline.generations.lifecycle import describe
    from embedding_pipeline.stores.registry import open_stores

    with local_services(need_es=True), open_stores() as stores:
        rows = [row for aliases in _by_stage(args).values() for row in describe(stores, aliases)]
    if not rows:
        print("no generations yet: run the chain (make demo) first")
        return 0
    table = [
        [
            r["store"],
            str(r["generation"]),
            r["name"],
            "live" if r["live"] else "",
            (r["promoted_at"] or "never")[:19],
            r["model"],
            str(r["count"]),
        ]
        for r in rows
    ]
    headers = ["store:alias", "gen", "name", "live", "served since", "model", "count"]
    print("\n".join(format_table(headers, table, right=frozenset({1, 6}))))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from embedding_pipeline.generations.lifecycle import rollback_stage
    from embedding_pipeline.stores.registry import open_stores

    with local_services(need_es=True), open_stores() as stores:
        moves = rollback_stage(stores, args.stage, _by_stage(args))
    for move in moves:
        print(f"{move['store']}: {move['from']} -> {move['to']}")
    print(
        "Rolled back. The restored generation misses the nights written since it last served: "
        "re-run those dates (incremental, idempotent) to bring it up to date."
    )
    return 0


def _rebuild(args: argparse.Namespace) -> int:
    from embedding_pipeline.local.airflow_runner import configure_airflow, migrate_db, run_dag_in_child
    from embedding_pipeline.runs.plan import run_dir_for

    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    migrate_db(configure_airflow())
    conf: dict[str, Any] = {
        "mode": "full",
        "dt": args.dt,
        "input_root": str(args.input_root),
        "input_kind": args.input_kind,
        "model_name": args.model,
        "keep_generations": args.keep,
    }
    conf["qdrant_alias"] = args.keyword_alias  # the keyword collection: written, or searched by links
    if args.dag != "product_link":
        conf["es_alias"] = args.keyword_alias
    if args.dag != "keyword_index":
        conf["product_alias"] = args.product_alias
    if args.dag == "embedding_chain":
        conf["publish_model"] = "if_missing"
    with local_services(need_es=True, need_server=True):
        run = run_dag_in_child(args.dag, conf)
    stages = STAGES if args.dag == "embedding_chain" else (args.dag,)
    for stage in stages:
        report_path = Path(str(run_dir_for(run.dag_id, run.run_id, stage))) / "report.json"
        if report_path.exists():
            section = json.loads(report_path.read_text()).get("generation") or {}
            moved = ", ".join(f"{m['store']} {m['from']} -> {m['to']}" for m in section.get("swapped", []))
            print(f"{stage}: generation {section.get('generation')} {section.get('status')}; {moved}")
            print(f"  report: {report_path.with_suffix('.md')}")
    if run.state != "success":
        raise PipelineError(f"{run.dag_id} did not succeed: {run.failed_tasks}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    def alias_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--keyword-alias", default=KEYWORD_ALIAS, help="keyword alias (Qdrant and ES)")
        p.add_argument("--product-alias", default=PRODUCT_ALIAS, help="product alias (Qdrant and ES)")

    p = subparsers.add_parser("generations", help="list every generation of the keyword and product aliases")
    alias_args(p)
    p.set_defaults(func=_generations)

    p = subparsers.add_parser("rollback", help="point every alias back at the previous generation")
    alias_args(p)
    p.add_argument("--stage", choices=["all", *STAGES], default="all")
    p.set_defaults(func=_rollback)

    p = subparsers.add_parser("rebuild", help="full rebuild into a new generation, gated, then swapped")
    alias_args(p)
    p.add_argument("--dt", required=True, help="last partition replayed (YYYY-MM-DD)")
    p.add_argument("--dag", choices=REBUILD_DAGS, default="embedding_chain")
    p.add_argument("--input-root", type=Path, default=data_root())
    p.add_argument("--input-kind", choices=["delta", "snapshot"], default="delta")
    p.add_argument("--model", default="minilm", help="published model to embed with (a migration: another)")
    p.add_argument("--keep", type=int, default=2, help="generations kept after the swap")
    p.set_defaults(func=_rebuild)
