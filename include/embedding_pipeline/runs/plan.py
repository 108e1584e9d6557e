"""What every indexing stage does first: choose ``dt`` partitions, plan bounded chunks, name the run.

Shared by the keyword index and the product link stages (and by their DAGs and the chain): which
partitions a run covers (Params, data interval, or the day before ``run_after``), the run directory
holding staged vectors, dead letters and the report, the chunk plan over all partitions, and the
published model a run embeds with.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from embedding_pipeline.errors import ConfigError, PipelineError
from embedding_pipeline.runs.dead_letter import DeadLetterWriter
from embedding_pipeline.runs.partitions import (
    Chunk,
    SchemaError,
    TableSpec,
    first_occurrences,
    parse_dt,
    partition_dir,
    partition_files,
)
from embedding_pipeline.runs.partitions import plan_chunks as plan_partition
from embedding_pipeline.runs.storage import StoragePath, runs_root, write_text
from embedding_pipeline.settings import ServerSettings

log = logging.getLogger(__name__)
MAX_RANGE_DAYS = 366


class MissingPartitionError(PipelineError):
    """The requested partition does not exist and the run was told to fail on that."""


def run_dir_for(dag_id: str, run_id: str, stage: str | None = None) -> StoragePath:
    """``<runs>/<dag_id>/<run_id>``, plus ``/<stage>`` when one DAG runs several stages (the chain)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)
    base = runs_root() / dag_id / safe
    return base if stage is None or stage == dag_id else base / stage


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
    table: TableSpec,
    input_root: Path,
    dts: list[str],
    run_dir: StoragePath,
    chunk_rows: int,
    max_chunks: int,
    missing_partition: str = "skip",
    bad_files: str = "fail",
) -> dict[str, Any]:
    """Plan chunks of ``table`` over all partitions (``max_chunks`` in all); record bad/missing inputs."""
    if missing_partition not in ("skip", "fail") or bad_files not in ("fail", "dead_letter"):
        raise ConfigError("missing_partition must be skip|fail and bad_files fail|dead_letter")
    dead = DeadLetterWriter(run_dir, "plan", "files")
    chunks: list[Chunk] = []
    missing: list[str] = []
    per_partition = max(1, max_chunks // max(1, len(dts)))
    for dt in dts:
        directory = partition_dir(input_root, table, dt)
        files = partition_files(directory)
        if not files:
            if missing_partition == "fail":
                raise MissingPartitionError(f"partition {directory} has no data files")
            log.warning("partition %s is missing or empty: nothing to do for %s", directory, dt)
            missing.append(dt)
            continue
        usable = []
        for path in files:
            try:
                plan_partition([path], table, dt, chunk_rows, 1)  # validates the schema, cheap
                usable.append(path)
            except SchemaError as exc:
                if bad_files == "fail":
                    raise
                dead.add(str(path), "bad_file", str(exc), {"dt": dt, "path": str(path)})
        # Always written (even empty): with it, embed tasks need no per-chunk set of seen ids, so
        # their memory does not grow with the chunk size.
        duplicates_path = run_dir / "duplicates" / f"{dt}.json"
        write_text(duplicates_path, json.dumps(first_occurrences(usable, table)))
        chunks.extend(
            replace(chunk, duplicates_path=str(duplicates_path))
            for chunk in plan_partition(usable, table, dt, chunk_rows, per_partition)
        )
    return {
        "run_dir": str(run_dir),
        "partitions": dts,
        "missing_partitions": missing,
        "rejected_files": len(dead),
        "rejected_files_path": dead.flush(),
        "chunks": [chunk.to_xcom() for chunk in chunks],
    }


def model_info(settings: ServerSettings | None, model_name: str) -> dict[str, Any]:
    """Name, version and dim of the published model the run embeds with (read from the repository)."""
    from embedding_pipeline.model.repository import latest_version

    settings = (settings or ServerSettings.from_env()).with_overrides(model_name=model_name)
    published = latest_version(settings.model_repository, model_name)
    return {
        "model_name": model_name,
        "model_version": published.version,
        "dim": int(published.metadata["dim"]),
    }
