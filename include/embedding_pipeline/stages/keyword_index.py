"""The keyword-index pipeline as plain functions, one per DAG task.

    plan (partition_runs) -> prepare_sinks -> embed (mapped) -> qdrant / es (mapped, in parallel)
               -> finish_sinks (teardown) -> finalize

Everything a task passes on is small: chunk specs, file paths, and ``StageResult`` counts. The run
directory (``<work_dir>/runs/<dag_id>/<run_id>``, see :mod:`partition_runs`) holds staged vectors,
dead letters and the report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from embedding_pipeline.runs.accounting import StageResult
from embedding_pipeline.runs.dead_letter import DeadLetterWriter
from embedding_pipeline.runs.partitions import KEYWORDS, Chunk
from embedding_pipeline.runs.report import finalize_run
from embedding_pipeline.runs.storage import as_path
from embedding_pipeline.serving.client import EmbeddingClient
from embedding_pipeline.settings import ServerSettings
from embedding_pipeline.stages.embed import embed_chunk

log = logging.getLogger(__name__)
KIND = "keyword"


@dataclass(frozen=True)
class Targets:
    qdrant: bool = True
    es: bool = True
    qdrant_alias: str = "keywords"
    es_alias: str = "keywords"


def _client(settings: ServerSettings | None, model_name: str) -> EmbeddingClient:
    return EmbeddingClient((settings or ServerSettings.from_env()).with_overrides(model_name=model_name))


def _es_client(es_settings: Any) -> Any:
    from embedding_pipeline.es_sink import open_es

    return open_es(es_settings)


def prepare_sinks(
    targets: Targets, model: dict[str, Any], qdrant_settings: Any = None, es_settings: Any = None
) -> dict[str, Any]:
    """Create collection/index behind their aliases (if missing) and switch ES to bulk-load settings."""
    prepared: dict[str, Any] = {}
    if targets.qdrant:
        from embedding_pipeline.qdrant_sink import ensure_collection, open_client

        with open_client(qdrant_settings) as client:
            target = ensure_collection(
                client,
                targets.qdrant_alias,
                dim=model["dim"],
                model_name=model["model_name"],
                model_version=model["model_version"],
            )
        prepared["qdrant_collection"] = target.name
    if targets.es:
        from embedding_pipeline.es_sink import begin_bulk_load, ensure_keyword_index

        with _es_client(es_settings) as es:
            target = ensure_keyword_index(
                es,
                targets.es_alias,
                model_name=model["model_name"],
                model_version=model["model_version"],
                dim=model["dim"],
            )
            prepared["es_index"] = target.index
            prepared["es_previous_settings"] = begin_bulk_load(es, targets.es_alias)
    return prepared


def finish_sinks(targets: Targets, prepared: dict[str, Any] | None, es_settings: Any = None) -> None:
    """Teardown: restore ES refresh/replica settings (also when loads failed)."""
    if targets.es:
        from embedding_pipeline.es_sink import end_bulk_load, write_index

        with _es_client(es_settings) as es:
            if prepared is None and write_index(es, targets.es_alias) is None:
                return  # setup failed before the index existed: nothing to restore
            end_bulk_load(es, targets.es_alias, (prepared or {}).get("es_previous_settings"))


def embed(
    chunk: dict, run_dir: str, model_name: str, settings: ServerSettings | None = None
) -> dict[str, Any]:
    with _client(settings, model_name) as client:
        output = embed_chunk(Chunk.from_xcom(chunk), KEYWORDS, KIND, client, as_path(run_dir), role="passage")
    return {"result": output.result.to_xcom(), "staged": output.staged_path, "chunk": chunk["chunk_id"]}


def _empty(stage: str, embedded: dict) -> dict:
    return StageResult(stage, embedded["chunk"]).to_xcom()


def write_qdrant(embedded: dict, run_dir: str, targets: Targets, qdrant_settings: Any = None) -> dict:
    if not targets.qdrant or not embedded["staged"]:
        return _empty("qdrant_upsert", embedded)
    from embedding_pipeline.qdrant_sink import QdrantSettings, open_client, upsert_chunk

    settings = qdrant_settings or QdrantSettings.from_env()
    dead = DeadLetterWriter(as_path(run_dir), "qdrant", embedded["chunk"])
    with open_client(settings) as client:
        result = upsert_chunk(
            client,
            targets.qdrant_alias,
            embedded["staged"],
            dead,
            batch_size=settings.upsert_batch,
            max_retries=settings.max_retries,
            backoff_initial_s=settings.backoff_initial_s,
            backoff_max_s=settings.backoff_max_s,
        )
    return result.to_xcom()


def write_es(embedded: dict, run_dir: str, targets: Targets, es_settings: Any = None) -> dict:
    if not targets.es or not embedded["staged"]:
        return _empty("es_index", embedded)
    from embedding_pipeline.es_sink import EsSettings, index_keyword_chunk

    settings = es_settings or EsSettings.from_env()
    dead = DeadLetterWriter(as_path(run_dir), "es", embedded["chunk"])
    with _es_client(settings) as es:
        result = index_keyword_chunk(
            es,
            targets.es_alias,
            embedded["staged"],
            dead,
            chunk_docs=settings.bulk_chunk_docs,
            max_bytes=settings.bulk_max_bytes,
        )
    return result.to_xcom()


def finalize(
    planned: dict,
    embedded: list[dict],
    qdrant: list[dict],
    es: list[dict],
    targets: Targets,
    meta: dict[str, Any],
    max_dead_letter_ratio: float,
) -> dict[str, Any]:
    sinks: dict[str, list[dict]] = {}
    if targets.qdrant:
        sinks["qdrant"] = qdrant
    if targets.es:
        sinks["es"] = es
    return finalize_run(planned, embedded, sinks, meta, max_dead_letter_ratio)
