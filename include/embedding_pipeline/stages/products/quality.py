"""Linking quality: how much of the exact nearest-keyword list each stored product document holds.

The product link stage stores, per product, the top-K keywords Qdrant returned for its name. Qdrant
local mode searches exhaustively, so there the stored lists are exact; a Qdrant server searches an
HNSW graph and may miss neighbours. This check measures what that costs. For a reproducible sample
of stored product documents it re-embeds each product name as the link stage did (model and role
recorded in the document), computes the exact top-K by brute force over every keyword vector of
the collection under the same score threshold and filters (recorded in the document's ``link``),
and reports recall@K = mean over products of |stored ∩ exact| / |exact|.

Memory stays flat in the number of keywords: vectors are streamed from Qdrant in blocks
(:func:`~embedding_pipeline.stores.qdrant.search.iter_vectors`) and only a running top-K per sampled product
is kept, never the keyword set.

Scores here and in Qdrant differ by float rounding (and a re-embedded name by a little more), so
boundaries get a tolerance of :data:`SCORE_TOLERANCE`: a stored keyword scoring within it of the
K-th exact score is a tie, not a miss, and an exact keyword within it of the score threshold that
was not stored is not a miss either.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from elasticsearch import Elasticsearch
from qdrant_client.client_base import QdrantBase
from qdrant_client.http import models

from embedding_pipeline.errors import PipelineError
from embedding_pipeline.model.registry import ROLES, Role
from embedding_pipeline.serving.client import EmbeddingClient
from embedding_pipeline.stages.names import KEYWORD_ALIAS, PRODUCT_ALIAS
from embedding_pipeline.stages.products.documents import search_setting
from embedding_pipeline.stages.products.fusion import TIE_MARGIN, best, rrf
from embedding_pipeline.stages.products.options import keyword_conditions
from embedding_pipeline.stores.elasticsearch.read import sample_documents
from embedding_pipeline.stores.qdrant.collections import (
    CollectionTarget,
    check_model,
    collection_target_retrying,
)
from embedding_pipeline.stores.qdrant.search import iter_vectors

SCORE_TOLERANCE = 1e-6
# Scores held per streamed block (products x keywords, float32: ~32 MB): the block size adapts to the
# sample, because large blocks amortise each scroll request (local mode's scroll re-sorts every id).
SCAN_CELLS = 8_000_000
SCAN_BATCH_LIMITS = (256, 8192)
MISSED_EXAMPLES = 3
RENDERED_PRODUCTS = 10
_SCALARS = (str, int, float, bool)


class LinkQualityError(PipelineError):
    """The stored links cannot be checked as asked (other model, other collection, bad ``link``)."""


@dataclass(frozen=True)
class LinkSpec:
    """How one stored list was made: the product document's ``link`` object, parsed."""

    top_k: int
    score_threshold: float | None
    match_fields: tuple[str, ...]
    keyword_filter: Mapping[str, frozenset[Any]]
    role: Role | None
    keyword_collection: str | None
    # How the list was ranked (stages.products.fusion); documents linked before link modes are dense.
    mode: str = "dense"
    dense_weight: float = 1.0
    lexical_weight: float = 1.0
    rrf_k: int = 60
    fusion_depth: int = 0
    keyword_index: str | None = None  # the Elasticsearch keyword alias a fused list searched

    @property
    def scan_depth(self) -> int:
        """Exact dense hits the recomputation needs: a hybrid list fused ``fusion_depth`` of them."""
        return {"dense": self.top_k, "hybrid": self.fusion_depth, "lexical": 1}[self.mode]

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> LinkSpec:
        link = doc.get("link") or {}
        where = f"product {doc.get('product_id')!r}"
        try:
            top_k = int(link["top_k"])
        except (KeyError, TypeError, ValueError):
            raise LinkQualityError(f"{where} has no usable link.top_k ({link.get('top_k')!r})") from None
        raw_filter = link.get("keyword_filter") or "{}"
        try:
            parsed = json.loads(raw_filter) if isinstance(raw_filter, str) else raw_filter
        except json.JSONDecodeError as exc:
            raise LinkQualityError(
                f"{where}: link.keyword_filter is not JSON ({exc}): {raw_filter!r}"
            ) from None
        if not isinstance(parsed, dict):
            raise LinkQualityError(f"{where}: link.keyword_filter must be a JSON object, got {raw_filter!r}")
        threshold, role = link.get("score_threshold"), link.get("role")
        if role == "none":  # how the link stage records "no prefix"
            role = None
        if role is not None and role not in ROLES:
            raise LinkQualityError(f"{where}: link.role {role!r} is not one of {ROLES}")
        return cls(
            top_k=top_k,
            score_threshold=None if threshold is None else float(threshold),
            match_fields=tuple(link.get("match_fields") or ()),
            keyword_filter={
                key: frozenset(value if isinstance(value, list) else [value]) for key, value in parsed.items()
            },
            role=role,
            keyword_collection=link.get("keyword_collection"),
            **_fusion(link, where, top_k),
        )


