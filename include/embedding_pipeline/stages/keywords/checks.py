"""What a new keyword generation must show beyond the generic gate: every canary keyword is found
by a text search for its own keyword in the new Elasticsearch index (what a reader would type)."""

from __future__ import annotations

from embedding_pipeline.generations.gate import Candidate, StageChecks
from embedding_pipeline.stores.protocol import Stores

TEXT_SEARCH_DEPTH = 50


def text_search_canaries(stores: Stores, candidate: Candidate, ids: list[str]) -> list[str]:
    """One line per canary a text search for its keyword misses (absent ones are the adapter's)."""
    from embedding_pipeline.stages.keywords.documents import search_keywords
    from embedding_pipeline.stores.elasticsearch.read import get_document

    failed = []
    for index in candidate.new_in("es").values():
        es = stores.client("es")
        for doc_id in ids:
            doc = get_document(es, index, doc_id)
            if doc is None:
                continue
            hits = search_keywords(es, index, doc["keyword"], size=TEXT_SEARCH_DEPTH)
            if doc_id not in {str(h.get("keyword_id")) for h in hits}:
                failed.append(f"{index}: a search for {doc['keyword']!r} misses {doc_id}")
    return failed


KEYWORD_CHECKS = StageChecks(canaries=(text_search_canaries,))
