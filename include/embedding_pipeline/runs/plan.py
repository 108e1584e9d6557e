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
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any, TypedDict

import pyarrow as pa
import pyarrow.compute as pc

from embedding_pipeline.errors import ConfigError, PipelineError
from embedding_pipeline.runs.dead_letter import DeadLetterWriter
from embedding_pipeline.runs.input_kinds import INPUT_KINDS
from embedding_pipeline.runs.partitions import (
    Chunk,
    SchemaError,
    TableSpec,
    first_occurrences,
    merge_chunks,
    parse_dt,
    partition_dir,
    partition_files,
    partition_version,
    read_keys,
)
from embedding_pipeline.runs.partitions import plan_chunks as plan_partition
from embedding_pipeline.runs.storage import (
    StoragePath,
    as_path,
    read_parquet,
    runs_root,
    write_parquet,
    write_text,
)
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


def check_range(dt: str | None, dt_end: str | None) -> tuple[date, date] | None:
    """The first and last date of an explicit ``dt`` .. ``dt_end`` range (None without ``dt``);
    ``ConfigError`` when ``dt_end`` comes without ``dt``, before it, or more than
    ``MAX_RANGE_DAYS`` after it. The first task of a run checks this, before any work."""
    if dt_end and not dt:
        raise ConfigError("dt_end needs dt (the first partition of the range)")
    if not dt:
        return None
    first = date.fromisoformat(parse_dt(dt))
    last = date.fromisoformat(parse_dt(dt_end)) if dt_end else first
    if last < first:
        raise ConfigError(f"dt_end {last} is before dt {first}")
    if (last - first).days >= MAX_RANGE_DAYS:
        raise ConfigError(f"a range covers at most {MAX_RANGE_DAYS} days; use a backfill for more")
    return first, last


def resolve_partitions(
    dt: str | None, dt_end: str | None, data_interval_start: Any, run_after: Any
) -> list[str]:
    """Which ``dt`` partitions this run covers.

    An explicit ``dt`` (and optional ``dt_end``, inclusive) wins. Otherwise the data interval's start
    date: with ``CronDataIntervalTimetable("0 1 * * *")`` the run at D+1 01:00 covers day D, and
    ``airflow backfill create`` gives each logical date its own D. A manual run with no interval
    (Airflow 3 allows ``logical_date=None``) processes the day before ``run_after``.
    """
    dates = check_range(dt, dt_end)
    if dates:
        first, last = dates
        return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
    if data_interval_start is not None:
        return [data_interval_start.date().isoformat()]
    if run_after is None:
        raise ConfigError("no dt Param, no data interval and no run_after: cannot choose a partition")
    return [(run_after.date() - timedelta(days=1)).isoformat()]


def replayed_partitions(input_root: Path, table: TableSpec, up_to: str) -> list[str]:
    """Every ``dt=`` partition of ``table`` up to ``up_to`` (inclusive), oldest first: what a full
    rebuild replays (delta input: latest dt wins per id; snapshot input: the plan keeps the
    latest). Directories whose name is not a date are ignored."""
    last = parse_dt(up_to)
    found = []
    for directory in (input_root / table.name).glob("dt=*"):
        try:
            dt = parse_dt(directory.name.removeprefix("dt="))
        except ConfigError:
            continue
        if dt <= last and directory.is_dir():
            found.append(dt)
    return sorted(found)


@dataclass(frozen=True)
class PlanRules:
    """How the plan treats its inputs: a missing partition (``skip``/``fail``), an unreadable file
    (``fail``/``dead_letter``), and what a partition means (``delta``/``snapshot``, runs.changes)."""

    missing_partition: str = "skip"
    bad_files: str = "fail"
    input_kind: str = "delta"

    def __post_init__(self) -> None:
        if self.missing_partition not in ("skip", "fail") or self.bad_files not in ("fail", "dead_letter"):
            raise ConfigError("missing_partition must be skip|fail and bad_files fail|dead_letter")
        if self.input_kind not in INPUT_KINDS:
            raise ConfigError(f"input_kind must be one of {list(INPUT_KINDS)}, got {self.input_kind!r}")


def _usable_files(
    table: TableSpec, directory: Path, dt: str, rules: PlanRules, dead: DeadLetterWriter
) -> list[Path] | None:
    """The partition's readable files; None when it is missing (or ``MissingPartitionError``)."""
    files = partition_files(directory)
    if not files:
        if rules.missing_partition == "fail":
            raise MissingPartitionError(f"partition {directory} has no data files")
        log.warning("partition %s is missing or empty: nothing to do for %s", directory, dt)
        return None
    usable = []
    for path in files:
        try:
            plan_partition([path], table, dt, 1, 1)  # validates the schema, cheap
            usable.append(path)
        except SchemaError as exc:
            if rules.bad_files == "fail":
                raise
            dead.add(str(path), "bad_file", str(exc), {"dt": dt, "path": str(path)})
    return usable


class Planned(TypedDict):
    """What a stage's plan task hands on (XCom): where the run keeps its files, the partitions it
    reads, what was missing or rejected, and the chunks the embed tasks are mapped over.
    ``owner`` (``dag_id/run_id``) is the run that holds the generation's state lease; empty for
    runs outside Airflow (the inline runner), which take no lease."""

    run_dir: str
    owner: str
    partitions: list[str]
    missing_partitions: list[str]
    superseded_partitions: list[str]
    rejected_files: int
    rejected_files_path: str | None
    partition_ids: dict[str, str]
    chunks: list[dict[str, Any]]


