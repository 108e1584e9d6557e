"""The keyword-index pipeline as plain functions, one per DAG task.

    partitions -> plan -> prepare_sinks -> embed (mapped) -> qdrant / es (mapped, in parallel)
               -> finish_sinks (teardown) -> finalize

Everything a task passes on is small: chunk specs, file paths, and ``StageResult`` counts. The run
directory (``<work_dir>/runs/<dag_id>/<run_id>``) holds staged vectors, dead letters and the report.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from embedding_pipeline.accounting import StageResult
from embedding_pipeline.dead_letter import DeadLetterWriter
from embedding_pipeline.embed_stage import embed_chunk
from embedding_pipeline.embedding_client import EmbeddingClient
from embedding_pipeline.errors import ConfigError, PipelineError
from embedding_pipeline.partitions import (
    KEYWORDS,
    Chunk,
    SchemaError,
    first_occurrences,
    parse_dt,
    partition_dir,
    partition_files,
)
from embedding_pipeline.partitions import plan_chunks as plan_partition
from embedding_pipeline.run_report import finalize as write_report
from embedding_pipeline.settings import ServerSettings
from embedding_pipeline.storage import StoragePath, as_path, runs_root, write_text

log = logging.getLogger(__name__)
KIND = "keyword"
MAX_RANGE_DAYS = 366


class MissingPartitionError(PipelineError):
    """The requested partition does not exist and the run was told to fail on that."""


@dataclass(frozen=True)
class Targets:
    qdrant: bool = True
    es: bool = True
    qdrant_alias: str = "keywords"
    es_alias: str = "keywords"


def run_dir_for(dag_id: str, run_id: str) -> StoragePath:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)
    return runs_root() / dag_id / safe


def resolve_partitions(
    dt: str | None, dt_end: str | None, data_interval_start: Any, run_after: Any
) -> list[str]:
    """Which ``dt`` partitions this run covers.

    An explicit ``dt`` (and optional ``dt_end``, inclusive) wins. Otherwise the data interval's start
    date: with ``CronDataIntervalTimetable("0 1 * * *")`` the run at D+1 01:00 covers day D, and
    ``airflow backfill create`` gives each logical date its own D. A manual run with no interval
    (Airflow 3 allows ``logical_date=None``) processes the day before ``run_after``.
    """
    if dt_end and not dt:
        raise ConfigError("dt_end needs dt (the first partition of the range)")
    if dt:
        first = date.fromisoformat(parse_dt(dt))
        last = date.fromisoformat(parse_dt(dt_end)) if dt_end else first
        if last < first:
            raise ConfigError(f"dt_end {last} is before dt {first}")
        if (last - first).days >= MAX_RANGE_DAYS:
            raise ConfigError(f"a range covers at most {MAX_RANGE_DAYS} days; use a backfill for more")
        return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
    if data_interval_start is not None:
        return [data_interval_start.date().isoformat()]
    if run_after is None:
        raise ConfigError("no dt Param, no data interval and no run_after: cannot choose a partition")
    return [(run_after.date() - timedelta(days=1)).isoformat()]


def plan(
    input_root: Path,
    dts: list[str],
    run_dir: Path,
    chunk_rows: int,
    max_chunks: int,
    missing_partition: str = "skip",
    bad_files: str = "fail",
) -> dict[str, Any]:
    """Plan chunks over all partitions (``max_chunks`` in total) and record rejected/missing inputs."""
    if missing_partition not in ("skip", "fail") or bad_files not in ("fail", "dead_letter"):
        raise ConfigError("missing_partition must be skip|fail and bad_files fail|dead_letter")
    dead = DeadLetterWriter(run_dir, "plan", "files")
    chunks: list[Chunk] = []
    missing: list[str] = []
    per_partition = max(1, max_chunks // max(1, len(dts)))
    for dt in dts:
        directory = partition_dir(input_root, KEYWORDS, dt)
        files = partition_files(directory)
        if not files:
            if missing_partition == "fail":
                raise MissingPartitionError(f"partition {directory} has no data files")
            log.warning("partition %s is missing or empty: nothing to index for %s", directory, dt)
            missing.append(dt)
            continue
        usable = []
        for path in files:
            try:
                plan_partition([path], KEYWORDS, dt, chunk_rows, 1)  # validates the schema, cheap
                usable.append(path)
            except SchemaError as exc:
                if bad_files == "fail":
                    raise
                dead.add(str(path), "bad_file", str(exc), {"dt": dt, "path": str(path)})
        # Always written (even empty): with it, embed tasks need no per-chunk set of seen ids, so
        # their memory does not grow with the chunk size.
        duplicates_path = run_dir / "duplicates" / f"{dt}.json"
        write_text(duplicates_path, json.dumps(first_occurrences(usable, KEYWORDS)))
        chunks.extend(
            replace(chunk, duplicates_path=str(duplicates_path))
            for chunk in plan_partition(usable, KEYWORDS, dt, chunk_rows, per_partition)
        )
    return {
        "run_dir": str(run_dir),
        "partitions": dts,
        "missing_partitions": missing,
        "rejected_files": len(dead),
        "rejected_files_path": dead.flush(),
        "chunks": [chunk.to_xcom() for chunk in chunks],
    }


def _client(settings: ServerSettings | None, model_name: str) -> EmbeddingClient:
    return EmbeddingClient((settings or ServerSettings.from_env()).with_overrides(model_name=model_name))


def model_info(settings: ServerSettings | None, model_name: str) -> dict[str, Any]:
    """Name, version and dim of the published model the run embeds with (read from the repository)."""
    from embedding_pipeline.model_repository import latest_version

    settings = (settings or ServerSettings.from_env()).with_overrides(model_name=model_name)
    published = latest_version(settings.model_repository, model_name)
    return {
        "model_name": model_name,
        "model_version": published.version,
        "dim": int(published.metadata["dim"]),
    }


@contextmanager
def _es_client(es_settings: Any) -> Iterator[Any]:
    from embedding_pipeline.es_sink import EsSettings, make_client

    es = make_client(es_settings or EsSettings.from_env())
    try:
        yield es
    finally:
        es.close()


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
        from embedding_pipeline.es_sink import end_bulk_load

        with _es_client(es_settings) as es:
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
    sinks: dict[str, list[StageResult]] = {}
    if targets.qdrant:
        sinks["qdrant"] = [StageResult.from_xcom(r) for r in qdrant]
    if targets.es:
        sinks["es"] = [StageResult.from_xcom(r) for r in es]
    meta = {
        **meta,
        "partitions": planned["partitions"],
        "missing_partitions": planned["missing_partitions"],
        "rejected_files": planned["rejected_files"],
        "chunks": len(planned["chunks"]),
    }
    return write_report(
        as_path(planned["run_dir"]),
        [StageResult.from_xcom(e["result"]) for e in embedded],
        sinks,
        meta,
        max_dead_letter_ratio,
    )
