"""The gate of a full rebuild: what a new generation must show before any alias moves.

Checks, each reported with its numbers: ``counts`` (every store holds exactly the ids the run
left live), ``shrink`` (not fewer than the live generation by more than ``max_delete_ratio``: a
truncated input), ``model`` (name, version and dimension recorded in every store, and the Qdrant
vector size, are the run's), ``canaries`` (a few ids from the input answer from every store: by
id, by a search with their own vector, and for keywords by a text search) and, for products,
``link_quality`` (recall@K of a sample against exact search, at least ``min_recall`` and not
worse than the live generation's by more than ``recall_tolerance``). Rules: ``generation_rules``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedding_pipeline.errors import PipelineError
from embedding_pipeline.runs.state import IndexState
from embedding_pipeline.stages.generation_rules import GateRules
from embedding_pipeline.stages.generation_stores import IDENTITY, StoreAlias, Stores


@dataclass(frozen=True)
class Check:
    """One gate check, as the report shows it."""

    name: str
    ok: bool
    detail: str


def canary_ids(state: IndexState, n: int) -> list[str]:
    """``n`` live ids, the same ones for the same state: the smallest by a hash of the id."""
    ids = state.live()["id"].to_pylist()
    return sorted(ids, key=lambda i: hashlib.blake2b(i.encode(), digest_size=8).digest())[:n]


def _count_check(stores: Stores, new: dict[StoreAlias, str], expected: int) -> Check:
    counts = {store.key: stores.count(store, name) for store, name in new.items()}
    ok = all(count == expected for count in counts.values())
    shown = ", ".join(f"{key} {count}" for key, count in counts.items())
    return Check("counts", ok, f"expected {expected} (live ids after the run); {shown}")


def _shrink_check(
    stores: Stores, live: dict[StoreAlias, str | None], expected: int, max_shrink: float
) -> Check:
    """A new generation much smaller than the live one is a truncated input far more often than a
    real purge: the same guard as ``max_delete_ratio`` on incremental runs."""
    counts = {store.key: stores.count(store, name) for store, name in live.items() if name}
    if not counts:
        return Check("shrink", True, "no live generation to compare with")
    largest = max(counts.values())
    lost = largest - expected
    ok = lost <= max_shrink * largest
    return Check(
        "shrink",
        ok,
        f"{expected} ids against {largest} live ({lost / largest:.1%} fewer; max_delete_ratio "
        f"{max_shrink:.1%})"
        if largest
        else f"{expected} ids; the live generation is empty",
    )


def _model_check(stores: Stores, new: dict[StoreAlias, str], model: dict[str, Any]) -> Check:
    wanted = tuple(str(model[key]) for key in IDENTITY)
    found = {store.key: stores.identity(store, name) for store, name in new.items()}
    if "qdrant" in {store.system for store in new}:
        from embedding_pipeline.stores.qdrant.collections import collection_target

        for store, name in new.items():
            if store.system == "qdrant":
                size = collection_target(stores.qdrant, name).dim
                found[f"{store.key} vector size"] = (wanted[0], wanted[1], str(size))
    bad = {key: value for key, value in found.items() if value != wanted}
    detail = f"{wanted[0]} v{wanted[1]} dim {wanted[2]} in " + ", ".join(found)
    if bad:
        detail += "; differs: " + ", ".join(f"{k} has {v[0]} v{v[1]} dim {v[2]}" for k, v in bad.items())
    return Check("model", not bad, detail)


def _canary_check(stores: Stores, new: dict[StoreAlias, str], canaries: list[str], kind: str) -> Check:
    """Every canary id answers from every store: its point comes back by id and a search with its
    own vector finds it among the best (Qdrant); its document comes back by id and, for keywords,
    a text search for its keyword finds it (ES)."""
    missing: list[str] = []
    for store, name in new.items():
        if store.system == "qdrant":
            missing += _qdrant_canaries(stores.qdrant, name, canaries, kind)
        else:
            missing += _es_canaries(stores.es, name, canaries, kind)
    detail = f"{len(canaries)} canary ids ({', '.join(canaries)})"
    return Check(
        "canaries", bool(canaries) and not missing, detail + (f"; failed: {missing}" if missing else "")
    )


def _qdrant_canaries(qdrant: Any, collection: str, ids: list[str], kind: str) -> list[str]:
    from embedding_pipeline.runs.staging import point_id
    from embedding_pipeline.stores.qdrant import points
    from embedding_pipeline.stores.qdrant.search import SearchOptions, search

    wanted = {point_id(kind, i): i for i in ids}
    stored = points.retrieve(qdrant, collection, list(wanted))
    failed = [f"{collection}: {i} absent" for pid, i in wanted.items() if pid not in stored]
    found = [(pid, i) for pid, i in wanted.items() if pid in stored]
    if not found:
        return failed
    vectors = np.stack([stored[pid][1] for pid, _ in found])
    for (_, business_id), hits in zip(
        found, search(qdrant, collection, vectors, SearchOptions(50)), strict=True
    ):
        best = hits[0].score if hits else np.inf
        if business_id not in {str(h.payload.get(f"{kind}_id")) for h in hits if h.score >= best - 1e-5}:
            failed.append(f"{collection}: a search with {business_id}'s vector does not find it")
    return failed


def _es_canaries(es: Any, index: str, ids: list[str], kind: str) -> list[str]:
    from embedding_pipeline.stages.keyword_documents import search_keywords
    from embedding_pipeline.stores.elasticsearch.read import get_document

    failed = []
    for doc_id in ids:
        doc = get_document(es, index, doc_id)
        if doc is None:
            failed.append(f"{index}: {doc_id} absent")
        elif kind == "keyword":
            hits = search_keywords(es, index, doc["keyword"], size=50)
            if doc_id not in {str(h.get("keyword_id")) for h in hits}:
                failed.append(f"{index}: a search for {doc['keyword']!r} misses {doc_id}")
    return failed


def _quality_check(
    stores: Stores, prepared: dict[str, Any], live: dict[str, str | None], rules: GateRules
) -> Check:
    """Recall@K of a sample of the new generation's product lists against exact search (stored
    product vectors as queries), compared with the live generation's on the same sample."""
    from embedding_pipeline.stages.link_quality import check_link_quality

    def recall(product_index: str, product_collection: str, keyword_collection: str) -> float:
        return check_link_quality(
            stores.es,
            stores.qdrant,
            product_collection,
            product_index,
            keyword_collection,
            rules.quality_sample,
        ).recall_mean

    new = recall(prepared["es_index"], prepared["product_collection"], prepared["keyword_collection"])
    detail = f"recall@K {new:.4f} on {rules.quality_sample} sampled products (min {rules.min_recall})"
    ok = new >= rules.min_recall
    live_index, live_collection = live.get("es"), live.get("qdrant")
    if live_index and live_collection:
        try:
            old = recall(live_index, live_collection, _linked_against(stores, live_index))
        except PipelineError as exc:  # e.g. the live lists point at a dropped keyword generation
            detail += f"; live generation not measurable ({exc})"
        else:
            detail += f"; live {old:.4f} (tolerance {rules.recall_tolerance})"
            ok = ok and new >= old - rules.recall_tolerance
    return Check("link_quality", ok, detail)


