"""The keyword-index stage as plain functions, one per DAG task.

    plan (runs.plan) -> prepare_sinks -> embed (mapped) -> qdrant / es (mapped, in parallel)
               -> finish_sinks (teardown) -> finalize

Everything a task passes on is small: chunk specs, file paths, and ``StageResult`` counts. The run
directory (``<work_dir>/runs/<dag_id>/<run_id>``, see :mod:`embedding_pipeline.runs.plan`) holds
staged vectors, dead letters and the report. Store clients are imported inside the functions that
use them, so a run that writes only one store never loads the other's client.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedding_pipeline.generations.agreement import check_run
from embedding_pipeline.generations.cutover import gate_generation
from embedding_pipeline.generations.lifecycle import GenerationPlan
from embedding_pipeline.generations.rules import Publish
from embedding_pipeline.runs.accounting import StageResult, chunk_result
from embedding_pipeline.runs.changes import Changes, commit_changes, prepare_changes
from embedding_pipeline.runs.dead_letter import DeadLetterWriter
from embedding_pipeline.runs.input_kinds import InputSpec
from embedding_pipeline.runs.partitions import KEYWORDS, partition_version
from embedding_pipeline.runs.plan import ModelIdentity, Planned
from embedding_pipeline.runs.progress import Progress
from embedding_pipeline.runs.report import finalize_run
from embedding_pipeline.runs.staging import DELETE, iter_staged_rows, staged_metadata, staged_row_count
from embedding_pipeline.runs.state_db import StateSettings, engine_for, state_settings
from embedding_pipeline.runs.storage import as_path
from embedding_pipeline.settings import ServerSettings
from embedding_pipeline.stages.embed import EmbedSpec, embed_task
from embedding_pipeline.stages.keywords.checks import KEYWORD_CHECKS
from embedding_pipeline.stages.keywords.documents import (
    KEYWORD_FIELD_TYPES,
    KEYWORD_POINTS,
    ensure_keyword_index,
    keyword_document,
)
from embedding_pipeline.stages.names import KEYWORD_ALIAS
from embedding_pipeline.stores.protocol import StoreAlias
from embedding_pipeline.stores.registry import StoreSettings, settings_of

if TYPE_CHECKING:
    from embedding_pipeline.stores.elasticsearch.bulk import BulkDoc, BulkOptions
    from embedding_pipeline.stores.elasticsearch.settings import EsSettings
    from embedding_pipeline.stores.qdrant.settings import QdrantSettings

log = logging.getLogger(__name__)
KIND = "keyword"
ROLE = "passage"
ES_STAGE = "es_index"
EMBED_SPEC = EmbedSpec(KEYWORDS, KIND, ROLE, KEYWORD_FIELD_TYPES)


@dataclass(frozen=True)
class KeywordStores:
    """Which stores a run writes, and the alias of each."""

    qdrant: bool = True
    es: bool = True
    qdrant_alias: str = KEYWORD_ALIAS
    es_alias: str = KEYWORD_ALIAS

    def systems(self) -> list[str]:
        """The store systems a run writes."""
        return [system for system, on in (("qdrant", self.qdrant), ("es", self.es)) if on]


class KeywordPrepared(ModelIdentity, Changes, total=False):
    """What prepare_sinks hands every later task (XCom): the model, the physical names the writers
    address, the generation's state and planned deletes, the keyword change log, and what the
    teardown restores (a live index's bulk-load settings, or a full rebuild's generation)."""

    qdrant_collection: str
    es_index: str
    change_log: str  # the log's name: the keyword collection
    es_previous_settings: dict[str, Any]
    generation: GenerationPlan


def aliases(targets: KeywordStores) -> list[StoreAlias]:
    """The aliases this stage writes: what a full rebuild builds a generation of and swaps."""
    stores = [StoreAlias("qdrant", targets.qdrant_alias)] if targets.qdrant else []
    return stores + ([StoreAlias("es", targets.es_alias)] if targets.es else [])


def prepare_sinks(
    targets: KeywordStores,
    model: ModelIdentity,
    planned: Planned,
    spec: InputSpec,
    settings: StoreSettings | None = None,
    *,
    full: bool = False,
) -> KeywordPrepared:
    """Create collection/index behind their aliases (if missing) - or, for a full rebuild, the next
    generation of both beside the live one, in bulk-load settings - plan this run's deletes against
    the generation's state (the guard fails the run here, before anything is written), and switch
    a live index to bulk-load settings. Writers address the physical names returned here, so an
    alias moving mid-run cannot split a run across generations."""
    from embedding_pipeline.generations.lifecycle import begin_generation
    from embedding_pipeline.stages.keywords.documents import keyword_mappings
    from embedding_pipeline.stores.elasticsearch.bulk_load import begin_bulk_load
    from embedding_pipeline.stores.registry import open_stores

    identity = {key: model[key] for key in ("model_name", "model_version", "dim")}
    prepared: KeywordPrepared = {**model}  # type: ignore[typeddict-item]
    state = state_settings(settings)
    engine_for(state)  # an unreachable state database fails the run here, before any store is touched
    with open_stores(settings, targets.systems()) as stores:
        if full:
            prepared["generation"] = begin_generation(
                stores,
                aliases(targets),
                planned,
                {"qdrant": KEYWORD_POINTS, "es": keyword_mappings(**identity)},
                identity,
            )
            names = prepared["generation"]["new"]
            if targets.qdrant:
                prepared["qdrant_collection"] = names[f"qdrant:{targets.qdrant_alias}"]
            if targets.es:
                prepared["es_index"] = names[f"es:{targets.es_alias}"]
        else:
            if targets.qdrant:
                from embedding_pipeline.stores.qdrant.collections import ensure_collection

                target = ensure_collection(
                    stores.client("qdrant"), targets.qdrant_alias, **identity, schema=KEYWORD_POINTS
                )
                prepared["qdrant_collection"] = target.name
            if targets.es:
                index = ensure_keyword_index(stores.client("es"), targets.es_alias, **identity).index
                prepared["es_index"] = index
        names = {"qdrant": prepared.get("qdrant_collection"), "es": prepared.get("es_index")}
        prepared.update(
            prepare_changes(
                KEYWORDS.name, names, {**model, "role": ROLE}, planned, spec, "the keyword generation", state
            )
        )
        if targets.qdrant:  # the product links follow the keyword collection's changes
            prepared["change_log"] = prepared["qdrant_collection"]
        if targets.es and not full:
            prepared["es_previous_settings"] = begin_bulk_load(stores.client("es"), prepared["es_index"])
    return prepared


def finish_sinks(
    targets: KeywordStores, prepared: KeywordPrepared | None, settings: StoreSettings | None = None
) -> None:
    """Teardown: restore the bulk-load settings of a new generation, or of the live ES index (also
    when loads failed)."""
    from embedding_pipeline.generations.lifecycle import end_generation_load
    from embedding_pipeline.stores.elasticsearch.bulk_load import end_bulk_load
    from embedding_pipeline.stores.elasticsearch.indices import write_index
    from embedding_pipeline.stores.registry import open_stores

    generation = (prepared or {}).get("generation")
    if generation:
        with open_stores(settings, targets.systems()) as stores:
            end_generation_load(stores, generation)
        return
    if not targets.es:
        return  # local-mode Qdrant is costly to open, and an incremental run changed nothing there
    with open_stores(settings, ["es"]) as stores:
        es = stores.client("es")
        if prepared is None and write_index(es, targets.es_alias) is None:
            return  # setup failed before the index existed: nothing to restore
        previous = (prepared or {}).get("es_previous_settings")
        end_bulk_load(es, (previous or {}).get("index") or targets.es_alias, previous)


def finalize(
    planned: Planned,
    prepared: KeywordPrepared,
    embedded: list[dict[str, Any]],
    sinks: dict[str, list[dict[str, Any]]],
    meta: dict[str, Any],
    max_dead_letter_ratio: float,
    publish: Publish | None = None,
) -> dict[str, Any]:
    """The run report (accounting identity per store, dead-letter threshold), the check that both
    stores hold the ids the run wrote (generations.agreement), then the state commit: only a run
    whose report holds commits what it wrote. A full rebuild then gates its
    generation (``publish.rules``; generations.lifecycle), and the report shows the checks; the
    swap is :func:`~embedding_pipeline.generations.cutover.swap_generation`, after an optional
    approval."""
    publish = publish or Publish()
    report = finalize_run(planned, prepared, embedded, sinks, meta, max_dead_letter_ratio)
    names = {"qdrant": prepared.get("qdrant_collection"), "es": prepared.get("es_index")}
    report = check_run(report, planned["run_dir"], embedded, names, KIND, publish.store_settings)
    commit_changes(prepared, embedded, planned["run_dir"], state_settings(publish.store_settings))
    if prepared.get("generation"):
        report = gate_generation(report, planned["run_dir"], prepared, KIND, publish, KEYWORD_CHECKS)
    return report


def embed(
    chunk: dict,
    run_dir: str,
    prepared: KeywordPrepared,
    settings: ServerSettings | None = None,
    state: StateSettings | None = None,
) -> dict[str, Any]:
    """Embed one keyword chunk (or stage one delete chunk) against the generation's state."""
    return embed_task(chunk, run_dir, prepared, EMBED_SPEC, settings, state)


