"""The main job: the whole chain on one machine, through Airflow, on embedded defaults.

sample data -> services (local inference server; Elasticsearch: ``ES_URL`` if set, else the
noida-db emulator) -> ``dag.test()`` of ``embedding_chain`` (model publish -> keyword index ->
product link) -> a short report: rows per stage, dead letters, throughput, and a few products with
their top keywords read back from Elasticsearch. Every process started here is stopped here, also
on failure, Ctrl-C or SIGTERM (:class:`LocalServices` stops them by PID; the chain runs in a child
process that an interrupt kills at once, :func:`airflow_runner.run_dag_in_child`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from embedding_pipeline.errors import PipelineError
from embedding_pipeline.local.airflow_runner import RunOutcome
from embedding_pipeline.settings import data_root
from embedding_pipeline.stages.names import STAGES

# --lang -> (source, name, precision) when --source is not given. Japanese: multilingual-e5-small
# (an English model reads most Japanese as [UNK]). fp32, not int8: int8 passes its parity gate and
# embeds ~1.6x faster, but ONNX Runtime's dynamic quantisation scales activations per batch, so a
# text's vector depends on the texts batched with it (cosine 0.998 alone vs in a batch of 64; fp32:
# 0.9999994) - and stored lists could then not be re-checked exactly. English: MiniLM (measured in
# bench/results/link-relevance-*.md).
DEMO_MODELS = {"ja": ("me5-small", "me5_small", "fp32"), "en": ("minilm", "minilm", "fp32")}
SHOWN_PRODUCTS = 3
SCORED_PRODUCTS = 200  # products whose lists are scored against the sample's labels
SHOWN_KEYWORDS = 5


def _check(outcome: RunOutcome) -> None:
    if outcome.state != "success":
        raise PipelineError(
            f"{outcome.dag_id} did not succeed: {outcome.failed_tasks} "
            f"(logs: AIRFLOW_HOME={os.environ['AIRFLOW_HOME']})"
        )


def run_demo(args: argparse.Namespace) -> int:
    from embedding_pipeline.local.airflow_runner import configure_airflow, migrate_db
    from embedding_pipeline.local.services import LocalServices
    from embedding_pipeline.sample.generate import generate

    started = time.monotonic()
    source, name, precision = DEMO_MODELS[args.lang]
    if args.source is not None and args.source != source:  # another model: its own name, fp32
        name, precision = "model", "fp32"
    args.source = args.source or source
    args.name = args.name or name
    args.precision = args.precision or precision
    # Airflow logs every task transition at INFO; the demo's own report is the readable output.
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO" if args.verbose else "WARNING")
    if not args.verbose:
        # dag.test() logs "XCom not found offset=N" at ERROR each time a task reads a mapped task's
        # results: Airflow probing the end of the lazy list, not a failure. A real failure still
        # fails its task, and the demo names the failed tasks and where their logs are.
        # dag.test() also warns "No tasks to run. unrunnable tasks: {...}" each time it polls while
        # mapped tasks wait for their upstream: a wall of task names, not a problem.
        os.environ.setdefault(
            "AIRFLOW__LOGGING__NAMESPACE_LEVELS",
            "airflow.sdk.api.client=CRITICAL airflow.sdk.definitions.dag=ERROR",
        )
        # transformers draws a "Loading weights" progress bar each time export and the gate load the model.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
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
    injected = {
        table: summary["tables"][table]["expected_dead_letters"] for table in ("keywords", "products")
    }

    repository = args.model_repository.resolve()
    os.environ["EMBEDDING_MODEL_REPOSITORY"] = str(repository)
    print("[3/6] services (Elasticsearch: ES_URL if set, else the noida-db emulator - not a real ES)")
    with LocalServices(
        model_repository=repository,
        ports="free",
        report=lambda line: print(f"      {line}"),
        server_threads=args.threads,
    ):
        from embedding_pipeline.local.airflow_runner import run_dag_in_child

        print(
            f"[4/6] dag.test(embedding_chain) dt={args.dates[0]}..{args.dates[-1]}: publish {args.source} "
            f"({args.precision}) as {args.name} -> keyword_index -> product_link"
        )
        chain_started = time.monotonic()
        run = run_dag_in_child(
            "embedding_chain",
            {
                "publish_model": "always",
                "model_source": args.source,
                "model_name": args.name,
                "precision": args.precision,
                "dt": args.dates[0],
                "dt_end": args.dates[-1],
                "input_root": str(root),
                "top_k": args.top_k,
            },
        )
        _check(run)
        ran = sum(state == "success" for state in run.task_states.values())
        print(f"      {ran} task instances succeeded in {time.monotonic() - chain_started:.0f}s")
        print("[5/6] report")
        _print_reports(run, injected)
        _show_products(args.top_k)
        _incremental_night(args, root)
    print(f"done in {time.monotonic() - started:.0f}s; every process started here was stopped.")
    return 0


def _print_reports(run: RunOutcome, injected: dict[str, int]) -> None:
    from embedding_pipeline.runs.plan import run_dir_for

    for stage, table in zip(STAGES, ("keywords", "products"), strict=True):
        run_dir = run_dir_for(run.dag_id, run.run_id, stage)
        report = json.loads((Path(str(run_dir)) / "report.json").read_text())
        print(
            f"      {stage}: {report['rows_read']} rows read, status {report['status']} ({run_dir}/report.md)"
        )
        embed = report["embed"]
        for name, part in [("embed", embed), *report["sinks"].items()]:
            rate = part["rows_per_task_second"]
            print(
                f"        {name:<8} {part['indexed']:>7} ok  {part['dead_lettered']:>5} dead letters  "
                f"{rate if rate is not None else '-':>8} rows/task-s"
            )
        reasons: dict[str, int] = dict(embed["dead_letters_by_reason"])
        for sink in report["sinks"].values():
            for reason, count in sink["dead_letters_by_reason"].items():
                reasons[reason] = reasons.get(reason, 0) + count
        shown = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "none"
        print(f"        dead letters by reason: {shown} (the generator injected {injected[table]})")
        link = report["sinks"].get("link")
        if link:
            extra = link["extra"]
            print(
                f"        {int(extra.get('keywords_linked', 0))} keyword links, "
                f"{int(extra.get('empty_links', 0))} products without a keyword, "
                f"{int(extra.get('superseded', 0))} superseded by a later dt"
            )


def _incremental_night(args: argparse.Namespace, root: Path) -> None:
    """A fourth date with a few changed, deleted and new keywords and products, run incrementally:
    only what changed is embedded and written, and the stored products whose lists the keyword
    changes reach are relinked."""
    from datetime import date, timedelta

    from embedding_pipeline.local.airflow_runner import run_dag_in_child
    from embedding_pipeline.runs.partitions import KEYWORDS, PRODUCTS
    from embedding_pipeline.runs.plan import run_dir_for
    from embedding_pipeline.sample.changes import write_night

    dt = (date.fromisoformat(max(args.dates)) + timedelta(days=1)).isoformat()
    keywords = max(3, args.keywords // 100)
    products = max(3, args.products // 100)
    made = {
        "keywords": write_night(root, KEYWORDS, args.dates, dt, (keywords, keywords // 2, keywords), seed=1),
        "products": write_night(root, PRODUCTS, args.dates, dt, (products, products // 2, products), seed=2),
    }
    print(
        f"[6/6] a fourth night dt={dt}, incremental (input_kind=delta, tombstone_column=deleted): "
        + "; ".join(
            f"{t}: {m['changed']} changed, {m['deleted']} deleted, {m['new']} new" for t, m in made.items()
        )
    )
    started = time.monotonic()
    run = run_dag_in_child(
        "embedding_chain",
        {
            "publish_model": "never",
            "model_name": args.name,
            "dt": dt,
            "input_root": str(root),
            "top_k": args.top_k,
            "tombstone_column": "deleted",
            "max_delete_ratio": 0.05,
        },
    )
    _check(run)
    print(f"      done in {time.monotonic() - started:.0f}s")
    for stage in STAGES:
        report = json.loads(
            (Path(str(run_dir_for(run.dag_id, run.run_id, stage))) / "report.json").read_text()
        )
        embed, extra = report["embed"], report["embed"]["extra"]
        print(
            f"      {stage}: {report['rows_read']} rows read: embedded {int(extra.get('embedded', 0))}, "
            f"fields only {int(extra.get('fields_updated', 0))}, unchanged {embed['unchanged']}, "
            f"deleted {embed['deleted']} (of {report.get('live_before', 0)} stored)"
        )
        relink = report.get("relink")
        if relink:
            print(
                f"        relinked {relink['indexed']} stored products ({report.get('relink_reason')}), "
                f"{int(relink['extra'].get('unchanged_lists', 0))} lists unchanged, "
                f"{int(relink['extra'].get('dropped_deleted_keywords', 0))} deleted keywords dropped"
            )


def _show_products(top_k: int) -> None:
    from embedding_pipeline.cli.search import show_product
    from embedding_pipeline.stages.names import PRODUCT_ALIAS
    from embedding_pipeline.stages.products.relevance import score_lists, stored_lists
    from embedding_pipeline.stores.elasticsearch.client import open_es
    from embedding_pipeline.stores.elasticsearch.indices import refresh
    from embedding_pipeline.stores.elasticsearch.read import sample_documents

    print(
        f"      {SHOWN_PRODUCTS} products, top {SHOWN_KEYWORDS} of their {top_k} keywords, read back from ES:"
    )
    with open_es() as es:
        refresh(es, PRODUCT_ALIAS)
        for doc in sample_documents(es, PRODUCT_ALIAS, SHOWN_PRODUCTS, seed=0, id_field="product_id"):
            text = show_product(es, str(doc["product_id"]), alias=PRODUCT_ALIAS, top=SHOWN_KEYWORDS)
            print("        " + text.replace("\n", "\n        "))
        scored = score_lists(
            stored_lists(sample_documents(es, PRODUCT_ALIAS, SCORED_PRODUCTS, seed=0, id_field="product_id")),
            data_root(),
        )
    print(
        f"      links against the generator's relevance labels ({scored.products} products): "
        f"nDCG@10 {scored.ndcg:.3f}, precision@10 {scored.precision:.3f}, MRR {scored.mrr:.3f}"
    )
    print(
        "      look further: embedding-pipeline search text|meaning|product|keyword ...,"
        " embedding-pipeline quality"
    )