def _linked_against(stores: Stores, product_index: str) -> str:
    """The keyword collection a product index's lists were made against (its documents' ``link``)."""
    from embedding_pipeline.stores.elasticsearch.read import sample_documents

    docs = sample_documents(stores.es, product_index, 1, seed=0, id_field="product_id")
    if not docs:
        raise PipelineError(f"{product_index} holds no product documents")
    return str((docs[0].get("link") or {}).get("keyword_collection"))


def gate(
    stores: Stores,
    prepared: dict[str, Any],
    aliases: Sequence[StoreAlias],
    kind: str,
    rules: GateRules,
) -> list[Check]:
    """The checks a new generation must pass before the aliases move (module docstring)."""
    new = {store: prepared["generation"]["new"][store.key] for store in aliases}
    live = {store: prepared["generation"]["live"][store.key] for store in aliases}
    state = IndexState(prepared["state_path"])
    expected = state.live_count()
    checks = [
        _count_check(stores, new, expected),
        _shrink_check(stores, live, expected, rules.max_shrink),
        _model_check(stores, new, prepared),
        _canary_check(stores, new, canary_ids(state, rules.canaries), kind),
    ]
    if kind == "product":
        by_system = {store.system: name for store, name in live.items()}
        checks.append(_quality_check(stores, prepared, by_system, rules))
    return checks