def _empty(stage: str, embedded: dict) -> dict:
    return StageResult(stage, embedded["chunk"]).to_xcom()


def write_qdrant(
    embedded: dict,
    run_dir: str,
    targets: KeywordStores,
    prepared: KeywordPrepared,
    settings: StoreSettings | None = None,
) -> dict:
    """Upsert one staged chunk into the collection prepare chose (the live one, or the new
    generation of a full rebuild)."""
    if not targets.qdrant or not embedded["staged"]:
        return _empty("qdrant_upsert", embedded)
    from embedding_pipeline.stores.qdrant.client import open_client
    from embedding_pipeline.stores.qdrant.upsert import upsert_chunk

    qdrant: QdrantSettings = settings_of(settings, "qdrant")
    dead = DeadLetterWriter(as_path(run_dir), "qdrant", embedded["chunk"])
    with open_client(qdrant) as client:
        result = upsert_chunk(
            client,
            prepared["qdrant_collection"],
            embedded["staged"],
            dead,
            schema=KEYWORD_POINTS,
            batch_size=qdrant.upsert_batch,
            retry=qdrant.retry,
        )
    return result.to_xcom()


def write_es(
    embedded: dict,
    run_dir: str,
    targets: KeywordStores,
    prepared: KeywordPrepared,
    settings: StoreSettings | None = None,
) -> dict:
    """Index one staged chunk into the index prepare chose."""
    if not targets.es or not embedded["staged"]:
        return _empty(ES_STAGE, embedded)
    from embedding_pipeline.stores.elasticsearch.bulk import BulkOptions
    from embedding_pipeline.stores.elasticsearch.client import open_es

    es_settings: EsSettings = settings_of(settings, "es")
    dead = DeadLetterWriter(as_path(run_dir), "es", embedded["chunk"])
    options = BulkOptions(chunk_docs=es_settings.bulk_chunk_docs, max_bytes=es_settings.bulk_max_bytes)
    with open_es(es_settings) as es:
        result = index_keyword_chunk(es, prepared["es_index"], embedded["staged"], dead, options)
    return result.to_xcom()


