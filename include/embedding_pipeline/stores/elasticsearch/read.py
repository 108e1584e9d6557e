"""Reading documents back: text and nested searches, real-time gets, and reproducible samples."""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from elasticsearch import ApiError, Elasticsearch

from embedding_pipeline.errors import ConfigError
from embedding_pipeline.stores.elasticsearch.errors import (
    EsError,
    EsIndexError,
    error_type_reason,
    es_errors,
    raise_read_error,
)

MAX_RESULT_WINDOW = 10_000  # ES's default index.max_result_window: one search returns no more hits
# Ids per request when sampling: few large pages, because the noida-db emulator scans every document
# on each request (~0.5 s per request at 20k documents, ~2.7 s at 50k); ES serves doc values cheaply.
SAMPLE_PAGE_SIZE = MAX_RESULT_WINDOW


def _check_size(name: str, value: int) -> None:
    if not 1 <= value <= MAX_RESULT_WINDOW:
        raise ConfigError(f"{name} must be between 1 and {MAX_RESULT_WINDOW}, got {value}")


def search_text(
    es: Elasticsearch, alias: str, field_name: str, text: str, size: int = 10
) -> list[dict[str, Any]]:
    """Documents whose analysed ``field_name`` matches ``text`` (a ``match`` query), best first.

    Each result is the document's ``_source`` plus its ``_score``, so callers need no knowledge of
    the hit envelope.
    """
    _check_size("size", size)
    with es_errors(f"searching {alias!r} for {text!r}", alias=alias):
        response = es.search(index=alias, query={"match": {field_name: text}}, size=size)
    return [{**hit["_source"], "_score": hit["_score"]} for hit in response["hits"]["hits"]]


