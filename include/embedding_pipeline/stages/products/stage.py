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
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from embedding_pipeline.errors import SetupError
from embedding_pipeline.generations.agreement import check_run
from embedding_pipeline.generations.cutover import gate_generation
from embedding_pipeline.generations.lifecycle import GenerationPlan
from embedding_pipeline.generations.rules import Publish
from embedding_pipeline.model.registry import Role
from embedding_pipeline.runs.accounting import StageResult, chunk_result
from embedding_pipeline.runs.changes import Changes
from embedding_pipeline.runs.dead_letter import DeadLetterWriter
from embedding_pipeline.runs.input_kinds import InputSpec
from embedding_pipeline.runs.partitions import PRODUCTS
from embedding_pipeline.runs.plan import ModelIdentity, Planned
from embedding_pipeline.runs.progress import Progress
from embedding_pipeline.runs.staging import (
    StagedBatch,
    iter_staged,
    staged_metadata,
    staged_row_count,
)
from embedding_pipeline.runs.state import IndexState
from embedding_pipeline.runs.state_db import StateSettings, engine_for, state_settings
from embedding_pipeline.runs.storage import as_path, read_parquet
from embedding_pipeline.settings import ServerSettings
from embedding_pipeline.stages.embed import EmbedSpec, embed_task
from embedding_pipeline.stages.products.checks import product_checks
from embedding_pipeline.stages.products.documents import (
    KIND,
    PRODUCT_FIELD_TYPES,
    LinkStamp,
)
from embedding_pipeline.stages.products.linker import Linker, search_options, stored_batches
from embedding_pipeline.stages.products.options import LINK_STAGE, LinkOptions
from embedding_pipeline.stores.elasticsearch.settings import EsSettings
from embedding_pipeline.stores.protocol import StoreAlias
from embedding_pipeline.stores.qdrant.settings import QdrantSettings
from embedding_pipeline.stores.registry import StoreSettings, settings_of

log = logging.getLogger(__name__)
STAGE = LINK_STAGE
RELINK_STAGE = "relink"  # stored products relinked because keywords changed (maintenance)


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


class ProductPrepared(ModelIdentity, Changes, total=False):
    """What prepare hands every later task (XCom): the model, the keyword collection links are
    searched in, the physical names the writers address, the generation's state and planned
    deletes, the relinks keyword changes call for (``maintenance.plan_relinks``), and what the
    teardown restores. A night with nothing to link carries the model and empty chunk lists."""

    keyword_collection: str | None
    product_collection: str
    es_index: str | None
    es_previous_settings: dict[str, Any]
    generation: GenerationPlan
    relink_chunks: list[dict[str, Any]]
    relink_planned: int
    relink_reason: str | None
    keyword_changes: int
    deleted_keywords_path: str
    state_metadata: dict[str, Any] | None


def aliases(options: LinkOptions) -> list[StoreAlias]:
    """The aliases this stage writes: the product vectors (Qdrant) and documents (ES)."""
    return [StoreAlias("qdrant", options.product_alias), StoreAlias("es", options.product_alias)]


