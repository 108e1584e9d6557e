"""Product documents with their linked keywords: the Elasticsearch mapping and the ``_source`` builder.

Pure functions (no client here; :mod:`embedding_pipeline.stores.elasticsearch` does the talking). One product
document per ``product_id``::

    product_id, product_name, description, category, brand, updated_at, dt
    keywords: nested [{keyword_id, keyword, score, rank}]     best first, rank 1..K
    keyword_count, top_score
    model_name, model_version, content_hash, linked_at
    link: {top_k, score_threshold, match_fields, keyword_filter (JSON text), role, keyword_collection,
           hnsw_ef, exact}

``_id`` is the ``product_id`` (stable, short, unique; a product name may be long or shared). A
re-link writes the whole document again, so the nested list is replaced, never appended to; a
product with no keyword above the threshold is stored with ``keywords: []`` (it was linked, and
found nothing), not dropped. The ``link`` object records how the list was made, so the quality
check (:mod:`embedding_pipeline.stages.products.quality`) can recompute it exactly.

Across partitions the **latest ``dt`` wins**: documents are written with an external version
derived from ``dt`` (:func:`partitions.partition_version`), so re-linking an older partition after a newer
one leaves the newer document in place whatever order mapped tasks or backfills run in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from embedding_pipeline.stores.elasticsearch.documents import DEFAULT_ANALYZER, field_types, payload_fields
from embedding_pipeline.stores.qdrant.schema import PointSchema

KIND = "product"  # point ids, state and dead letters of products are keyed by it
PRODUCT_PAYLOAD_FIELDS = ("description", "category", "brand", "updated_at", "dt")
# The product vector collection (Qdrant, same alias as the ES index): each product's vector and
# fields, plus what link maintenance needs - the ids in its list and the score a keyword needs to
# enter it (stages.products.maintenance).
PRODUCT_POINTS = PointSchema(
    id_field="product_id",
    text_field="product_name",
    indexed_fields={
        "category": "keyword",
        "lang": "keyword",
        "keyword_ids": "keyword",
        "entry_score": "float",
    },
)


def product_mappings(
    *, model_name: str, model_version: int, dim: int, analyzer: str = DEFAULT_ANALYZER
) -> dict[str, Any]:
    """Explicit mapping of the product index (``dynamic: strict`` for the same reasons as keywords).

    ``keywords`` is ``nested`` so a query can ask for one keyword object matching several
    conditions at once (keyword text AND score >= x), which flattened objects cannot answer.
    """
    text = {"type": "text", "analyzer": analyzer, "fields": {"raw": {"type": "keyword", "ignore_above": 512}}}
    return {
        "dynamic": "strict",
        "_meta": {
            "kind": "product",
            "model_name": model_name,
            "model_version": int(model_version),
            "dim": int(dim),
        },
        "properties": {
            "product_id": {"type": "keyword"},
            "product_name": text,
            "description": {"type": "text", "analyzer": analyzer},
            "category": {"type": "keyword"},
            "brand": {"type": "keyword"},
            "updated_at": {"type": "date"},
            "dt": {"type": "keyword"},
            "keywords": {
                "type": "nested",
                "properties": {
                    "keyword_id": {"type": "keyword"},
                    "keyword": text,
                    "score": {"type": "float"},
                    "rank": {"type": "integer"},
                },
            },
            "keyword_count": {"type": "integer"},
            "top_score": {"type": "float"},
            "model_name": {"type": "keyword"},
            "model_version": {"type": "integer"},
            "content_hash": {"type": "keyword"},
            "linked_at": {"type": "date"},
            "link": {
                "properties": {
                    "top_k": {"type": "integer"},
                    "score_threshold": {"type": "float"},
                    "match_fields": {"type": "keyword"},
                    "keyword_filter": {"type": "keyword"},
                    "role": {"type": "keyword"},
                    "keyword_collection": {"type": "keyword"},
                    "hnsw_ef": {"type": "integer"},
                    "exact": {"type": "boolean"},
                    # link modes other than dense (stages.products.fusion)
                    "mode": {"type": "keyword"},
                    "dense_weight": {"type": "float"},
                    "lexical_weight": {"type": "float"},
                    "rrf_k": {"type": "integer"},
                    "fusion_depth": {"type": "integer"},
                    "keyword_index": {"type": "keyword"},
                }
            },
        },
    }


# The keyword payload fields a linked keyword is made of: all a link's search needs to fetch.
LINKED_FIELDS = ("keyword_id", "keyword")


def linked_keywords(hits: Sequence[tuple[Mapping[str, Any], float]]) -> list[dict[str, Any]]:
    """Nested keyword objects from search hits ``(payload, score)``, best first, ranked from 1."""
    return [
        {
            "keyword_id": str(payload.get("keyword_id")),
            "keyword": payload.get("keyword"),
            "score": round(float(score), 6),
            "rank": rank,
        }
        for rank, (payload, score) in enumerate(hits, start=1)
    ]


class LinkStamp(NamedTuple):
    """How and when a product's list was made: the same for every product of a link task."""

    model_name: str
    model_version: int
    linked_at: str
    link: Mapping[str, Any]  # LinkOptions.link_record: enough to recompute the list


def product_document(
    product_id: str,
    product_name: str,
    content_hash: str,
    payload: Mapping[str, Any],
    keywords: list[dict[str, Any]],
    stamp: LinkStamp,
) -> dict[str, Any]:
    """The ``_source`` of one product document; missing or None payload fields are left out."""
    doc: dict[str, Any] = {
        "product_id": product_id,
        "product_name": product_name,
        "keywords": keywords,
        "keyword_count": len(keywords),
        "model_name": stamp.model_name,
        "model_version": int(stamp.model_version),
        "content_hash": content_hash,
        "linked_at": stamp.linked_at,
        "link": dict(stamp.link),
    }
    if keywords:
        doc["top_score"] = keywords[0]["score"]
    return {**doc, **payload_fields(payload, PRODUCT_PAYLOAD_FIELDS)}


def search_setting(link: Mapping[str, Any]) -> str:
    """How a stored list was searched, from its ``link`` object: "exact", "hnsw_ef N", or the
    server's default ef (documents linked before ``hnsw_ef`` was recorded sent none)."""
    if link.get("exact"):
        return "exact"
    return f"hnsw_ef {link['hnsw_ef']}" if link.get("hnsw_ef") is not None else "server default ef"


def products_linked_to(
    es: Any, alias: str, keyword_id: str, size: int = 10
) -> tuple[int, list[dict[str, Any]]]:
    """Products whose nested ``keywords`` hold ``keyword_id``, best link score first, and how many:
    the reverse of a product's list, and what the nested mapping is for. Each result is the
    product's ``_source`` without its list, plus ``score`` and ``rank`` of the link."""
    from embedding_pipeline.stores.elasticsearch.read import NestedRef, referencing

    total, found = referencing(es, alias, NestedRef("keywords", "keyword_id", "score"), keyword_id, size)
    return total, [{**source, "score": link.get("score"), "rank": link.get("rank")} for source, link in found]


# What the index maps each field as: the embed task checks payloads against it (stages.embed).
PRODUCT_FIELD_TYPES = field_types(product_mappings(model_name="", model_version=0, dim=0))