def _term_filters(conditions: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    return [
        {"terms": {name: value}} if isinstance(value, list) else {"term": {name: value}}
        for name, value in (conditions or {}).items()
    ]


def match_many(
    es: Elasticsearch,
    index: str,
    field_name: str,
    texts: Sequence[str],
    size: int,
    filters: Sequence[Mapping[str, Any] | None] | None = None,
    source: Sequence[str] | None = None,
) -> list[list[dict[str, Any]]]:
    """Per text, the documents whose analysed ``field_name`` matches it (BM25), best first, in one
    ``_msearch``; ``filters`` adds per-text exact conditions (``{field: value or [values]}``) that
    restrict without scoring. Results are ``_source`` (only ``source`` fields) plus ``_score``."""
    _check_size("size", size)
    if not texts:
        return []
    searches: list[dict[str, Any]] = []
    for text, conditions in zip(texts, filters or [None] * len(texts), strict=True):
        query: dict[str, Any] = {"match": {field_name: text}}
        if conditions:
            query = {"bool": {"must": [query], "filter": _term_filters(conditions)}}
        body: dict[str, Any] = {"query": query, "size": size}
        if source is not None:
            body["_source"] = list(source)
        searches += [{"index": index}, body]
    with es_errors(f"searching {index!r} for {len(texts)} texts", alias=index):
        responses = es.msearch(searches=searches)["responses"]
    results = []
    for response in responses:
        if "error" in response:
            kind, reason = error_type_reason({"error": response["error"]})
            error = EsIndexError if kind == "index_not_found_exception" else EsError
            raise error(f"searching {index!r} for text matches: {kind}: {reason}")
        results.append([{**hit["_source"], "_score": hit["_score"]} for hit in response["hits"]["hits"]])
    return results


@dataclass(frozen=True)
class NestedRef:
    """Where a nested list holds references: ``path`` of the list, the referenced id field and
    the per-reference score field inside each object."""

    path: str
    id_field: str
    score_field: str


def referencing(
    es: Elasticsearch, alias: str, ref: NestedRef, value: str, size: int = 10
) -> tuple[int, list[tuple[dict[str, Any], dict[str, Any]]]]:
    """Documents whose nested ``ref.path`` list holds ``value``, best stored score first, and how many.

    A ``nested`` query scores each document by its matching object's stored score
    (``function_score`` on ``score_field``, where a nested sort is not available everywhere) and
    ``inner_hits`` returns that object. Each result is ``(_source without the list, the matching
    object)``.
    """
    _check_size("size", size)
    if not value:
        raise ConfigError(f"a {ref.id_field} is required")
    query = {
        "nested": {
            "path": ref.path,
            "score_mode": "max",
            "inner_hits": {"size": 1},
            "query": {
                "function_score": {
                    "query": {"term": {f"{ref.path}.{ref.id_field}": value}},
                    "field_value_factor": {"field": f"{ref.path}.{ref.score_field}"},
                    "boost_mode": "replace",
                }
            },
        }
    }
    with es_errors(f"searching {alias!r} for documents referencing {value!r}", alias=alias):
        response = es.search(
            index=alias, query=query, size=size, source_excludes=[ref.path], track_total_hits=True
        )
    found = []
    for hit in response["hits"]["hits"]:
        inner = hit["inner_hits"][ref.path]["hits"]["hits"][0]["_source"]
        found.append((hit["_source"], inner))
    return int(response["hits"]["total"]["value"]), found


def get_document(es: Elasticsearch, alias: str, doc_id: str) -> dict[str, Any] | None:
    """The ``_source`` of document ``doc_id`` behind ``alias``, or None when there is no such document.

    A real-time GET, so a document is found right after it was written even while a bulk load has
    refresh switched off. "No such document" and "no such alias" are both 404s; only the first is
    None, the second raises :class:`EsIndexError`.
    """
    if not doc_id:
        raise ConfigError("a document id is required")
    try:
        return es.get(index=alias, id=doc_id)["_source"]
    except Exception as exc:
        if (
            isinstance(exc, ApiError)
            and exc.meta.status == 404
            and error_type_reason(exc.body)[0] != "index_not_found_exception"
        ):
            return None
        raise_read_error(exc, alias, f"reading document {doc_id!r} from {alias!r}")


def present_ids(es: Elasticsearch, alias: str, ids: Sequence[str], batch: int = 1000) -> set[str]:
    """Which of ``ids`` have a document in ``alias``: real-time ``mget`` without sources, ``batch``
    ids a request (a document just written is seen even before a refresh)."""
    found: set[str] = set()
    for start in range(0, len(ids), batch):
        part = list(ids[start : start + batch])
        with es_errors(f"looking up {len(part)} ids in {alias!r}", alias=alias):
            response = es.mget(index=alias, ids=part, source=False)
        found.update(doc["_id"] for doc in response["docs"] if doc.get("found"))
    return found


def _sample_key(seed: int, value: str) -> bytes:
    return hashlib.blake2b(f"{seed}\x1f{value}".encode(), digest_size=8).digest()


def iter_field_values(es: Elasticsearch, alias: str, field_name: str, page_size: int) -> Iterator[str]:
    """Every distinct value of a unique keyword field, in order, paged with ``search_after``.

    Sorting on the field itself makes each page start exactly after the previous one, without a
    point-in-time; documents written during the scan may or may not be seen.
    """
    after: list[Any] | None = None
    previous = None
    while True:
        with es_errors(f"listing {field_name!r} values of {alias!r}", alias=alias):
            response = es.search(
                index=alias,
                query={"exists": {"field": field_name}},
                sort=[{field_name: "asc"}],
                size=page_size,
                source=False,
                **({"search_after": after} if after is not None else {}),
            )
        hits = response["hits"]["hits"]
        for hit in hits:
            value = hit["sort"][0]
            if value != previous:  # an alias over two generations may hold a document twice
                yield value
            previous = value
        if len(hits) < page_size:
            return
        after = hits[-1]["sort"]


def sample_documents(
    es: Elasticsearch,
    alias: str,
    n: int,
    seed: int,
    *,
    id_field: str,
    page_size: int = SAMPLE_PAGE_SIZE,
) -> list[dict[str, Any]]:
    """A reproducible random sample of ``n`` documents (all of them when there are fewer), as ``_source``.

    The sample is the ``n`` documents whose ``id_field`` value has the smallest hash with ``seed``:
    the same seed gives the same documents, in the same order, on any cluster and after any reindex,
    update or shard change. ``function_score``/``random_score`` was the first choice but cannot
    promise that: its scores mix in index name and shard id (a new generation reshuffles), with
    ``_seq_no`` every update reshuffles, and the noida-db emulator ignores seed and field (it scores
    documents by insertion order, so every seed gave the newest ``n``). The price is one pass over the
    field's doc values (ids only, ``page_size`` per request) with memory bounded by ``n``.
    """
    _check_size("sample size", n)
    chosen = heapq.nsmallest(
        n,
        iter_field_values(es, alias, id_field, page_size),
        key=lambda value: _sample_key(seed, str(value)),
    )
    if not chosen:
        return []
    with es_errors(f"fetching {len(chosen)} sampled documents from {alias!r}", alias=alias):
        response = es.search(index=alias, query={"terms": {id_field: chosen}}, size=len(chosen))
    by_id = {hit["_source"].get(id_field): hit["_source"] for hit in response["hits"]["hits"]}
    return [by_id[value] for value in chosen if value in by_id]
