"""Turning batches of products into product documents: top-K keywords searched in Qdrant (dense),
Elasticsearch (lexical) or both (hybrid, fused), each product's vector, fields, list ids and entry
score kept in the product collection, and stored products read back as batches for relinking."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from qdrant_client.http import models

from embedding_pipeline.retry import RetryPolicy
from embedding_pipeline.runs.dead_letter import DeadLetterWriter
from embedding_pipeline.runs.partitions import PRODUCTS, partition_version
from embedding_pipeline.runs.staging import DELETE, UPDATE, UPSERT, StagedBatch, point_id
from embedding_pipeline.stages.products.documents import (
    KIND,
    LINKED_FIELDS,
    LinkStamp,
    linked_keywords,
    product_document,
)
from embedding_pipeline.stages.products.fusion import TIE_MARGIN, best, rrf
from embedding_pipeline.stages.products.maintenance import entry_score
from embedding_pipeline.stages.products.options import LinkOptions, keyword_conditions
from embedding_pipeline.stores.qdrant.search import Hit, SearchOptions, search


def _filters(options: LinkOptions, payloads: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """Per product: the static keyword filter plus "same <field> as this product" (null: no condition)."""
    return [keyword_conditions(options.keyword_filter, options.match_fields, p) for p in payloads]


@dataclass
class LinkStats:
    searched: int = 0
    empty: int = 0
    keywords: int = 0
    search_seconds: float = 0.0
    points_seconds: float = 0.0  # the product vectors written into Qdrant
    deleted: int = 0
    unchanged_lists: int = 0
    dropped_deleted_keywords: int = 0
    missing: int = 0  # relink: products deleted since the relink was planned


@dataclass
class Linker:
    """Turns staged product batches into product documents (top-K keywords searched in Qdrant)
    and keeps the product vector collection in step: each linked product's vector, fields, list
    ids and entry score; deleted products removed from both stores."""

    qdrant: Any
    es: Any  # lexical and hybrid modes search the keyword text here
    options: LinkOptions
    collections: tuple[str, str]  # (keyword, product)
    search: SearchOptions
    retry: RetryPolicy
    stamp: LinkStamp
    dead: DeadLetterWriter
    deleted_keywords: frozenset[str] = frozenset()
    previous: dict[str, list[str]] = field(default_factory=dict)  # relink: the lists being replaced
    stats: LinkStats = field(default_factory=LinkStats)

    def documents(self, batch: StagedBatch) -> list[tuple[str, dict[str, Any] | None, int]]:
        """The batch's ES actions: product documents with their lists, and deletions."""
        from embedding_pipeline.stores.qdrant import points

        docs: list[tuple[str, dict[str, Any] | None, int]] = []
        removed = [i for i, op in enumerate(batch.ops) if op == DELETE]
        if removed:
            points.delete(self.qdrant, self.collections[1], [batch.point_ids[i] for i in removed], self.retry)
            docs += [(batch.ids[i], None, partition_version(batch.payloads[i]["dt"])) for i in removed]
            self.stats.deleted += len(removed)
        vectors = self._vectors(batch)
        finite = np.isfinite(vectors).all(axis=1)
        for i in np.flatnonzero(~finite):
            if batch.ops[i] == DELETE:
                continue
            self.dead.add(
                batch.ids[i],
                "invalid_vector",
                "product vector has non-finite values (NaN or inf), or none is stored for a "
                "fields-only change",
                {"product_id": batch.ids[i], "product_name": batch.texts[i], **batch.payloads[i]},
            )
        rows = [i for i in np.flatnonzero(finite) if batch.ops[i] != DELETE]
        if rows:
            docs += self._link(batch, vectors, rows)
        return docs

    def _vectors(self, batch: StagedBatch) -> np.ndarray:
        """The batch's vectors; a fields-only change was staged without one: its stored vector
        (NaN when none is stored, which dead-letters the row)."""
        from embedding_pipeline.stores.qdrant import points

        vectors = batch.vectors.copy()
        updates = [i for i, op in enumerate(batch.ops) if op == UPDATE]
        if updates:
            stored = points.retrieve(
                self.qdrant, self.collections[1], [batch.point_ids[i] for i in updates], retry=self.retry
            )
            for i in updates:
                record = stored.get(batch.point_ids[i])
                vectors[i] = record[1] if record is not None else np.nan
        return vectors

    def _link(
        self, batch: StagedBatch, vectors: np.ndarray, rows: list[int]
    ) -> list[tuple[str, dict[str, Any], int]]:
        from embedding_pipeline.stores.qdrant import points

        payloads = [batch.payloads[i] for i in rows]
        options = self.options
        filtered = options.match_fields or options.keyword_filter
        filters = _filters(options, payloads) if filtered else None
        started = time.monotonic()
        if options.link_mode == "lexical":
            dense: list[list[Hit]] = [[] for _ in rows]
        else:
            dense = search(
                self.qdrant,
                self.collections[0],
                vectors[rows],
                self.search,
                query_filters=filters,
                retry=self.retry,
            )
        if options.link_mode == "dense":
            ranked = [best(hits, options.top_k) for hits in dense]
        else:
            lexical = self._lexical([batch.texts[i] for i in rows], filters)
            depth = options.ranking_depth
            ranked = [
                rrf(
                    [(best(d, depth), options.dense_weight), (x, options.lexical_weight)],
                    options.rrf_k,
                    options.top_k,
                )
                for d, x in zip(dense, lexical, strict=True)
            ]
        self.stats.search_seconds += time.monotonic() - started
        self.stats.searched += len(rows)
        docs, stored = [], []
        for i, payload, product_ranked in zip(rows, payloads, ranked, strict=True):
            keywords = linked_keywords(product_ranked)
            ids = [k["keyword_id"] for k in keywords]
            self._count(batch.ids[i], ids)
            doc = product_document(
                batch.ids[i], batch.texts[i], batch.content_hashes[i], payload, keywords, self.stamp
            )
            version = partition_version(payload["dt"])
            docs.append((batch.ids[i], doc, version))
            entry = entry_score([k["score"] for k in keywords], options.top_k, options.score_threshold)
            point_payload = {
                **payload,
                "product_id": batch.ids[i],
                "product_name": batch.texts[i],
                "content_hash": batch.content_hashes[i],
                "model_name": self.stamp.model_name,
                "model_version": self.stamp.model_version,
                "dt_version": version,
                "keyword_ids": ids,
                "entry_score": entry,
            }
            stored.append(
                models.PointStruct(id=batch.point_ids[i], vector=vectors[i].tolist(), payload=point_payload)
            )
        started = time.monotonic()
        points.write(self.qdrant, self.collections[1], stored, self.retry)
        self.stats.points_seconds += time.monotonic() - started
        return docs

    def _lexical(self, texts: list[str], filters: list[dict[str, Any] | None] | None) -> list[list[Hit]]:
        """BM25 of each product name over the keyword text in Elasticsearch, best first (ties by
        keyword id, as ``_best`` orders dense hits), ``ranking_depth`` deep."""
        from embedding_pipeline.stores.elasticsearch.read import match_many

        fetch = self.options.ranking_depth + TIE_MARGIN
        found = match_many(
            self.es, self.options.keyword_index, "keyword", texts, fetch, filters, ["keyword_id", "keyword"]
        )
        return [
            best([Hit(d, float(d["_score"])) for d in docs], self.options.ranking_depth) for docs in found
        ]

    def _count(self, product_id: str, keyword_ids: list[str]) -> None:
        self.stats.empty += not keyword_ids
        self.stats.keywords += len(keyword_ids)
        before = self.previous.get(product_id)
        if before is not None:
            self.stats.unchanged_lists += before == keyword_ids
            self.stats.dropped_deleted_keywords += len(set(before) & self.deleted_keywords)


