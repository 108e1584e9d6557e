"""What a new product generation must show beyond the generic gate: ``link_quality``, recall@K of
a sample of its product lists against exact search (stored product vectors as queries), at least
``min_recall`` and not worse than the live generation's on the same sample by more than
``recall_tolerance``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from embedding_pipeline.errors import PipelineError
from embedding_pipeline.generations.gate import Candidate, Check, StageChecks
from embedding_pipeline.generations.rules import GateRules
from embedding_pipeline.stores.protocol import Stores


def _linked_against(stores: Stores, product_index: str) -> str:
    """The keyword collection a product index's lists were made against (its documents' ``link``)."""
    from embedding_pipeline.stores.elasticsearch.read import sample_documents

    docs = sample_documents(stores.client("es"), product_index, 1, seed=0, id_field="product_id")
    if not docs:
        raise PipelineError(f"{product_index} holds no product documents")
    return str((docs[0].get("link") or {}).get("keyword_collection"))


def product_checks(prepared: Mapping[str, Any], rules: GateRules) -> StageChecks:
    """The product stage's gate additions for the generation ``prepared`` built."""

    def recall(stores: Stores, product_index: str, product_collection: str, keyword_collection: str) -> float:
        from embedding_pipeline.stages.products.quality import check_link_quality

        return check_link_quality(
            stores.client("es"),
            stores.client("qdrant"),
            product_collection,
            product_index,
            keyword_collection,
            rules.quality_sample,
        ).recall_mean

    def link_quality(stores: Stores, candidate: Candidate) -> Check:
        new = recall(
            stores, prepared["es_index"], prepared["product_collection"], prepared["keyword_collection"]
        )
        detail = f"recall@K {new:.4f} on {rules.quality_sample} sampled products (min {rules.min_recall})"
        ok = new >= rules.min_recall
        live_index, live_collection = candidate.live_in("es"), candidate.live_in("qdrant")
        if live_index and live_collection:
            try:
                old = recall(stores, live_index, live_collection, _linked_against(stores, live_index))
            except PipelineError as exc:  # e.g. the live lists point at a dropped keyword generation
                detail += f"; live generation not measurable ({exc})"
            else:
                detail += f"; live {old:.4f} (tolerance {rules.recall_tolerance})"
                ok = ok and new >= old - rules.recall_tolerance
        return Check("link_quality", ok, detail)

    return StageChecks(checks=(link_quality,))
