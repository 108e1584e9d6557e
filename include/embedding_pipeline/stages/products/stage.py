"""The product -> keyword link stage as plain functions, one per DAG task.

    plan (runs.plan, products table) -> prepare -> embed (mapped) -> link (mapped)
    -> relink (mapped) -> finish -> finalize

Products are chunked and embedded exactly like keywords (same planner, same embed task, same row
validation and dead letters), with the role the model family gives queries (ruri-v3
``検索クエリ: ``, e5 ``query: ``) while keywords were embedded as passages. Each ``link`` task
streams its staged chunk, asks Qdrant for the top-K keywords of a batch of products at a time
(optional score threshold, optional "same category" style filters; with ``link_mode`` lexical or
hybrid also Elasticsearch's BM25 ranking of the names, fused by ``stages.products.fusion``), and
writes one product document per product to Elasticsearch (``stages.products.documents``) and the
product's vector, fields, list ids and entry score to the product collection in Qdrant. Products
with no keyword above the threshold are stored with an empty list. ``relink`` tasks relink stored
products that keyword changes affect (``stages.products.maintenance``); incremental rules: ``runs.changes``.

Duplicates: within a partition the first occurrence of a ``product_id`` is kept and later ones are
dead-lettered (``duplicate_id``), as for keywords. Across partitions the latest ``dt`` wins,
enforced by ES external versions, so the outcome does not depend on task or backfill order; a
write that loses to a newer partition counts as linked (``superseded`` in the report).

Accounting, per run: ``rows_read == linked + unchanged + deleted + dead-lettered (embed) +
dead-lettered (link)``; relinked stored products are reported beside it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from qdrant_client.http import models

from embedding_pipeline.errors import SetupError
from embedding_pipeline.generations.agreement import check_run
from embedding_pipeline.generations.cutover import gate_generation
from embedding_pipeline.generations.rules import Publish
from embedding_pipeline.model.registry import Role
from embedding_pipeline.retry import RetryPolicy
from embedding_pipeline.runs.accounting import StageResult, chunk_result
from embedding_pipeline.runs.dead_letter import DeadLetterWriter
from embedding_pipeline.runs.input_kinds import InputSpec
from embedding_pipeline.runs.partitions import PRODUCTS, partition_version
from embedding_pipeline.runs.progress import Progress
from embedding_pipeline.runs.staging import (
    DELETE,
    UPDATE,
    UPSERT,
    StagedBatch,
    iter_staged,
    point_id,
    staged_metadata,
    staged_row_count,
)
from embedding_pipeline.runs.state import IndexState
from embedding_pipeline.runs.storage import as_path, read_parquet
from embedding_pipeline.settings import ServerSettings
from embedding_pipeline.stages.embed import embed_task
from embedding_pipeline.stages.products.checks import product_checks
from embedding_pipeline.stages.products.documents import (
    LINKED_FIELDS,
    PRODUCT_FIELD_TYPES,
    LinkStamp,
    linked_keywords,
    product_document,
)
from embedding_pipeline.stages.products.fusion import TIE_MARGIN, best, rrf
from embedding_pipeline.stages.products.maintenance import entry_score
from embedding_pipeline.stages.products.options import LINK_STAGE, LinkOptions, keyword_conditions
from embedding_pipeline.stores.elasticsearch.settings import EsSettings
from embedding_pipeline.stores.protocol import StoreAlias
from embedding_pipeline.stores.qdrant.search import Hit, SearchOptions, search
from embedding_pipeline.stores.qdrant.settings import QdrantSettings
from embedding_pipeline.stores.registry import StoreSettings, settings_of

log = logging.getLogger(__name__)
KIND = "product"
STAGE = LINK_STAGE
RELINK_STAGE = "relink"  # stored products relinked because keywords changed (link_maintenance)


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


def aliases(options: LinkOptions) -> list[StoreAlias]:
    """The aliases this stage writes: the product vectors (Qdrant) and documents (ES)."""
    return [StoreAlias("qdrant", options.product_alias), StoreAlias("es", options.product_alias)]


def prepare(
    options: LinkOptions,
    model: dict[str, Any],
    planned: dict[str, Any],
    spec: InputSpec,
    settings: StoreSettings | None = None,
    *,
    relink_all: bool = False,
    full: bool = False,
) -> dict[str, Any]:
    """Check the keyword collection, create the product index and vector collection behind their
    alias (or, for a full rebuild, their next generation beside the live one, in bulk-load
    settings), plan deletes (after the guard) and the stored products keyword changes affect, and
    start the bulk load of a live index.

    With no products to link and none linked before (a nightly run before the first data, or a
    missing partition under ``missing_partition=skip``) nothing is checked or created: the run
    ends ``no_data``. With products linked before, keyword changes are still applied.
    """
    from embedding_pipeline.generations.lifecycle import begin_generation
    from embedding_pipeline.runs.changes import prepare_changes
    from embedding_pipeline.stages.products.documents import PRODUCT_POINTS, product_mappings
    from embedding_pipeline.stages.products.maintenance import plan_relinks
    from embedding_pipeline.stores.elasticsearch.bulk_load import begin_bulk_load
    from embedding_pipeline.stores.elasticsearch.indices import ensure_index
    from embedding_pipeline.stores.qdrant.collections import ensure_collection, resolve_alias
    from embedding_pipeline.stores.registry import open_stores

    qdrant_settings: QdrantSettings = settings_of(settings, "qdrant")
    identity = {key: model[key] for key in ("model_name", "model_version", "dim")}
    with open_stores(settings) as stores:
        qdrant, es = stores.client("qdrant"), stores.client("es")
        if not full and not planned["chunks"] and resolve_alias(qdrant, options.product_alias) is None:
            return {
                **model,
                "keyword_collection": None,
                "es_index": None,
                "delete_chunks": [],
                "relink_chunks": [],
            }
        target = check_keyword_collection(qdrant, options.keyword_alias, model)
        generation, previous = None, None
        if full:
            schemas = {"qdrant": PRODUCT_POINTS, "es": product_mappings(**identity)}
            generation = begin_generation(stores, aliases(options), planned, schemas, identity)
            product_collection = generation["new"][f"qdrant:{options.product_alias}"]
            product_index = generation["new"][f"es:{options.product_alias}"]
        else:
            product_collection = ensure_collection(
                qdrant, options.product_alias, **identity, schema=PRODUCT_POINTS
            ).name
            product_index = ensure_index(es, options.product_alias, product_mappings(**identity)).index
        names = {"qdrant": product_collection, "es": product_index}
        role = {**model, "role": options.role or ""}
        changes = prepare_changes(PRODUCTS.name, names, role, planned, spec, "the product generation")
        relinks = plan_relinks(
            qdrant,
            options,
            (target.name, product_collection),
            IndexState(changes["state_path"]),
            as_path(planned["run_dir"]),
            relink_all=relink_all,
            scan=qdrant_settings.is_local,
            retry=qdrant_settings.retry,
        )
        if not full:
            previous = begin_bulk_load(es, product_index)
    return {
        **model,
        "keyword_collection": target.name,
        "product_collection": product_collection,
        "es_index": product_index,
        **({"es_previous_settings": previous} if previous else {}),
        **({"generation": generation} if generation else {}),
        **changes,
        **relinks,
    }


def finish(
    options: LinkOptions, prepared: dict[str, Any] | None, settings: StoreSettings | None = None
) -> None:
    """Teardown: restore the bulk-load settings of a new generation, or refresh/replicas of the
    live product index (also when link tasks failed)."""
    from embedding_pipeline.generations.lifecycle import end_generation_load
    from embedding_pipeline.stores.elasticsearch.bulk_load import end_bulk_load
    from embedding_pipeline.stores.registry import open_stores

    if not (prepared or {}).get("es_index"):
        return  # prepare failed before the bulk load began, or there was nothing to link
    generation = prepared.get("generation")
    with open_stores(settings, ["qdrant", "es"] if generation else ["es"]) as stores:
        if generation:
            end_generation_load(stores, generation)
        else:
            end_bulk_load(stores.client("es"), prepared["es_index"], prepared["es_previous_settings"])


def embed(
    chunk: dict,
    run_dir: str,
    prepared: dict[str, Any],
    role: Role | None,
    settings: ServerSettings | None = None,
) -> dict[str, Any]:
    """Embed one product chunk (the keyword embed task with the products table and the query
    role), or stage one delete chunk, against the product generation's state."""
    return embed_task(chunk, run_dir, prepared, PRODUCTS, KIND, role, settings, PRODUCT_FIELD_TYPES)


