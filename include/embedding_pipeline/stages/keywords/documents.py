"""What a keyword looks like in each store: the ES mapping and ``_source``, and the Qdrant point
schema (payload fields and the indexes the linker filters on)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from embedding_pipeline.stores.elasticsearch.documents import DEFAULT_ANALYZER, field_types, payload_fields
from embedding_pipeline.stores.qdrant.schema import PointSchema

KEYWORD_PAYLOAD_FIELDS = ("category", "lang", "updated_at", "dt")
KEYWORD_POINTS = PointSchema(
    id_field="keyword_id",
    text_field="keyword",
    indexed_fields={"category": "keyword", "lang": "keyword"},
)


def keyword_mappings(
    *, model_name: str, model_version: int, dim: int, analyzer: str = DEFAULT_ANALYZER
) -> dict[str, Any]:
    """Explicit mapping of the keyword index.

    ``dynamic: strict`` rather than ``false``: :func:`keyword_document` is the only writer and
    picks known fields, so an unknown field can only be a code change that forgot the mapping.
    Strict makes that fail loudly on the first item (dead letter ``es_mapping_error``) instead of
    storing an unindexed field that searches silently miss, and keeps every generation's
    mapping identical to this function, which the alias swap of a full reindex relies on.

    ``dt`` is a ``keyword``: it is a partition label, filtered by equality, and ISO dates sort
    lexicographically so range filters still work. ``keyword.raw`` serves exact match and
    aggregations; ``ignore_above`` keeps an overlong keyword indexable as text.
    """
    return {
        "dynamic": "strict",
        "_meta": {
            "kind": "keyword",
            "model_name": model_name,
            "model_version": int(model_version),
            "dim": int(dim),
        },
        "properties": {
            "keyword_id": {"type": "keyword"},
            "keyword": {
                "type": "text",
                "analyzer": analyzer,
                "fields": {"raw": {"type": "keyword", "ignore_above": 512}},
            },
            "dt": {"type": "keyword"},
            "category": {"type": "keyword"},
            "lang": {"type": "keyword"},
            "updated_at": {"type": "date"},
            "model_name": {"type": "keyword"},
            "model_version": {"type": "integer"},
            "content_hash": {"type": "keyword"},
            "indexed_at": {"type": "date"},
        },
    }


def keyword_document(
    keyword_id: str,
    keyword: str,
    content_hash: str,
    payload: Mapping[str, Any],
    *,
    model_name: str,
    model_version: int,
    indexed_at: str,
) -> dict[str, Any]:
    """The ``_source`` of one keyword document. Payload fields that are missing or None are left out."""
    doc: dict[str, Any] = {
        "keyword_id": keyword_id,
        "keyword": keyword,
        "model_name": model_name,
        "model_version": int(model_version),
        "content_hash": content_hash,
        "indexed_at": indexed_at,
    }
    return {**doc, **payload_fields(payload, KEYWORD_PAYLOAD_FIELDS)}


def ensure_keyword_index(
    es: Any,
    alias: str,
    *,
    model_name: str,
    model_version: int,
    dim: int,
    analyzer: str = DEFAULT_ANALYZER,
    settings: Mapping[str, Any] | None = None,
) -> Any:
    """The keyword index behind ``alias``, created if missing, refused if incompatible.

    Call it once per run in a setup task (mapped tasks may also call it: creation is race-safe).
    """
    from embedding_pipeline.stores.elasticsearch.indices import ensure_index

    mappings = keyword_mappings(
        model_name=model_name, model_version=model_version, dim=dim, analyzer=analyzer
    )
    return ensure_index(es, alias, mappings, settings=settings)


def search_keywords(es: Any, alias: str, text: str, size: int = 10) -> list[dict[str, Any]]:
    """Keyword documents matching ``text`` (a ``match`` query on the analysed ``keyword``), best first.

    A match query (not ``keyword.raw``) because users type fragments: the ``cjk`` analyzer's
    bigrams let ``ラーメン`` find ``東京 ラーメン 人気``.
    """
    from embedding_pipeline.stores.elasticsearch.read import search_text

    return search_text(es, alias, "keyword", text, size)


# What the index maps each field as: the embed task checks payloads against it (stages.embed).
KEYWORD_FIELD_TYPES = field_types(keyword_mappings(model_name="", model_version=0, dim=0))
