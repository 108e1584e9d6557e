"""Moving the Parquet state of earlier releases into the state database.

Earlier releases kept one Parquet file per table and generation set under the state root
(``<work_dir>/state/<table>/<key>.parquet``, or ``EMBEDDING_STATE_URL``) and one file per change
log entry (``<root>/changes/<collection>/<seq>.parquet``). The first prepare task of a process
imports them (:func:`migrate_once`, from runs.changes.prepare_changes), or ``embedding-pipeline
state migrate`` does: every state becomes a generation with the same key, rows and metadata (the
model identity, the product stage's change-log position), every log keeps its entry numbers, so
a recorded position stays valid. Imported files are renamed ``*.parquet.migrated``: nothing is
deleted, and nothing is imported twice.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import insert, select

from embedding_pipeline.runs.state import IndexState
from embedding_pipeline.runs.state_db import StateSettings, changes, db_errors, engine_for, logs, writing
from embedding_pipeline.runs.storage import StoragePath, as_path, is_local, read_parquet, runs_root
from embedding_pipeline.settings import work_dir

log = logging.getLogger(__name__)
IDENTITY_KEYS = ("model_name", "model_version", "role")


def legacy_root() -> StoragePath:
    """Where earlier releases kept the state: ``EMBEDDING_STATE_URL``, else ``state`` next to the
    runs (local) or under the staging URL."""
    url = os.environ.get("EMBEDDING_STATE_URL")
    if url:
        return as_path(url.rstrip("/"))
    runs = runs_root()
    return work_dir() / "state" if is_local(runs) else runs / "_state"


def _parquet_files(directory: StoragePath) -> list[StoragePath]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(".parquet"))


def _file_metadata(path: StoragePath) -> dict[str, str]:
    source = str(path) if is_local(path) else path.open("rb")
    return {k.decode(): v.decode() for k, v in (pq.read_schema(source).metadata or {}).items()}


def _done(path: StoragePath) -> None:
    path.rename(path.parent / f"{path.name}.migrated")


def migrate_parquet_state(settings: StateSettings, root: StoragePath | None = None) -> dict[str, int]:
    """Import every Parquet state and change log under ``root`` (default :func:`legacy_root`) that
    the database does not hold yet. Returns what was imported: states, rows, logs, log entries."""
    root = root if root is not None else legacy_root()
    counts = {"states": 0, "rows": 0, "logs": 0, "log_entries": 0}
    if not root.exists():
        return counts
    for table_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "changes"):
        for path in _parquet_files(table_dir):
            state = IndexState(settings, f"{table_dir.name}/{path.name.removesuffix('.parquet')}")
            if not state.exists():
                metadata: dict[str, Any] = _file_metadata(path)
                identity = {key: metadata.pop(key, "") for key in IDENTITY_KEYS}
                table = read_parquet(path)
                delta = table.append_column("change", pa.array(["upsert"] * table.num_rows, pa.string()))
                state.commit(delta, identity, metadata)
                counts["states"] += 1
                counts["rows"] += table.num_rows
            _done(path)
    changes_dir = root / "changes"
    for log_dir in sorted(p for p in changes_dir.iterdir() if p.is_dir()) if changes_dir.exists() else []:
        entries = _migrate_log(settings, log_dir)
        counts["log_entries"] += entries
        counts["logs"] += bool(entries)
    if counts["states"] or counts["logs"]:
        log.info("imported the Parquet state under %s into the %s: %s", root, settings.describe(), counts)
    return counts


def _migrate_log(settings: StateSettings, log_dir: StoragePath) -> int:
    """One change log's files, numbers kept; the log's latest number is the greatest file's."""
    files = _parquet_files(log_dir)
    if not files:
        return 0
    name = log_dir.name
    with db_errors(settings, f"import the change log {name}"), writing(engine_for(settings)) as conn:
        if conn.execute(select(logs.c.log).where(logs.c.log == name)).first() is not None:
            files = []  # imported before (the database is the log now)
        for path in files:
            # One run could log an id more than once (several dates): its last row counts.
            entries = {row["id"]: row["change"] for row in read_parquet(path).to_pylist()}
            seq = int(path.name.split(".")[0])
            rows = [{"log": name, "seq": seq, "id": i, "change": c} for i, c in entries.items()]
            conn.execute(insert(changes), rows)
        if files:
            conn.execute(insert(logs).values(log=name, latest=int(files[-1].name.split(".")[0])))
    for path in _parquet_files(log_dir):
        _done(path)
    return len(files)


_started: set[str] = set()


def migrate_once(settings: StateSettings) -> None:
    """The automatic import, once per process and database (a no-op without old files)."""
    if settings.url in _started:
        return
    _started.add(settings.url)
    migrate_parquet_state(settings)