def prepare(
    options: LinkOptions,
    model: ModelIdentity,
    planned: Planned,
    spec: InputSpec,
    settings: StoreSettings | None = None,
    *,
    relink_all: bool = False,
    full: bool = False,
) -> ProductPrepared:
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
    state = state_settings(settings)
    engine_for(state)  # an unreachable state database fails the run here, before any store is touched
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
        changes = prepare_changes(PRODUCTS.name, names, role, planned, spec, "the product generation", state)
        relinks = plan_relinks(
            qdrant,
            options,
            (target.name, product_collection),
            IndexState(state, changes["state_key"]),
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
    options: LinkOptions, prepared: ProductPrepared | None, settings: StoreSettings | None = None
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
            end_bulk_load(stores.client("es"), prepared["es_index"], prepared.get("es_previous_settings"))


def embed(
    chunk: dict,
    run_dir: str,
    prepared: ProductPrepared,
    role: Role | None,
    settings: ServerSettings | None = None,
    state: StateSettings | None = None,
) -> dict[str, Any]:
    """Embed one product chunk (the keyword embed task with the products table and the query
    role), or stage one delete chunk, against the product generation's state."""
    spec = EmbedSpec(PRODUCTS, KIND, role, PRODUCT_FIELD_TYPES)
    return embed_task(chunk, run_dir, prepared, spec, settings, state)


def link_chunk(
    embedded: dict,
    run_dir: str,
    options: LinkOptions,
    prepared: ProductPrepared,
    settings: StoreSettings | None = None,
) -> dict[str, Any]:
    """Link one staged product chunk: top-K keywords from Qdrant -> product documents in ES and
    product points in Qdrant (:func:`_link`)."""
    if not embedded["staged"]:
        return StageResult(STAGE, embedded["chunk"]).to_xcom()
    path = as_path(embedded["staged"])
    _check_staged_model(path, prepared)

    def source(linker: Linker) -> tuple[Iterator[StagedBatch], int]:
        return iter_staged(path, options.write_batch), staged_row_count(path)

    return _link(STAGE, embedded["chunk"], run_dir, options, prepared, settings, source)


def relink_chunk(
    chunk: dict,
    run_dir: str,
    options: LinkOptions,
    prepared: ProductPrepared,
    settings: StoreSettings | None = None,
) -> dict[str, Any]:
    """Relink one chunk of stored products that keyword changes affect (``maintenance``): their
    vectors, names and fields come from the product collection, nothing is re-embedded."""
    ids = read_parquet(chunk["relink"])["id"].to_pylist()

    def source(linker: Linker) -> tuple[Iterator[StagedBatch], int]:
        stored = stored_batches(
            linker.qdrant, prepared["product_collection"], ids, options.write_batch, linker
        )
        return stored, len(ids)

    return _link(RELINK_STAGE, chunk["chunk"], run_dir, options, prepared, settings, source)


def _link(
    stage: str,
    chunk_id: str,
    run_dir: str,
    options: LinkOptions,
    prepared: ProductPrepared,
    settings: StoreSettings | None,
    source: Callable[[Linker], tuple[Iterator[StagedBatch], int]],
) -> dict[str, Any]:
    """Stream ``source``'s batches (``write_batch`` products at a time: search, then bulk) through
    a linker into ES, so memory does not grow with the chunk. Qdrant failing past its retries
    fails the task (Airflow retries it; the re-run overwrites the same documents); ES item
    failures are dead-lettered with ES's reason."""
    from embedding_pipeline.stores.elasticsearch.bulk import BulkOptions, bulk_index
    from embedding_pipeline.stores.elasticsearch.client import open_es
    from embedding_pipeline.stores.qdrant.client import open_client

    started = time.monotonic()
    meta = {"model_name": prepared["model_name"], "model_version": str(prepared["model_version"])}
    qdrant_settings: QdrantSettings = settings_of(settings, "qdrant")
    es_settings: EsSettings = settings_of(settings, "es")
    dead = DeadLetterWriter(as_path(run_dir), stage, chunk_id)
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
        linker = Linker(
            qdrant,
            es,
            options,
            (prepared["keyword_collection"], prepared["product_collection"]),
            search_options(options, meta, qdrant_settings.search_batch),
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
        batches_in, total = source(linker)
        progress = Progress(f"{stage} {chunk_id}", total)
        batches = (linker.documents(batch) for batch in progress.track(batches_in, lambda b: len(b.ids)))
        es_started = time.monotonic()
        counts = bulk_index(es, prepared["es_index"], batches, dead, bulk)
        # The generator runs inside bulk_index: take its searches and Qdrant writes out of the ES time.
        write_seconds = time.monotonic() - es_started - stats.search_seconds - stats.points_seconds
    invalid = len(dead) - counts.dead_lettered  # dead-lettered before ES saw them
    counted = StageResult(
        stage,
        chunk_id,
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
        chunk_id,
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
    planned: Planned,
    prepared: ProductPrepared,
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
    commit_changes(prepared, embedded, planned["run_dir"], state_settings(publish.store_settings))
    if prepared.get("generation"):
        checks = product_checks(prepared, publish.rules)
        report = gate_generation(report, planned["run_dir"], prepared, KIND, publish, checks)
    return report
