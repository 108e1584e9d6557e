"""Test data in partitions and what the stores hold: write keyword/product partitions, read every
stored keyword and list back, and compute the exact lists a from-scratch relink gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from embedding_pipeline.stages.products.options import LinkOptions


def write_keywords(root: Path, dt: str, rows: list[dict[str, Any]]) -> None:
    """One partition file of keyword rows (keyword_id, keyword, category[, deleted])."""
    path = root / "keywords" / f"dt={dt}" / "part-0.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {key: [row.get(key) for row in rows] for key in ("keyword_id", "keyword", "category")}
    table = pa.table(
        {
            "keyword_id": pa.array(columns["keyword_id"], pa.int64()),
            "keyword": pa.array(columns["keyword"], pa.string()),
            "category": pa.array(columns["category"], pa.string()),
        }
    )
    if any("deleted" in row for row in rows):
        table = table.append_column("deleted", pa.array([bool(row.get("deleted")) for row in rows]))
    pq.write_table(table, path)


def stored_keywords(alias: str) -> tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]]:
    """(Qdrant, ES): keyword_id -> (keyword, category) of every stored keyword."""
    from elasticsearch.helpers import scan
    from embedding_pipeline.stores.elasticsearch.client import open_es
    from embedding_pipeline.stores.qdrant.client import open_client
    from embedding_pipeline.stores.qdrant.search import iter_vectors

    with open_client() as qdrant:
        points = {
            str(p["keyword_id"]): (p["keyword"], p.get("category"))
            for _, payloads in iter_vectors(qdrant, alias, batch_size=256, with_payload=True)
            for p in payloads
        }
    with open_es() as es:
        es.indices.refresh(index=alias)
        docs = {
            hit["_id"]: (hit["_source"]["keyword"], hit["_source"].get("category"))
            for hit in scan(es, index=alias, query={"query": {"match_all": {}}})
        }
    return points, docs


def row(i: int, text: str | None = None, category: str = "food", **extra: Any) -> dict[str, Any]:
    return {"keyword_id": i, "keyword": text or f"keyword number {i}", "category": category, **extra}


def write_products(root: Path, dt: str, rows: list[dict[str, Any]]) -> None:
    """One partition file of product rows (product_id, product_name, category[, deleted])."""
    path = root / "products" / f"dt={dt}" / "part-0.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "product_id": pa.array([r["product_id"] for r in rows], pa.int64()),
            "product_name": pa.array([r.get("product_name") for r in rows], pa.string()),
            "category": pa.array([r.get("category") for r in rows], pa.string()),
        }
    )
    if any("deleted" in r for r in rows):
        table = table.append_column("deleted", pa.array([bool(r.get("deleted")) for r in rows]))
    pq.write_table(table, path)


def stored_lists(product_alias: str) -> dict[str, list[str]]:
    """product_id -> the keyword ids of its stored list, best first (ES)."""
    from elasticsearch.helpers import scan
    from embedding_pipeline.stores.elasticsearch.client import open_es

    with open_es() as es:
        if not es.indices.exists_alias(name=product_alias):
            return {}  # never linked
        es.indices.refresh(index=product_alias)
        return {
            hit["_id"]: [k["keyword_id"] for k in hit["_source"]["keywords"]]
            for hit in scan(es, index=product_alias, query={"query": {"match_all": {}}})
        }


Lists = dict[str, list[tuple[str, float]]]  # product_id -> (keyword_id, score), best first


def stored_links(product_alias: str) -> Lists:
    """product_id -> its stored (keyword_id, score) list, best first (ES)."""
    from elasticsearch.helpers import scan
    from embedding_pipeline.stores.elasticsearch.client import open_es

    with open_es() as es:
        es.indices.refresh(index=product_alias)
        return {
            hit["_id"]: [(k["keyword_id"], k["score"]) for k in hit["_source"]["keywords"]]
            for hit in scan(es, index=product_alias, query={"query": {"match_all": {}}})
        }


def assert_same_lists(
    got: dict[str, list[tuple[str, float]]], want: dict[str, list[tuple[str, float]]]
) -> None:
    """The same products with the same lists: scores equal within ``TIE``, keyword ids equal in
    order except within a run of near-equal scores (there, the same ids in any order)."""
    assert got.keys() == want.keys(), (len(got), len(want), sorted(got.keys() ^ want.keys())[:10])
    for product, expected in want.items():
        stored = got[product]
        assert np.allclose([s for _, s in stored], [s for _, s in expected], atol=TIE), (
            product,
            stored,
            expected,
        )
        groups: list[list[int]] = []
        for i, (_, score) in enumerate(expected):
            if groups and expected[groups[-1][-1]][1] - score <= TIE:
                groups[-1].append(i)
            else:
                groups.append([i])
        for group in groups:
            assert {stored[i][0] for i in group} == {expected[i][0] for i in group}, (
                product,
                stored,
                expected,
            )


# Scores closer than this are a tie: NumPy's float32 dot and the engine's may differ in the last
# bits, which moves a score across the linker's 6-decimal rounding and swaps two near-equal keywords.
TIE = 1e-5


def _ranked_like(ranked: list[tuple[float, str]], stored: list[str] | None, top_k: int) -> list[str]:
    """Keyword ids best first; within a run of near-equal scores (``TIE``), in ``stored``'s order
    when given (the linker's own tie order there cannot be recomputed bit for bit here)."""
    ranked = sorted(ranked, key=lambda item: (-round(item[0], 6), item[1]))
    if stored is None:
        return [kid for _, kid in ranked[:top_k]]
    position = {kid: i for i, kid in enumerate(stored)}
    ordered: list[str] = []
    group: list[tuple[float, str]] = []
    for item in [*ranked, (-np.inf, "")]:
        if group and group[-1][0] - item[0] > TIE:
            ordered += [
                kid for _, kid in sorted(group, key=lambda g: (position.get(g[1], len(position)), g[1]))
            ]
            group = []
        group.append(item)
    return ordered[:top_k]


def exact_lists(
    keyword_alias: str, product_alias: str, options: LinkOptions, like: dict[str, list[str]] | None = None
) -> dict[str, list[str]]:
    """What a from-scratch relink of every stored product against every stored keyword gives:
    brute force over the vectors both collections hold, the linker's filters, threshold and tie
    order (score rounded to 6 decimals, then keyword id). With ``like`` (the stored lists), near
    ties (``TIE``) keep the stored order, so only a real difference fails a comparison."""
    from embedding_pipeline.stores.qdrant.client import open_client
    from embedding_pipeline.stores.qdrant.collections import resolve_alias
    from embedding_pipeline.stores.qdrant.search import iter_vectors

    with open_client() as qdrant:
        if resolve_alias(qdrant, product_alias) is None:
            return {}  # never linked
        keywords = list(iter_vectors(qdrant, keyword_alias, batch_size=4096))
        products = list(iter_vectors(qdrant, product_alias, batch_size=4096))
    kw_vectors = np.concatenate([v for v, _ in keywords]) if keywords else np.zeros((0, 1))
    kw_payloads = [p for _, payloads in keywords for p in payloads]
    lists = {}
    for vectors, payloads in products:
        for vector, product in zip(vectors, payloads, strict=True):
            scores = kw_vectors @ vector
            ranked = []
            for score, keyword in zip(scores, kw_payloads, strict=True):
                if options.score_threshold is not None and score < options.score_threshold:
                    continue
                if any(
                    product.get(f) is not None and keyword.get(f) != product[f] for f in options.match_fields
                ):
                    continue
                ranked.append((float(score), str(keyword["keyword_id"])))
            product_id = str(product["product_id"])
            lists[product_id] = _ranked_like(ranked, (like or {}).get(product_id), options.top_k)
    return lists


def assert_keyword_run_balanced(report: dict[str, Any]) -> None:
    """A keyword_index report that is ``ok``, whose rows each end in one place per store (indexed,
    unchanged, deleted or dead-lettered at embed or at the store), with no store dead letters, and
    whose check of the written ids found Qdrant and Elasticsearch holding the same."""
    assert report["status"] == "ok" and report["problems"] == [], report["problems"]
    embed = report["embed"]
    for sink in ("qdrant", "es"):
        s = report["sinks"][sink]
        ended = s["indexed"] + embed["unchanged"] + s["deleted"] + s["dead_lettered"] + embed["dead_lettered"]
        assert ended == report["rows_read"], (sink, s)
        assert s["dead_lettered"] == 0, (sink, s["dead_letters_by_reason"])
    assert report["agreement"]["ok"], report["agreement"]