class ModelIdentity(TypedDict):
    """The published model a run embeds with; every stage's prepared payload starts with it."""

    model_name: str
    model_version: int
    dim: int


def plan(
    table: TableSpec,
    input_root: Path,
    dts: list[str],
    run_dir: StoragePath,
    chunk_rows: int,
    max_chunks: int,
    rules: PlanRules = PlanRules(),
    owner: str = "",
) -> Planned:
    """Plan chunks of ``table`` over all partitions (at most ``max_chunks`` in all, whatever the number
    of partitions); record bad/missing inputs.

    Per partition it also writes the ids it holds (``partition_ids/<dt>.parquet``: id, tombstone),
    which the prepare task compares with the state to plan deletes, and the ids a later partition
    of this run speaks about (``superseded/<dt>.parquet``): only an id's latest row in the run is
    embedded and written. So a replay over many dates costs the live ids, not the sum of rows; a
    delete, which cannot carry a date, never races an earlier upsert; and a later row that
    restores the stored text leaves the stores as they were. (An id whose latest row is bad goes
    to the dead letter, and its earlier rows of the run are not written either.) A snapshot run
    over several dates plans only the latest present one: it alone says what the table is.
    """
    dead = DeadLetterWriter(run_dir, "plan", "files")
    found: dict[str, list[Path]] = {}
    missing: list[str] = []
    for dt in dts:
        usable = _usable_files(table, partition_dir(input_root, table, dt), dt, rules, dead)
        if usable is None:
            missing.append(dt)
        else:
            found[dt] = usable
    superseded_partitions: list[str] = []
    if rules.input_kind == "snapshot" and len(found) > 1:
        superseded_partitions = sorted(found)[:-1]
        found = {max(found): found[max(found)]}
    chunks: list[Chunk] = []
    partition_ids: dict[str, str] = {}
    duplicates: dict[str, str] = {}
    versions: list[pa.Table] = []  # (id, version) of every partition: which one holds an id's latest row
    per_partition = max(1, max_chunks // max(1, len(found)))
    for dt in sorted(found):
        keys = read_keys(found[dt], table)
        # Always written (even empty): with it, embed tasks need no per-chunk set of seen ids, so
        # their memory does not grow with the chunk size.
        duplicates[dt] = str(run_dir / "duplicates" / f"{dt}.json")
        write_text(as_path(duplicates[dt]), json.dumps(first_occurrences(found[dt], keys)))
        ids = pa.table({"id": keys["id"], "tombstone": keys["tombstone"]}).filter(pc.is_valid(keys["id"]))
        ids = ids.group_by("id").aggregate([("tombstone", "any")]).rename_columns(["id", "tombstone"])
        partition_ids[dt] = write_parquet(run_dir / "partition_ids" / f"{dt}.parquet", ids)
        version = pa.array([partition_version(dt)] * ids.num_rows, pa.int32())
        versions.append(pa.table({"id": ids["id"], "version": version}))
    latest = (
        pa.concat_tables(versions).group_by("id").aggregate([("version", "max")])
        if len(versions) > 1
        else None
    )
    for dt in sorted(found):
        superseded_path = None
        if latest is not None:  # ids a later partition of this run speaks about (upsert or delete)
            later = latest.filter(pc.greater(latest["version_max"], partition_version(dt)))["id"]
            ids = read_parquet(partition_ids[dt])["id"]
            superseded = ids.filter(pc.is_in(ids, value_set=later.combine_chunks()))
            if len(superseded):
                superseded_path = write_parquet(
                    run_dir / "superseded" / f"{dt}.parquet", pa.table({"id": superseded})
                )
        maps = {"duplicates_path": duplicates[dt], "superseded_path": superseded_path}
        chunks.extend(
            replace(chunk, segments=[replace(segment, **maps) for segment in chunk.segments])
            for chunk in plan_partition(found[dt], table, dt, chunk_rows, per_partition)
        )
    chunks.sort(key=lambda chunk: chunk.chunk_id)
    # More partitions than chunks: neighbours merge across partitions. A snapshot keeps one map
    # index for its delete chunk (prepare plans it), so embed never expands past max_chunks.
    chunks = merge_chunks(chunks, max_chunks - (rules.input_kind == "snapshot"))
    return {
        "run_dir": str(run_dir),
        "owner": owner,
        "partitions": dts,
        "missing_partitions": missing,
        "superseded_partitions": superseded_partitions,
        "rejected_files": len(dead),
        "rejected_files_path": dead.flush(),
        "partition_ids": partition_ids,
        "chunks": [chunk.to_xcom() for chunk in chunks],
    }


def model_info(settings: ServerSettings | None, model_name: str) -> ModelIdentity:
    """Name, version and dim of the published model the run embeds with (read from the repository)."""
    from embedding_pipeline.model.repository import latest_version

    settings = (settings or ServerSettings.from_env()).with_overrides(model_name=model_name)
    published = latest_version(settings.model_repository, model_name)
    return {
        "model_name": model_name,
        "model_version": published.version,
        "dim": int(published.metadata["dim"]),
    }
