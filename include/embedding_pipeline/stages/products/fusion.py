"""Reciprocal rank fusion of a dense (Qdrant) and a lexical (Elasticsearch BM25) keyword ranking.

RRF (Cormack et al., 2009) scores a keyword ``sum_i weight_i / (rrf_k + rank_i)`` over the
rankings it appears in (ranks from 1); a keyword missing from a ranking gets nothing from it. It
needs no score calibration between a cosine and a BM25 score, which is why both Qdrant's Query API
and Elasticsearch's ``rrf`` retriever offer it. It is done here rather than in either engine
because each engine only knows its own half: the dense half comes from Qdrant, the lexical half
from Elasticsearch's analysed keyword text, in embedded and server mode alike.

Ties (equal fused scores, common: rank 3 in one list equals rank 3 in the other) are broken by
keyword id, so a list is a function of the two rankings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Hit = tuple[Mapping[str, Any], float]  # (keyword payload, score)
TIE_MARGIN = 8  # extra hits fetched from an engine so ties at a cut are broken by keyword id (best)


def best(hits: Sequence[Hit], k: int) -> list[Hit]:
    """The top ``k`` hits in a stable order: by score as stored (6 decimals), then keyword id.

    Engines order equal scores arbitrarily (Qdrant's may change when points are re-upserted), so
    a re-link could swap tied keywords, or pick another of several tied at the cut. Asking for
    ``TIE_MARGIN`` more and cutting here makes the list a function of the data unless more than
    ``TIE_MARGIN`` keywords tie at the cut (duplicate keyword texts with different ids do tie).
    """
    return sorted(hits, key=lambda hit: (-round(hit[1], 6), str(hit[0].get("keyword_id"))))[:k]


def rrf(rankings: Sequence[tuple[Sequence[Hit], float]], rrf_k: int, top_k: int) -> list[Hit]:
    """Fuse ``(ranked hits, weight)`` rankings; returns the best ``top_k`` as (payload, fused score).

    A ranking's hits must be best first and carry ``keyword_id`` in the payload; the payload kept
    for a keyword is the first ranking's that holds it.
    """
    fused: dict[str, float] = {}
    payloads: dict[str, Mapping[str, Any]] = {}
    for hits, weight in rankings:
        if weight <= 0:
            continue
        for rank, (payload, _) in enumerate(hits, start=1):
            keyword_id = str(payload["keyword_id"])
            fused[keyword_id] = fused.get(keyword_id, 0.0) + weight / (rrf_k + rank)
            payloads.setdefault(keyword_id, payload)
    best = sorted(fused.items(), key=lambda item: (-round(item[1], 9), item[0]))[:top_k]
    return [(payloads[keyword_id], score) for keyword_id, score in best]
