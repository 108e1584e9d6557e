"""The product -> keyword link stage as plain functions, one per DAG task.

    plan (runs.plan, products table) -> prepare -> embed (mapped) -> link (mapped) -> finish
    -> finalize

Products are chunked and embedded exactly like keywords (same planner, same embed task, same row
validation and dead letters), with the role the model family gives queries (ruri-v3
``検索クエリ: ``, e5 ``query: ``) while keywords were embedded as passages. Each ``link`` task
streams its staged chunk, asks Qdrant for the top-K keywords of a batch of products at a time
(optional score threshold, optional "same category" style filters), and writes one product
document per product to Elasticsearch (``stages.product_documents``). Products with no keyword above
the threshold are stored with an empty list.

Duplicates: within a partition the first occurrence of a ``product_id`` is kept and later ones are
dead-lettered (``duplicate_id``), as for keywords. Across partitions the latest ``dt`` wins,
enforced by ES external versions, so the outcome does not depend on task or backfill order; a
write that loses to a newer partition counts as linked (``superseded`` in the report).

Accounting, per run: ``rows_read == linked + dead-lettered (embed) + dead-lettered (link)``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from embedding_pipeline.errors import SetupError
from embedding_pipeline.model.registry import Role
from embedding_pipeline.retry import RetryPolicy
from embedding_pipeline.runs.accounting import StageResult, chunk_result
from embedding_pipeline.runs.dead_letter import DeadLetterWriter
from embedding_pipeline.runs.partitions import PRODUCTS, Chunk, partition_version
from embedding_pipeline.runs.staging import StagedBatch, iter_staged, staged_metadata
from embedding_pipeline.runs.storage import as_path
from embedding_pipeline.serving.client import EmbeddingClient
from embedding_pipeline.settings import ServerSettings
from embedding_pipeline.stages.embed import embed_chunk
from embedding_pipeline.stages.link_options import LINK_STAGE, LinkOptions
from embedding_pipeline.stages.product_documents import LinkStamp, linked_keywords, product_document
from embedding_pipeline.stores.qdrant.search import SearchOptions, search

log = logging.getLogger(__name__)
KIND = "product"
STAGE = LINK_STAGE
TIE_MARGIN = 8  # extra hits fetched so ties at the top-K cut are broken by keyword id (see _best)


class LinkSetupError(SetupError):
    """The link stage cannot start: keyword collection missing, empty, or of another model."""


def check_keyword_collection(qdrant: Any, alias: str, model: Mapping[str, Any]) -> Any:
    """The keyword collection behind ``alias``, refused early if missing, empty or of another model.

    Unreachable Qdrant: :class:`QdrantUnavailableError` after retries; another model or dimension:
    :class:`CollectionMismatchError` naming both (the check every Qdrant write and search uses).
    """
    from embedding_pipeline.stores.qdrant.collections import (
        check_model,
        collection_target_retrying,
        count_points,
    )
    from embedding_pipeline.stores.qdrant.errors import CollectionNotFoundError

    try:
        target = collection_target_retrying(qdrant, alias)
    except CollectionNotFoundError:
        raise LinkSetupError(
            f"Qdrant has no keyword collection {alias!r}: run keyword_index (or embedding_chain) for "
            "the keyword partitions first, or set qdrant_alias to the collection's alias"
        ) from None
    check_model(
        target,
        dim=model["dim"],
        model_name=model["model_name"],
        model_version=model["model_version"],
        distance=None,
        what="the model products would be embedded with",
    )
    if count_points(qdrant, target.name) == 0:
        raise LinkSetupError(
            f"keyword collection {alias!r} -> {target.name!r} is empty: index keywords first"
        )
    return target


def prepare(
    options: LinkOptions,
    model: dict[str, Any],
    qdrant_settings: Any = None,
    es_settings: Any = None,
    *,
    has_products: bool = True,
) -> dict[str, Any]:
    """Check the keyword collection, create the product index behind its alias, start the bulk load.

    With no products to link (a missing partition under ``missing_partition=skip``) nothing is
    checked or created: the run ends ``no_data``, as a nightly run before the first data must.
    """
    from embedding_pipeline.stages.product_documents import product_mappings
    from embedding_pipeline.stores.elasticsearch.bulk_load import begin_bulk_load
    from embedding_pipeline.stores.elasticsearch.client import open_es
    from embedding_pipeline.stores.elasticsearch.indices import ensure_index
    from embedding_pipeline.stores.qdrant.client import open_client

    if not has_products:
        return {**model, "keyword_collection": None, "es_index": None}
    with open_client(qdrant_settings) as qdrant:
        target = check_keyword_collection(qdrant, options.keyword_alias, model)
    mappings = product_mappings(
        model_name=model["model_name"], model_version=model["model_version"], dim=model["dim"]
    )
    with open_es(es_settings) as es:
        index = ensure_index(es, options.product_alias, mappings)
        previous = begin_bulk_load(es, options.product_alias)
    return {
        **model,
        "keyword_collection": target.name,
        "es_index": index.index,
        "es_previous_settings": previous,
    }


def finish(options: LinkOptions, prepared: dict[str, Any] | None, es_settings: Any = None) -> None:
    """Teardown: restore refresh/replicas of the product index (also when link tasks failed)."""
    from embedding_pipeline.stores.elasticsearch.bulk_load import end_bulk_load
    from embedding_pipeline.stores.elasticsearch.client import open_es

    if not (prepared or {}).get("es_index"):
        return  # prepare failed before the bulk load began, or there was nothing to link
    with open_es(es_settings) as es:
        end_bulk_load(es, options.product_alias, prepared["es_previous_settings"])


def embed(
    chunk: dict, run_dir: str, model_name: str, role: Role | None, settings: ServerSettings | None = None
) -> dict[str, Any]:
    """Embed one product chunk (the keyword embed task with the products table and the query role)."""
    settings = (settings or ServerSettings.from_env()).with_overrides(model_name=model_name)
    with EmbeddingClient(settings) as client:
        output = embed_chunk(Chunk.from_xcom(chunk), PRODUCTS, KIND, client, as_path(run_dir), role=role)
    return {"result": output.result.to_xcom(), "staged": output.staged_path, "chunk": chunk["chunk_id"]}


def _best(hits: list[Any], top_k: int) -> list[Any]:
    """The top ``top_k`` hits in a stable order: by score as stored (6 decimals), then keyword id.

    Engines order equal scores arbitrarily (Qdrant's may change when points are re-upserted), so
    a re-link could swap tied keywords, or pick another of several tied at the cut. Asking for
    ``TIE_MARGIN`` more and cutting here makes the list a function of the data unless more than
    ``TIE_MARGIN`` keywords tie at the cut (duplicate keyword texts with different ids do tie).
    """
    ordered = sorted(hits, key=lambda hit: (-round(hit.score, 6), str(hit.payload.get("keyword_id"))))
    return ordered[:top_k]


def _filters(options: LinkOptions, payloads: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """Per product: the static keyword filter plus "same <field> as this product" (null: no condition)."""
    filters = []
    for payload in payloads:
        conditions = dict(options.keyword_filter)
        for name in options.match_fields:
            if payload.get(name) is not None:
                conditions[name] = payload[name]
        filters.append(conditions or None)
    return filters


@dataclass
class _LinkStats:
    searched: int = 0
    empty: int = 0
    keywords: int = 0
    search_seconds: float = 0.0


@dataclass
class _Linker:
    """Turns staged product batches into product documents: top-K keywords searched in Qdrant."""

    qdrant: Any
    options: LinkOptions
    collection: str
    search: SearchOptions
    retry: RetryPolicy
    stamp: LinkStamp
    dead: DeadLetterWriter
    stats: _LinkStats = field(default_factory=_LinkStats)

    def documents(self, batch: StagedBatch) -> list[tuple[str, dict[str, Any], int]]:
        """Search the batch's top-K keywords and build its documents (bad vectors dead-lettered)."""
        finite = np.isfinite(batch.vectors).all(axis=1)
        for i in np.flatnonzero(~finite):
            self.dead.add(
                batch.ids[i],
                "invalid_vector",
                "product vector has non-finite values (NaN or inf)",
                {"product_id": batch.ids[i], "product_name": batch.texts[i], **batch.payloads[i]},
            )
        rows = np.flatnonzero(finite)
        if len(rows) == 0:
            return []
        payloads = [batch.payloads[i] for i in rows]
        options = self.options
        filtered = options.match_fields or options.keyword_filter
        started = time.monotonic()
        hits = search(
            self.qdrant,
            self.collection,
            batch.vectors[rows],
            self.search,
            query_filters=_filters(options, payloads) if filtered else None,
            retry=self.retry,
        )
        self.stats.search_seconds += time.monotonic() - started
        self.stats.searched += len(rows)
        docs = []
        for i, payload, product_hits in zip(rows, payloads, hits, strict=True):
            keywords = linked_keywords(_best(product_hits, options.top_k))
            self.stats.empty += not keywords
            self.stats.keywords += len(keywords)
            doc = product_document(
                batch.ids[i],
                batch.texts[i],
                batch.content_hashes[i],
                payload,
                keywords,
                self.stamp,
            )
            docs.append((batch.ids[i], doc, partition_version(payload["dt"])))
        return docs


def _search_options(options: LinkOptions, meta: Mapping[str, str], batch_size: int) -> SearchOptions:
    fetch = options.top_k + TIE_MARGIN
    return SearchOptions(
        top_k=fetch,
        score_threshold=options.score_threshold,
        hnsw_ef=None if options.hnsw_ef is None else max(options.hnsw_ef, fetch),
        exact=options.exact,
        batch_size=batch_size,
        model_name=meta["model_name"],
        model_version=meta["model_version"],
    )


def link_chunk(
    embedded: dict,
    run_dir: str,
    options: LinkOptions,
    prepared: Mapping[str, Any],
    qdrant_settings: Any = None,
    es_settings: Any = None,
) -> dict[str, Any]:
    """Link one staged product chunk: top-K keywords from Qdrant -> product documents in ES.

    Streams the chunk ``write_batch`` products at a time (search, then bulk), so memory does not
    grow with the chunk. Qdrant failing past its retries fails the task (Airflow retries it; the
    re-run overwrites the same documents); ES item failures are dead-lettered with ES's reason.
    """
    from embedding_pipeline.stores.elasticsearch.bulk import BulkOptions, bulk_index
    from embedding_pipeline.stores.elasticsearch.client import open_es
    from embedding_pipeline.stores.elasticsearch.settings import EsSettings
    from embedding_pipeline.stores.qdrant.client import open_client
    from embedding_pipeline.stores.qdrant.settings import QdrantSettings

    if not embedded["staged"]:
        return StageResult(STAGE, embedded["chunk"]).to_xcom()
    started = time.monotonic()
    path = as_path(embedded["staged"])
    meta = staged_metadata(path)
    if (meta["model_name"], meta["model_version"]) != (
        prepared["model_name"],
        str(prepared["model_version"]),
    ):
        raise LinkSetupError(
            f"staged chunk {path} was embedded with {meta['model_name']} v{meta['model_version']}, "
            f"but this run links with {prepared['model_name']} v{prepared['model_version']}"
        )
    qdrant_settings = qdrant_settings or QdrantSettings.from_env()
    es_settings = es_settings or EsSettings.from_env()
    dead = DeadLetterWriter(as_path(run_dir), STAGE, embedded["chunk"])
    bulk = BulkOptions(
        chunk_docs=es_settings.bulk_chunk_docs,
        max_bytes=es_settings.bulk_max_bytes,
        version_type="external_gte",
    )
    with open_client(qdrant_settings) as qdrant, open_es(es_settings) as es:
        linker = _Linker(
            qdrant,
            options,
            prepared["keyword_collection"],
            _search_options(options, meta, qdrant_settings.search_batch),
            qdrant_settings.retry,
            LinkStamp(
                meta["model_name"],
                int(meta["model_version"]),
                datetime.now(UTC).isoformat(),
                options.link_record(prepared["keyword_collection"]),
            ),
            dead,
        )
        stats = linker.stats
        batches = (linker.documents(batch) for batch in iter_staged(path, options.write_batch))
        es_started = time.monotonic()
        counts = bulk_index(es, options.product_alias, batches, dead, bulk)
        # The generator runs inside bulk_index: take the search time out of the write time.
        write_seconds = time.monotonic() - es_started - stats.search_seconds
    invalid = len(dead) - counts.dead_lettered  # dead-lettered before ES saw them
    result = chunk_result(
        STAGE,
        embedded["chunk"],
        counts.rows_in + invalid,
        counts.indexed + counts.superseded,
        dead,
        started,
        {
            "searched": stats.searched,
            "written": counts.indexed,
            "superseded": counts.superseded,
            "empty_links": stats.empty,
            "keywords_linked": stats.keywords,
            "invalid_vectors": invalid,
            "search_seconds": round(stats.search_seconds, 3),
            "write_seconds": round(write_seconds, 3),
            "retried_items": counts.retried_items,
        },
    )
    log.info(
        "link %s: %d products, %d written, %d superseded, %d without keywords, %d dead-lettered in %.1fs",
        embedded["chunk"],
        result.rows_in,
        counts.indexed,
        counts.superseded,
        stats.empty,
        result.dead_lettered,
        result.seconds,
    )
    return result.to_xcom()