def _filters(options: LinkOptions, payloads: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """Per product: the static keyword filter plus "same <field> as this product" (null: no condition)."""
    return [keyword_conditions(options.keyword_filter, options.match_fields, p) for p in payloads]


@dataclass
class _LinkStats:
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
class _Linker:
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
    stats: _LinkStats = field(default_factory=_LinkStats)

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


def _relink_batches(
    qdrant: Any, product_collection: str, ids: list[str], batch_size: int, linker: _Linker
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


def _search_options(options: LinkOptions, meta: Mapping[str, str], batch_size: int) -> SearchOptions:
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


def link_chunk(
    embedded: dict,
    run_dir: str,
    options: LinkOptions,
    prepared: Mapping[str, Any],
    settings: StoreSettings | None = None,
) -> dict[str, Any]:
    """Link one staged product chunk, or relink one chunk of stored products (``relink``): top-K
    keywords from Qdrant -> product documents in ES and product points in Qdrant.

    Streams ``write_batch`` products at a time (search, then bulk), so memory does not grow with
    the chunk. Qdrant failing past its retries fails the task (Airflow retries it; the re-run
    overwrites the same documents); ES item failures are dead-lettered with ES's reason.
    """
    from embedding_pipeline.stores.elasticsearch.bulk import BulkOptions, bulk_index
    from embedding_pipeline.stores.elasticsearch.client import open_es
    from embedding_pipeline.stores.qdrant.client import open_client

    relink = embedded.get("relink")
    stage = RELINK_STAGE if relink else STAGE
    if not relink and not embedded["staged"]:
        return StageResult(stage, embedded["chunk"]).to_xcom()
    started = time.monotonic()
    meta = {"model_name": prepared["model_name"], "model_version": str(prepared["model_version"])}
    if not relink:
        _check_staged_model(as_path(embedded["staged"]), prepared)
    qdrant_settings: QdrantSettings = settings_of(settings, "qdrant")
    es_settings: EsSettings = settings_of(settings, "es")
    dead = DeadLetterWriter(as_path(run_dir), stage, embedded["chunk"])
    bulk = BulkOptions(
        chunk_docs=es_settings.bulk_chunk_docs,
        max_bytes=es_settings.bulk_max_bytes,
        version_type="external_gte",
    )
    deleted_keywords = (
        frozenset(read_parquet(prepared["deleted_keywords_path"])["id"].to_pylist())
        if prepared.get("deleted_keywords_path")
        else frozenset()
    )
    with open_client(qdrant_settings) as qdrant, open_es(es_settings) as es:
        linker = _Linker(
            qdrant,
            es,
            options,
            (prepared["keyword_collection"], prepared["product_collection"]),
            _search_options(options, meta, qdrant_settings.search_batch),
            qdrant_settings.retry,
            LinkStamp(
                meta["model_name"],
                int(meta["model_version"]),
                datetime.now(UTC).isoformat(),
                options.link_record(prepared["keyword_collection"]),
            ),
            dead,
            deleted_keywords,
        )
        stats = linker.stats
        relink_ids = read_parquet(relink)["id"].to_pylist() if relink else []
        source = (
            _relink_batches(
                qdrant,
                prepared["product_collection"],
                relink_ids,
                options.write_batch,
                linker,
            )
            if relink
            else iter_staged(as_path(embedded["staged"]), options.write_batch)
        )
        total = len(relink_ids) if relink else staged_row_count(as_path(embedded["staged"]))
        progress = Progress(f"{stage} {embedded['chunk']}", total)
        batches = (linker.documents(batch) for batch in progress.track(source, lambda b: len(b.ids)))
        es_started = time.monotonic()
        counts = bulk_index(es, prepared["es_index"], batches, dead, bulk)
        # The generator runs inside bulk_index: take its searches and Qdrant writes out of the ES time.
        write_seconds = time.monotonic() - es_started - stats.search_seconds - stats.points_seconds
    invalid = len(dead) - counts.dead_lettered  # dead-lettered before ES saw them
    counted = StageResult(
        stage,
        embedded["chunk"],
        counts.rows_in + invalid,
        indexed=counts.indexed + counts.superseded,
        deleted=counts.deleted,
        extra={
            "searched": stats.searched,
            "written": counts.indexed,
            "superseded": counts.superseded,
            "empty_links": stats.empty,
            "keywords_linked": stats.keywords,
            "invalid_vectors": invalid,
            "unchanged_lists": stats.unchanged_lists,
            "dropped_deleted_keywords": stats.dropped_deleted_keywords,
            "relink_missing": stats.missing,
            "search_seconds": round(stats.search_seconds, 3),
            "points_seconds": round(stats.points_seconds, 3),
            "write_seconds": round(write_seconds, 3),
            "retried_items": counts.retried_items,
        },
    )
    result = chunk_result(counted, dead, started)
    log.info(
        "%s %s: %d products, %d written, %d deleted, %d superseded, %d without keywords, "
        "%d dead-lettered in %.1fs",
        stage,
        embedded["chunk"],
        result.rows_in,
        counts.indexed,
        counts.deleted,
        counts.superseded,
        stats.empty,
        result.dead_lettered,
        result.seconds,
    )
    return result.to_xcom()


def _check_staged_model(path: Any, prepared: Mapping[str, Any]) -> None:
    meta = staged_metadata(path)
    if (meta["model_name"], meta["model_version"]) != (
        prepared["model_name"],
        str(prepared["model_version"]),
    ):
        raise LinkSetupError(
            f"staged chunk {path} was embedded with {meta['model_name']} v{meta['model_version']}, "
            f"but this run links with {prepared['model_name']} v{prepared['model_version']}"
        )


def finalize(
    planned: dict[str, Any],
    prepared: dict[str, Any],
    embedded: list[dict[str, Any]],
    linked: list[dict[str, Any]],
    meta: dict[str, Any],
    max_dead_letter_ratio: float,
    publish: Publish | None = None,
) -> dict[str, Any]:
    """The run report (tonight's products in the accounting identity; relinked stored products
    reported beside it), the check that the ES index and the product vectors hold the same
    products (generations.agreement), then the product state commit. A relink with dead letters keeps the
    state's change-log position, so the next run relinks the products those changes affect again.
    A full rebuild then gates its generation (link quality included); the swap follows
    (:func:`~embedding_pipeline.generations.cutover.swap_generation`)."""
    from embedding_pipeline.runs.changes import commit_changes
    from embedding_pipeline.runs.report import finalize_run, stage_summary

    tonight = [r for r in linked if r["stage"] != RELINK_STAGE]
    relinked = [StageResult.from_xcom(r) for r in linked if r["stage"] == RELINK_STAGE]
    relink = stage_summary(relinked) if relinked else None
    report = finalize_run(
        planned, prepared, embedded, {STAGE: tonight}, {**meta, "relink": relink}, max_dead_letter_ratio
    )
    publish = publish or Publish()
    names = {"qdrant": prepared.get("product_collection"), "es": prepared.get("es_index")}
    report = check_run(report, planned["run_dir"], embedded, names, KIND, publish.store_settings)
    if relink and relink["dead_lettered"]:
        prepared = {**prepared, "state_metadata": None}
    commit_changes(prepared, embedded, planned["run_dir"])
    if prepared.get("generation"):
        checks = product_checks(prepared, publish.rules)
        report = gate_generation(report, planned["run_dir"], prepared, KIND, publish, checks)
    return report