def _fusion(link: Mapping[str, Any], where: str, top_k: int) -> dict[str, Any]:
    mode = link.get("mode", "dense")
    if mode not in ("dense", "hybrid", "lexical"):
        raise LinkQualityError(f"{where}: link.mode {mode!r} is not dense, hybrid or lexical")
    if mode == "dense":
        return {}
    try:
        return {
            "mode": mode,
            "dense_weight": float(link.get("dense_weight", 0.0)),
            "lexical_weight": float(link.get("lexical_weight", 1.0)),
            "rrf_k": int(link["rrf_k"]),
            "fusion_depth": int(link.get("fusion_depth") or top_k),
            "keyword_index": link.get("keyword_index"),
        }
    except (KeyError, TypeError, ValueError):
        raise LinkQualityError(f"{where}: link of mode {mode} lacks usable rrf_k / fusion_depth") from None


@dataclass(frozen=True)
class MissedKeyword:
    """An exact neighbour the stored list lacks."""

    keyword_id: str
    keyword: str
    score: float


@dataclass(frozen=True)
class ProductRecall:
    """One product whose stored list is not the exact one."""

    product_id: str
    product_name: str
    recall: float
    found: int
    expected: int
    not_exact: int  # stored keywords that the exact list (with its filters) does not hold
    missed: tuple[MissedKeyword, ...]


@dataclass(frozen=True)
class QualityReport:
    """What the check measured; ``below`` lists the products with recall < 1, worst first."""

    sample_size: int
    seed: int
    ks: tuple[int, ...]  # the K values checked: one, unless products were linked with different top_k
    recall_mean: float
    recall_min: float
    below: tuple[ProductRecall, ...]
    keywords_scanned: int
    keyword_collection: str
    model: str
    # Largest |stored score - exact score| of a right keyword: ~1e-6 is float noise; more means the
    # names or vectors were embedded differently than at link time.
    max_score_drift: float
    seconds: float
    embed_seconds: float
    scan_seconds: float
    # How the sampled lists were searched (the document's link.hnsw_ef / link.exact): "hnsw_ef 128",
    # "exact", "server default" -> products. Local mode is exact whatever was asked.
    searched_with: Mapping[str, int] = field(default_factory=dict)


def _matches(value: Any, allowed: frozenset[Any]) -> bool:
    """Qdrant's match semantics: the payload value, or any element of an array payload, is allowed."""
    if isinstance(value, list):
        return any(isinstance(v, _SCALARS) and v in allowed for v in value)
    return isinstance(value, _SCALARS) and value in allowed


class _RunningTopK:
    """The best ``k`` eligible keywords per product seen so far, merged block by block."""

    def __init__(self, products: int, k: int) -> None:
        self.scores = np.full((products, k), -np.inf, dtype=np.float32)
        self.ids = np.full((products, k), None, dtype=object)
        self.texts = np.full((products, k), None, dtype=object)

    def merge(self, scores: np.ndarray, ids: np.ndarray, texts: np.ndarray) -> None:
        """Fold in one block: ``scores`` [products, block] (-inf = not eligible), ``ids``/``texts`` [block].

        The block's own top-k is taken first on plain floats, so only 2k candidates per product
        reach the (slower) object arrays.
        """
        k = self.scores.shape[1]
        rows = np.arange(len(scores))[:, None]
        if scores.shape[1] > k:
            columns = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            scores = scores[rows, columns]
        else:
            columns = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
        all_scores = np.concatenate([self.scores, scores], axis=1)
        all_ids = np.concatenate([self.ids, ids[columns]], axis=1)
        all_texts = np.concatenate([self.texts, texts[columns]], axis=1)
        keep = np.argpartition(-all_scores, k - 1, axis=1)[:, :k]
        self.scores, self.ids, self.texts = all_scores[rows, keep], all_ids[rows, keep], all_texts[rows, keep]

    def ranked(self, row: int, k: int) -> list[tuple[str, str, float]]:
        """(keyword_id, keyword, score) of the best ``k`` eligible keywords of one product, best first."""
        order = np.argsort(-self.scores[row], kind="stable")[:k]
        return [
            (str(self.ids[row, i]), str(self.texts[row, i]), float(self.scores[row, i]))
            for i in order
            if np.isfinite(self.scores[row, i])
        ]