def stored_batches(
    qdrant: Any, product_collection: str, ids: list[str], batch_size: int, linker: Linker
) -> Iterator[StagedBatch]:
    """Stored products as staged batches (vector, text, fields from the product collection), for
    relinking without re-embedding; products deleted meanwhile are counted and skipped."""
    from embedding_pipeline.stores.qdrant import points

    for start in range(0, len(ids), batch_size):
        wanted = [point_id(KIND, i) for i in ids[start : start + batch_size]]
        stored = points.retrieve(qdrant, product_collection, wanted, retry=linker.retry)
        linker.stats.missing += len(wanted) - len(stored)
        records = [stored[p] for p in wanted if p in stored]
        if not records:
            continue
        fields = (*PRODUCTS.stored_columns, "dt")
        for _, _, payload in records:
            linker.previous[str(payload["product_id"])] = list(payload.get("keyword_ids") or [])
        yield StagedBatch(
            ids=[str(p["product_id"]) for _, _, p in records],
            texts=[p["product_name"] for _, _, p in records],
            content_hashes=[p.get("content_hash", "") for _, _, p in records],
            payloads=[{k: p[k] for k in fields if p.get(k) is not None} for _, _, p in records],
            ops=[UPSERT] * len(records),
            point_ids=[pid for pid, _, _ in records],
            vectors=np.stack([vector for _, vector, _ in records]),
        )


def search_options(options: LinkOptions, meta: Mapping[str, str], batch_size: int) -> SearchOptions:
    fetch = options.ranking_depth + TIE_MARGIN
    return SearchOptions(
        top_k=fetch,
        score_threshold=options.score_threshold,
        hnsw_ef=None if options.hnsw_ef is None else max(options.hnsw_ef, fetch),
        exact=options.exact,
        batch_size=batch_size,
        model_name=meta["model_name"],
        model_version=meta["model_version"],
        with_payload=LINKED_FIELDS,
    )