def index_keyword_chunk(
    es: Any,
    alias: str,
    staged_path: Path | str,
    dead_letters: DeadLetterWriter,
    options: BulkOptions | None = None,
) -> StageResult:
    """Index one staged keyword chunk into ``alias``; flush the dead letters; return the accounting.

    The chunk's model (staged metadata) must match the index ``_meta``: documents of another model
    belong in another generation. ``_id`` is the keyword id, so a re-run overwrites; the version is
    the row's ``dt`` (:func:`partition_version`), so a keyword id found on several dates keeps its
    latest date's document whatever order chunks are written in (the older write counts as indexed,
    ``superseded``). ``options`` (default: ``BulkOptions()``) sizes and retries the bulk requests;
    their ``version_type`` is always ``external_gte``.
    """
    from embedding_pipeline.stores.elasticsearch.bulk import BulkOptions, bulk_index
    from embedding_pipeline.stores.elasticsearch.indices import check_meta

    options = replace(options or BulkOptions(), version_type="external_gte")
    started = time.monotonic()
    path = as_path(str(staged_path))
    metadata = staged_metadata(path)
    check_meta(es, alias, metadata, f"staged chunk {path.name}")
    model_name, model_version = metadata["model_name"], int(metadata["model_version"])
    indexed_at = datetime.now(UTC).isoformat()

    version_of = functools.cache(partition_version)  # a chunk holds one dt: parse it once, not per row

    def document(text: str, chash: str, payload: dict, doc_id: str, op: str) -> dict | None:
        if op == DELETE:
            return None
        return keyword_document(
            doc_id,
            text,
            chash,
            payload,
            model_name=model_name,
            model_version=model_version,
            indexed_at=indexed_at,
        )

    def batches() -> Iterator[list[BulkDoc]]:
        for staged in iter_staged_rows(path, options.chunk_docs):  # ES stores no vectors: not read
            yield [
                (doc_id, document(text, chash, payload, doc_id, op), version_of(payload["dt"]))
                for doc_id, text, chash, payload, op in zip(
                    staged.ids,
                    staged.texts,
                    staged.content_hashes,
                    staged.payloads,
                    staged.ops,
                    strict=True,
                )
            ]

    progress = Progress(f"es_index {path.stem}", staged_row_count(path))
    counts = bulk_index(es, alias, progress.track(batches(), len), dead_letters, options)
    counted = StageResult(
        ES_STAGE,
        path.stem,
        counts.rows_in,
        indexed=counts.indexed + counts.superseded,
        deleted=counts.deleted,
        extra={
            "absent_deletes": counts.absent,
            "created": counts.created,
            "updated": counts.updated,
            "superseded": counts.superseded,
            "bulk_rounds": counts.rounds,
            "retried_items": counts.retried_items,
            "connection_retries": counts.connection_retries,
        },
    )
    result = chunk_result(counted, dead_letters, started)
    log.info(
        "es_index %s: %d in, %d indexed (%d created), %d dead-lettered %s in %.1fs",
        path.stem,
        result.rows_in,
        result.indexed,
        counts.created,
        result.dead_lettered,
        result.dead_letters_by_reason,
        result.seconds,
    )
    return result