class _Sample:
    """The sampled documents, their link specs and stored lists, and the per-block eligibility mask."""

    def __init__(
        self, docs: Sequence[Mapping[str, Any]], specs: Sequence[LinkSpec], ks: Sequence[int]
    ) -> None:
        self.docs, self.specs, self.ks = docs, specs, ks
        self.thresholds = np.array(
            [-np.inf if s.score_threshold is None else s.score_threshold for s in specs], dtype=np.float32
        )
        self.stored: list[dict[str, float]] = []  # per product: stored keyword_id -> stored score
        self.rows_of_stored: dict[str, list[int]] = defaultdict(list)
        for row, (doc, k) in enumerate(zip(docs, ks, strict=True)):
            entries = sorted(doc.get("keywords") or [], key=lambda e: e.get("rank", 0))[:k]
            stored = {str(e["keyword_id"]): float(e.get("score", np.nan)) for e in entries}
            self.stored.append(stored)
            for keyword_id in stored:
                self.rows_of_stored[keyword_id].append(row)
        # As the link stage builds its filters: the static keyword_filter, where a matched field with a
        # value replaces the static condition on that field (it does not AND with it). Products with
        # the same static part share one mask computation per block.
        self.filter_groups: dict[frozenset[tuple[str, frozenset[Any]]], list[int]] = defaultdict(list)
        # (field, the product's value) -> products whose match_fields ask for it
        self.match_groups: dict[tuple[str, Any], list[int]] = defaultdict(list)
        for row, (doc, spec) in enumerate(zip(docs, specs, strict=True)):
            matched = {f for f in spec.match_fields if doc.get(f) is not None}
            static = frozenset((f, v) for f, v in spec.keyword_filter.items() if f not in matched)
            if static:
                self.filter_groups[static].append(row)
            for field_name in matched:
                self.match_groups[(field_name, doc[field_name])].append(row)

    @property
    def payload_fields(self) -> list[str]:
        wanted = {"keyword_id", "keyword"}
        for spec in self.specs:
            wanted.update(spec.match_fields, spec.keyword_filter)
        return sorted(wanted)

    def filter_mask(self, payloads: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """[products, block] True where the keyword passes the product's filters (threshold aside)."""
        mask = np.ones((len(self.docs), len(payloads)), dtype=bool)
        for static, rows in self.filter_groups.items():
            ok = np.array(
                [all(_matches(p.get(f), allowed) for f, allowed in static) for p in payloads], dtype=bool
            )
            mask[rows] &= ok
        for (field_name, value), rows in self.match_groups.items():
            allowed = frozenset([value])
            mask[rows] &= np.array([_matches(p.get(field_name), allowed) for p in payloads], dtype=bool)
        return mask


def _check_models(
    docs: Sequence[Mapping[str, Any]], source: tuple[str, str, int], target: CollectionTarget, what: str
) -> str:
    """Refuse to compare vectors of different models; the queries' model (``source``: name,
    version, dim of the client or the product collection), as ``name vN``."""
    name, version, dim = source
    ours = f"{name} v{version}"
    others = sorted(
        {
            f"{d.get('model_name')} v{d.get('model_version')}"
            for d in docs
            if (str(d.get("model_name")), str(d.get("model_version"))) != (name, version)
        }
    )
    if others:
        raise LinkQualityError(
            f"the sampled product documents were linked with {', '.join(others)}, but {what} "
            f"holds {ours}: vectors of another model cannot reproduce their lists. Check with the "
            "model they were linked with (e.g. --model), or re-link the products first"
        )
    check_model(
        target,
        dim=dim,
        model_name=name,
        model_version=version,
        distance=models.Distance.COSINE,  # the check computes cosine
        what=f"{what}'s model for {target.alias!r}",
    )
    return ours


def _check_collection(docs: Sequence[Mapping[str, Any]], specs: Sequence[LinkSpec], target_name: str) -> None:
    recorded = sorted({s.keyword_collection for s in specs if s.keyword_collection != target_name}, key=str)
    if recorded:
        example = next(
            d.get("product_id")
            for d, s in zip(docs, specs, strict=True)
            if s.keyword_collection != target_name
        )
        raise LinkQualityError(
            f"product documents were linked against Qdrant collection(s) {recorded} (e.g. {example!r}), "
            f"but the keyword alias now resolves to {target_name!r}: the exact lists would come from "
            "other keywords. Pass that collection's name as the keyword alias, or re-link the products"
        )


def _product_recall(
    sample: _Sample,
    row: int,
    exact: list[tuple[str, str, float]],
    scores_of_stored: Mapping[str, tuple[float, bool]],
) -> tuple[float, ProductRecall | None, float]:
    """Recall of one product, the report entry when below 1, and its largest stored-vs-exact score drift."""
    k, stored = sample.ks[row], sample.stored[row]
    threshold = float(sample.thresholds[row])
    kth = exact[-1][2] if len(exact) == k else -np.inf
    boundary = max(threshold, kth) - SCORE_TOLERANCE
    correct = [
        keyword_id
        for keyword_id in stored
        if keyword_id in scores_of_stored
        and scores_of_stored[keyword_id][1]
        and scores_of_stored[keyword_id][0] >= boundary
    ]
    required = [e for e in exact if e[0] in stored or e[2] >= threshold + SCORE_TOLERANCE]
    if required:
        found = min(len(correct), len(required))
        recall = found / len(required)
    else:
        found = 0
        recall = 1.0 if len(correct) == len(stored) else 0.0
    drift = max(
        (abs(stored[i] - scores_of_stored[i][0]) for i in correct if np.isfinite(stored[i])), default=0.0
    )
    if recall >= 1.0:
        return recall, None, drift
    missed = [MissedKeyword(i, text, score) for i, text, score in required if i not in stored]
    doc = sample.docs[row]
    entry = ProductRecall(
        product_id=str(doc.get("product_id")),
        product_name=str(doc.get("product_name")),
        recall=recall,
        found=found,
        expected=len(required),
        not_exact=len(stored) - len(correct),
        missed=tuple(missed[: min(MISSED_EXAMPLES, len(required) - found)]),
    )
    return recall, entry, drift


def _lexical_rankings(
    es: Elasticsearch, keyword_alias: str, run: _Sample, rows: Sequence[int]
) -> dict[int, list[tuple[Mapping[str, Any], float]]]:
    """Elasticsearch's BM25 ranking of each fused product's name (exact: BM25 has no approximation),
    with the link's filters, ordered as the link stage orders hits."""
    from embedding_pipeline.stores.elasticsearch.read import match_many

    rankings: dict[int, list[tuple[Mapping[str, Any], float]]] = {}
    groups: dict[tuple[int, str], list[int]] = defaultdict(list)
    for row in rows:
        spec = run.specs[row]
        groups[(spec.fusion_depth, spec.keyword_index or keyword_alias)].append(row)
    for (depth, index), group in groups.items():
        docs = [run.docs[r] for r in group]
        filters = [_link_filter(run.specs[r], run.docs[r]) for r in group]
        names = [str(d.get("product_name")) for d in docs]
        found = match_many(es, index, "keyword", names, depth + TIE_MARGIN, filters)
        for row, hits in zip(group, found, strict=True):
            rankings[row] = best([(h, float(h["_score"])) for h in hits], depth)
    return rankings


def _link_filter(spec: LinkSpec, doc: Mapping[str, Any]) -> dict[str, Any] | None:
    """The link stage's per-product keyword filter, from the document's ``link`` record."""
    static = {k: sorted(v, key=str) for k, v in spec.keyword_filter.items()}
    return keyword_conditions(static, spec.match_fields, doc)


def _fused_recall(
    sample: _Sample,
    row: int,
    dense: list[tuple[str, str, float]],
    lexical: list[tuple[Mapping[str, Any], float]],
) -> tuple[float, ProductRecall | None]:
    """Recall of a hybrid or lexical list against the same fusion of the exact dense ranking and
    Elasticsearch's ranking. Dense near-ties may order differently here than in Qdrant, which can
    move a fused rank: a measurement, reported like any other miss."""
    spec, k, stored = sample.specs[row], sample.ks[row], sample.stored[row]
    dense_hits = best([({"keyword_id": i, "keyword": text}, score) for i, text, score in dense], len(dense))
    weights = (spec.dense_weight if spec.mode == "hybrid" else 0.0, spec.lexical_weight)
    expected = rrf([(dense_hits, weights[0]), (lexical, weights[1])], spec.rrf_k, k)
    found = sum(str(p["keyword_id"]) in stored for p, _ in expected)
    recall = found / len(expected) if expected else (1.0 if not stored else 0.0)
    if recall >= 1.0:
        return recall, None
    doc = sample.docs[row]
    missed = [
        MissedKeyword(str(p["keyword_id"]), str(p.get("keyword")), score)
        for p, score in expected
        if str(p["keyword_id"]) not in stored
    ]
    return recall, ProductRecall(
        product_id=str(doc.get("product_id")),
        product_name=str(doc.get("product_name")),
        recall=recall,
        found=found,
        expected=len(expected),
        not_exact=len(stored) - found,
        missed=tuple(missed[:MISSED_EXAMPLES]),
    )


def _embed_names(
    client: EmbeddingClient, docs: Sequence[Mapping[str, Any]], specs: Sequence[LinkSpec]
) -> np.ndarray:
    """Product names embedded as the link stage did, each with its document's recorded role."""
    queries = np.empty((len(docs), client.dim), dtype=np.float32)
    rows_by_role: dict[Role | None, list[int]] = defaultdict(list)
    for row, spec in enumerate(specs):
        rows_by_role[spec.role].append(row)
    for role, rows in rows_by_role.items():
        queries[rows] = client.embed([str(docs[r].get("product_name")) for r in rows], role=role).vectors
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def _stored_queries(qdrant: QdrantBase, collection: str, docs: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The product vectors the link stage stored beside each sampled document (no re-embedding:
    what the lists were searched with, exactly)."""
    from embedding_pipeline.runs.staging import point_id
    from embedding_pipeline.stores.qdrant import points

    wanted = [point_id("product", str(d.get("product_id"))) for d in docs]
    stored = points.retrieve(qdrant, collection, wanted)
    missing = [str(d.get("product_id")) for d, p in zip(docs, wanted, strict=True) if p not in stored]
    if missing:
        raise LinkQualityError(
            f"{len(missing)} sampled products have no stored vector in {collection!r} (e.g. {missing[0]!r})"
        )
    queries = np.stack([stored[p][1] for p in wanted])
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def _scan(
    qdrant: QdrantBase, collection: str, run: _Sample, queries: np.ndarray, scan_batch: int
) -> tuple[_RunningTopK, list[dict[str, tuple[float, bool]]], int]:
    """One pass over every keyword vector: the running exact top-K per product, the exact score (and
    whether the filters let it through) of every stored keyword, and how many keywords were seen."""
    best = _RunningTopK(len(queries), max(max(run.ks), *(s.scan_depth for s in run.specs)))
    scores_of_stored: list[dict[str, tuple[float, bool]]] = [{} for _ in range(len(queries))]
    scanned = 0
    for vectors, payloads in iter_vectors(qdrant, collection, scan_batch, run.payload_fields):
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        scores = queries @ vectors.T
        allowed = run.filter_mask(payloads)
        eligible = np.where(allowed & (scores >= run.thresholds[:, None]), scores, np.float32(-np.inf))
        ids = np.array([str(p.get("keyword_id")) for p in payloads], dtype=object)
        texts = np.array([p.get("keyword") for p in payloads], dtype=object)
        best.merge(eligible, ids, texts)
        for column, keyword_id in enumerate(ids):
            for row in run.rows_of_stored.get(keyword_id, ()):
                scores_of_stored[row][keyword_id] = (float(scores[row, column]), bool(allowed[row, column]))
        scanned += len(payloads)
    return best, scores_of_stored, scanned


def check_link_quality(
    es: Elasticsearch,
    qdrant: QdrantBase,
    queries_from: EmbeddingClient | str,
    product_alias: str = PRODUCT_ALIAS,
    keyword_alias: str = KEYWORD_ALIAS,
    sample: int = 200,
    seed: int = 0,
    top_k: int | None = None,
) -> QualityReport:
    """Recall@K of the stored product -> keyword lists against exact search, on a sample of products.

    The queries are the product names re-embedded through ``queries_from``, an embedding client
    (what a reader would do), or, when it is a collection name, the product vectors stored there
    (the gate of a full rebuild: no server needed, and exactly the vectors the lists were searched
    with). ``top_k``
    None checks each list at the K it was linked with; a smaller K checks the first K ranks.
    Memory: sample × K scores plus one block of :data:`SCAN_CELLS` scores, independent of the
    number of keywords.
    """
    started = time.monotonic()
    docs = sample_documents(es, product_alias, sample, seed, id_field="product_id")
    if not docs:
        raise LinkQualityError(f"alias {product_alias!r} holds no product documents to check")
    specs = [LinkSpec.from_document(d) for d in docs]
    if top_k is not None:
        if top_k < 1:
            raise LinkQualityError(f"top_k must be >= 1, got {top_k}")
        shortest = min(s.top_k for s in specs)
        if top_k > shortest:
            raise LinkQualityError(
                f"top_k {top_k} is more than some stored lists were linked with (link.top_k {shortest}): "
                "recall@K needs K <= the linked K"
            )
    ks = [top_k or s.top_k for s in specs]
    target = collection_target_retrying(qdrant, keyword_alias)
    if isinstance(queries_from, EmbeddingClient):
        client = queries_from
        source = (client.settings.model_name, str(client.published.version), client.dim)
        model = _check_models(docs, source, target, "the embedding client")
    else:
        products = collection_target_retrying(qdrant, queries_from)
        source = (str(products.model_name), str(products.model_version), products.dim)
        model = _check_models(docs, source, target, f"product collection {products.name!r}")
    _check_collection(docs, specs, target.name)
    run = _Sample(docs, specs, ks)

    embed_started = time.monotonic()
    if isinstance(queries_from, EmbeddingClient):
        queries = _embed_names(queries_from, docs, specs)
    else:
        queries = _stored_queries(qdrant, queries_from, docs)
    embed_seconds = time.monotonic() - embed_started
    scan_started = time.monotonic()
    low, high = SCAN_BATCH_LIMITS
    batch = min(high, max(low, SCAN_CELLS // len(docs)))
    best, scores_of_stored, scanned = _scan(qdrant, target.name, run, queries, batch)
    scan_seconds = time.monotonic() - scan_started

    fused = [row for row, spec in enumerate(specs) if spec.mode != "dense"]
    lexical = _lexical_rankings(es, keyword_alias, run, fused)
    recalls, below, drift = [], [], 0.0
    for row in range(len(docs)):
        if row in lexical:
            recall, entry = _fused_recall(run, row, best.ranked(row, specs[row].scan_depth), lexical[row])
            product_drift = 0.0
        else:
            recall, entry, product_drift = _product_recall(
                run, row, best.ranked(row, ks[row]), scores_of_stored[row]
            )
        recalls.append(recall)
        drift = max(drift, product_drift)
        if entry is not None:
            below.append(entry)
    below.sort(key=lambda e: (e.recall, e.product_id))
    return QualityReport(
        sample_size=len(docs),
        seed=seed,
        ks=tuple(sorted(set(ks))),
        recall_mean=float(np.mean(recalls)),
        recall_min=float(np.min(recalls)),
        below=tuple(below),
        keywords_scanned=scanned,
        keyword_collection=target.name,
        model=model,
        max_score_drift=drift,
        seconds=round(time.monotonic() - started, 3),
        embed_seconds=round(embed_seconds, 3),
        scan_seconds=round(scan_seconds, 3),
        searched_with=dict(Counter(search_setting(d.get("link") or {}) for d in docs)),
    )


def render_report(report: QualityReport, max_products: int = RENDERED_PRODUCTS) -> str:
    """A few readable lines: the numbers first, then the worst products with what they miss."""
    k = "/".join(map(str, report.ks))
    lines = [
        f"link quality: recall@{k} of {report.sample_size} sampled products (seed {report.seed}) "
        f"against {report.keyword_collection} ({report.keywords_scanned} keywords), model {report.model}",
        f"  recall mean {report.recall_mean:.4f}  min {report.recall_min:.4f}  "
        f"products below 1: {len(report.below)}",
        f"  largest stored-vs-exact score difference {report.max_score_drift:.2e}; searched with "
        + ", ".join(f"{how} ({n})" for how, n in sorted(report.searched_with.items())),
    ]
    for entry in report.below[:max_products]:
        missed = ", ".join(f"{m.keyword} ({m.keyword_id}, {m.score:.4f})" for m in entry.missed)
        lines.append(
            f"  {entry.product_id} {entry.product_name}: recall {entry.recall:.3f} "
            f"({entry.found} of {entry.expected} exact"
            + (f", {entry.not_exact} stored not exact" if entry.not_exact else "")
            + ")"
            + (f", missed {missed}" if missed else "")
        )
    if len(report.below) > max_products:
        lines.append(f"  ... and {len(report.below) - max_products} more")
    lines.append(
        f"  time {report.seconds:.2f} s (embedding {report.embed_seconds:.2f} s, "
        f"scan {report.scan_seconds:.2f} s)"
    )
    return "\n".join(lines)
