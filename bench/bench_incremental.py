"""Incremental nightly runs vs the full first run, and what the state look-up costs.

1. Nights (``embedding_pipeline.local.inline_runner``: the stage functions in DAG order, in this
   process, against the real local server, the embedded Qdrant on disk and the ES emulator):
   night 1 indexes ``--keywords`` keywords and links ``--products`` products (snapshot
   partitions, MiniLM fp32); night 2 is the same snapshot again (0% changed); night 3 changes
   1% of the texts, deletes 0.5% and adds 1% new rows in both tables. Per night: wall time of
   both stages, rows embedded (must equal changed + new), rows deleted, stored products relinked.
2. A full rebuild (``mode=full``) of both stages from the night-3 snapshot into generation 2:
   wall time next to the nights, and the gate's numbers.
3. State look-up (why a ledger): matching one 50k-id chunk against the state of 1M ids (SQLite),
   next to retrieving 50k points by id from a 100k-point collection of the embedded Qdrant.
   ``bench_scale.py`` measures the ledger itself at 1M-10M ids.

Run: ``.venv/bin/python bench/bench_incremental.py`` (``--quick``: 4k keywords, 800 products).
Results: ``bench/results/incremental-<date>.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from harness import (
    BENCH_DIR,
    embedded_stores,
    md_table,
    pipeline_machine_info,
    publish,
    scratch_dir,
    write_results,
)

log = logging.getLogger("bench")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
DATES = ("2024-07-01", "2024-07-02", "2024-07-03")


def _night_three(table: pa.Table, id_column: str, text_column: str, seed: int) -> tuple[pa.Table, dict]:
    """1% of texts changed, 0.5% of rows dropped (deleted by the snapshot), 1% new rows."""
    rng = np.random.default_rng(seed)
    n = table.num_rows
    order = rng.permutation(n)
    changed, deleted = order[: n // 100], order[n // 100 : n // 100 + n // 200]
    texts = table.column(text_column).to_pylist()
    for i in changed:
        texts[i] = f"{texts[i]} 新"
    table = table.set_column(table.schema.get_field_index(text_column), text_column, pa.array(texts))
    keep = np.ones(n, dtype=bool)
    keep[deleted] = False
    table = table.filter(pa.array(keep))
    new = table.slice(0, n // 100)
    ids = pc.add(new.column(id_column), pa.scalar(10**12, new.schema.field(id_column).type))
    new = new.set_column(new.schema.get_field_index(id_column), id_column, ids)
    texts = [f"{t} 追加" for t in new.column(text_column).to_pylist()]
    new = new.set_column(new.schema.get_field_index(text_column), text_column, pa.array(texts))
    return pa.concat_tables([table, new], promote_options="permissive"), {
        "changed": len(changed),
        "deleted": len(deleted),
        "new": new.num_rows,
    }


def _nights(args: argparse.Namespace, scratch: Path, model_name: str) -> list[dict[str, Any]]:
    from embedding_pipeline.local.inline_runner import run_keywords, run_products
    from embedding_pipeline.runs.input_kinds import InputSpec
    from embedding_pipeline.runs.partitions import KEYWORDS, PRODUCTS
    from embedding_pipeline.sample.changes import current_rows
    from embedding_pipeline.sample.generate import generate
    from embedding_pipeline.stages.products.options import LinkOptions

    root = scratch / "data"
    generate(root, keywords=args.keywords, products=args.products, dates=[DATES[0]], seed=3, bad_rate=0.0)
    spec = InputSpec(kind="snapshot", max_delete_ratio=0.05)
    options = LinkOptions(top_k=args.top_k)
    expected: dict[str, dict] = {}
    nights = []
    for number, dt in enumerate(DATES, start=1):
        if number > 1:
            for table in (KEYWORDS, PRODUCTS):
                data = current_rows(root, table, [DATES[0]])
                if number == 3:
                    data, expected[table.name] = _night_three(
                        data, table.id_column, table.text_column, number
                    )
                path = root / table.name / f"dt={dt}" / "part-0.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(data, path)
        started = time.perf_counter()
        kw = run_keywords(root, [dt], scratch / "runs" / f"kw{number}", model_name, spec, "keywords")
        kw_s = time.perf_counter() - started
        pr = run_products(root, [dt], scratch / "runs" / f"pr{number}", model_name, spec, options)
        seconds = time.perf_counter() - started
        relink = pr.get("relink") or {"indexed": 0, "extra": {}}
        nights.append(
            {
                "night": number,
                "seconds": round(seconds, 1),
                "keyword_seconds": round(kw_s, 1),
                "product_seconds": round(seconds - kw_s, 1),
                "keywords_embedded": int(kw["embed"]["extra"]["embedded"]),
                "keywords_unchanged": kw["embed"]["unchanged"],
                "keywords_deleted": kw["embed"]["deleted"],
                "products_embedded": int(pr["embed"]["extra"]["embedded"]),
                "products_deleted": pr["embed"]["deleted"],
                "products_relinked": relink["indexed"],
                "relinked_lists_unchanged": int(relink["extra"].get("unchanged_lists", 0)),
                # per table: rows changed, deleted and new in this night's partitions
                "expected": expected.copy(),
            }
        )
        log.info("night %d: %s", number, nights[-1])
    return nights


def _full_rebuild(args: argparse.Namespace, scratch: Path, model_name: str) -> dict[str, Any]:
    """After the nights: a full rebuild of both stages from the latest snapshot into generation 2,
    gated (counts, shrink, model, canaries, link quality on 100 products) and swapped."""
    from embedding_pipeline.generations.rules import Publish
    from embedding_pipeline.local.inline_runner import run_keywords, run_products
    from embedding_pipeline.runs.input_kinds import InputSpec
    from embedding_pipeline.stages.products.options import LinkOptions

    root, spec, dt = scratch / "data", InputSpec(kind="snapshot"), DATES[-1]
    started = time.perf_counter()
    kw = run_keywords(root, [dt], scratch / "runs" / "kw-full", model_name, spec, "keywords", Publish())
    kw_s = time.perf_counter() - started
    options = LinkOptions(top_k=args.top_k)
    pr = run_products(root, [dt], scratch / "runs" / "pr-full", model_name, spec, options, publish=Publish())
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 1),
        "keyword_seconds": round(kw_s, 1),
        "product_seconds": round(seconds - kw_s, 1),
        "keywords_embedded": int(kw["embed"]["extra"]["embedded"]),
        "products_embedded": int(pr["embed"]["extra"]["embedded"]),
        "generations": {
            stage: {
                "status": report["generation"]["status"],
                "gate_seconds": report["generation"]["gate_seconds"],
                "swap_seconds": report["generation"]["swap_seconds"],
                "swapped": [
                    f"{m['store']} {m['from']} -> {m['to']}" for m in report["generation"]["swapped"]
                ],
                "checks": {c["name"]: c["detail"] for c in report["generation"]["checks"]},
            }
            for stage, report in (("keyword_index", kw), ("product_link", pr))
        },
    }


def _lookup(scratch: Path, state_ids: int, chunk_ids: int, qdrant_points: int) -> dict[str, Any]:
    """Seconds to match one chunk's ids against a state of ``state_ids`` ids (SQLite), and to
    retrieve the same number of ids from an embedded Qdrant collection of ``qdrant_points`` points."""
    from embedding_pipeline.runs.staging import point_id
    from embedding_pipeline.runs.state import IndexState, delta_table
    from embedding_pipeline.runs.state_db import StateSettings
    from embedding_pipeline.stores.qdrant.client import make_client
    from embedding_pipeline.stores.qdrant.settings import QdrantSettings
    from qdrant_client.http import models

    rng = np.random.default_rng(0)
    db = scratch / "state" / "lookup.db"
    state = IndexState.of(StateSettings(f"sqlite:///{db}", "bench"), "keywords", {"qdrant": "lookup"})
    started = time.perf_counter()
    rows = [(f"id-{i}", 20240701, int(i), int(i), False, "upsert") for i in range(state_ids)]
    state.commit(delta_table(rows), {"model_name": "m", "model_version": 1, "role": "passage"})
    commit_s = time.perf_counter() - started
    wanted = [f"id-{i}" for i in rng.choice(state_ids, chunk_ids, replace=False)]
    started = time.perf_counter()
    found = state.lookup(wanted)
    lookup_s = time.perf_counter() - started
    assert len(found) == chunk_ids

    settings = QdrantSettings.from_env(path=scratch / "qdrant-lookup")
    client = make_client(settings)
    client.create_collection(
        "c", vectors_config=models.VectorParams(size=384, distance=models.Distance.COSINE)
    )
    for start in range(0, qdrant_points, 2000):
        ids = range(start, min(start + 2000, qdrant_points))
        client.upsert(
            "c",
            points=[
                models.PointStruct(
                    id=point_id("keyword", str(i)),
                    vector=rng.standard_normal(384).tolist(),
                    payload={"content_hash": "x" * 64},
                )
                for i in ids
            ],
            wait=True,
        )
    wanted_points = [point_id("keyword", str(i)) for i in rng.choice(qdrant_points, chunk_ids, replace=False)]
    started = time.perf_counter()
    for start in range(0, chunk_ids, 1000):
        client.retrieve("c", ids=wanted_points[start : start + 1000], with_payload=["content_hash"])
    retrieve_s = time.perf_counter() - started
    client.close()
    return {
        "state_ids": state_ids,
        "chunk_ids": chunk_ids,
        "state_file_mb": round(db.stat().st_size / 2**20, 1),
        "state_commit_s": round(commit_s, 2),
        "state_lookup_s": round(lookup_s, 2),
        "qdrant_points": qdrant_points,
        "qdrant_retrieve_s": round(retrieve_s, 2),
        "qdrant_engine": settings.local_engine,
    }


def markdown(report: dict[str, Any]) -> str:
    first = report["nights"][0]
    full = first["seconds"]
    rows = []
    for night in report["nights"]:
        kw, pr = (night["expected"].get(t, {"changed": 0, "new": 0}) for t in ("keywords", "products"))
        full_run = night["night"] == 1
        rows.append(
            [
                night["night"],
                night["seconds"],
                f"{night['seconds'] / full:.1%}",
                f"{night['keyword_seconds']} ({night['keyword_seconds'] / first['keyword_seconds']:.1%})",
                f"{night['product_seconds']} ({night['product_seconds'] / first['product_seconds']:.1%})",
                f"{night['keywords_embedded']} / {'-' if full_run else kw['changed'] + kw['new']}",
                night["keywords_deleted"],
                f"{night['products_embedded']} / {'-' if full_run else pr['changed'] + pr['new']}",
                night["products_deleted"],
                night["products_relinked"],
                night["relinked_lists_unchanged"],
            ]
        )
    lookup = report["lookup"]
    machine = report["machine"]
    lines = [
        f"# Incremental nightly runs ({report['date']})",
        "",
        f"{report['keywords']} keywords, {report['products']} products, MiniLM fp32, "
        f"top_k {report['top_k']}; snapshot partitions; embedded Qdrant ({report['qdrant_engine']}) "
        "on disk, ES emulator, "
        "local inference server. "
        f"{machine['cpu_count']} x {machine['cpu_model']}.",
        "",
        *md_table(
            [
                "night",
                "wall s",
                "vs full",
                "keyword stage s",
                "product stage s",
                "keywords embedded / changed+new",
                "keywords deleted",
                "products embedded / changed+new",
                "products deleted",
                "stored products relinked",
                "relinked, list unchanged",
            ],
            rows,
            "rrrrrrrrrrr",
        ),
        "",
        "Night 1: full first run. Night 2: the same snapshot (0% changed). Night 3: 1% of texts "
        "changed, 0.5% deleted, 1% new in both tables.",
        "",
        f"State look-up: {lookup['chunk_ids']} ids against a state of {lookup['state_ids']} ids "
        f"({lookup['state_file_mb']} MB SQLite): {lookup['state_lookup_s']} s (commit of the whole "
        f"state {lookup['state_commit_s']} s). The same number of ids retrieved from a collection of "
        f"{lookup['qdrant_points']} points in the embedded Qdrant ({lookup['qdrant_engine']}): "
        f"{lookup['qdrant_retrieve_s']} s.",
    ]
    rebuild = report.get("full_rebuild")
    if rebuild:
        lines += [
            "",
            f"Full rebuild into generation 2 (mode=full, the night-3 snapshot, gated and swapped): "
            f"{rebuild['seconds']} s = {rebuild['seconds'] / full:.1%} of night 1 (keyword stage "
            f"{rebuild['keyword_seconds']} s, product stage {rebuild['product_seconds']} s; "
            f"{rebuild['keywords_embedded']} keywords and {rebuild['products_embedded']} products "
            "embedded). Gate and swap:",
            "",
        ]
        for stage, outcome in rebuild["generations"].items():
            checks = "; ".join(f"{name}: {detail}" for name, detail in outcome["checks"].items())
            lines.append(
                f"- {stage}: **{outcome['status']}** ({', '.join(outcome['swapped'])}); gate "
                f"{outcome['gate_seconds']} s, swap {outcome['swap_seconds']} s. {checks}"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keywords", type=int, default=100_000)
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--top-k", type=int, default=30)
    parser.add_argument("--state-ids", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="4k keywords, 800 products, 100k-id state")
    parser.add_argument("--keep-work", action="store_true")
    parser.add_argument("--output", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args()
    if args.quick:
        args.keywords, args.products, args.state_ids = 4000, 800, 100_000
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from embedding_pipeline.serving.process import LocalServer
    from embedding_pipeline.stores.qdrant.settings import QdrantSettings

    with scratch_dir(args.keep_work, "bench-incremental-") as scratch, ExitStack() as stack:
        os.environ["EMBEDDING_PIPELINE_HOME"] = str(scratch / "work")
        repository = scratch / "model_repository"
        os.environ["EMBEDDING_MODEL_REPOSITORY"] = str(repository)
        published = publish("minilm", repository, scratch)
        server = stack.enter_context(
            LocalServer(repository, threads=2, log_path=scratch / "server.log", models=[published["name"]])
        )
        embedded_stores(stack, scratch, server)
        nights = _nights(args, scratch, published["name"])
        full_rebuild = _full_rebuild(args, scratch, published["name"])
        lookup = _lookup(
            scratch, args.state_ids, min(50_000, args.state_ids // 2), min(100_000, args.state_ids)
        )
    report = {
        "date": datetime.now(UTC).date().isoformat(),
        "keywords": args.keywords,
        "products": args.products,
        "top_k": args.top_k,
        "machine": pipeline_machine_info(),
        "qdrant_engine": QdrantSettings.from_env().local_engine,  # the nights' and the rebuild's
        "nights": nights,
        "full_rebuild": full_rebuild,
        "lookup": lookup,
    }
    write_results(args.output, "incremental", args.quick, report, markdown)


if __name__ == "__main__":
    main()
