"""What the stores hold, per id: the state incremental runs compare each input row with.

One Parquet file per table and *generation set* (the physical collection/index names a run writes,
e.g. ``keywords/qdrant=keywords-g1,es=keywords-g1.parquet``): a new generation starts with no
state and is filled in full. Columns::

    id           string   business key
    dt_version   int32    the latest partition that spoke about the id (upsert, unchanged or delete)
    text_hash    int64    first 8 bytes of the staged ``content_hash`` (model name + version + text)
    fields_hash  int64    hash of the stored fields other than the text and ``dt``
    deleted      bool     a tombstone: kept so a late backfill of an older date cannot resurrect it

Why a file and not look-ups in the stores (measured in ``bench/bench_state_lookup.py``): reading
1M ids' state from Parquet and matching a chunk's ids takes well under a second, while batched
look-ups by id in Qdrant local mode or Elasticsearch ``mget`` cost minutes at that size, and
neither store can keep tombstones without readers seeing them. The stores stay the truth for
content: ``text_hash`` derives from the ``content_hash`` both stores keep.

The state is committed by the stage's finalize task, after every store write of the run is
known: ids a store dead-lettered are left at their previous state, so the next run retries them.
Commits are read-merge-write; the stage DAGs run one date at a time (``max_active_runs=1``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedding_pipeline.errors import SetupError
from embedding_pipeline.runs.storage import (
    StoragePath,
    as_path,
    is_local,
    read_parquet,
    remove,
    runs_root,
    write_parquet,
)
from embedding_pipeline.settings import work_dir

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("dt_version", pa.int32()),
        ("text_hash", pa.int64()),
        ("fields_hash", pa.int64()),
        ("deleted", pa.bool_()),
    ]
)
# A run's per-chunk delta: the state columns plus what the row did (runs.changes.decide), which
# the change log of derived data (product links) is made from.
DELTA_SCHEMA = SCHEMA.append(pa.field("change", pa.string()))
IDENTITY_KEYS = ("model_name", "model_version", "role")


class ModelChangedError(SetupError):
    """An incremental run with another model (or role) than the generation's stored vectors."""


@dataclass(frozen=True)
class Prior:
    """The state of one id before this run."""

    dt_version: int
    text_hash: int
    fields_hash: int
    deleted: bool


def text_hash(content_hash: str) -> int:
    """The state's 64-bit text key: the first 8 bytes of the staged sha256 ``content_hash``."""
    return int.from_bytes(bytes.fromhex(content_hash[:16]), "big", signed=True)


def fields_hash(payload: Mapping[str, Any]) -> int:
    """64-bit hash of the stored fields except ``dt``: a row seen again on a later date with the
    same text and fields is unchanged (``dt`` only says where it was read)."""
    fields = {k: v for k, v in payload.items() if k != "dt" and v is not None}
    digest = hashlib.blake2b(
        json.dumps(fields, sort_keys=True, ensure_ascii=False, default=str).encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


def state_root() -> StoragePath:
    """``EMBEDDING_STATE_URL``; else ``state`` next to the runs (local) or under the staging URL."""
    url = os.environ.get("EMBEDDING_STATE_URL")
    if url:
        return as_path(url.rstrip("/"))
    runs = runs_root()
    return work_dir() / "state" if is_local(runs) else runs / "_state"


def state_path(table: str, stores: Mapping[str, str]) -> StoragePath:
    """The state file of ``table`` for the physical names in ``stores`` (``{"qdrant": "kw-g1"}``)."""
    key = ",".join(f"{store}={name}" for store, name in sorted(stores.items()))
    return state_root() / table / (re.sub(r"[^A-Za-z0-9_.,=-]+", "_", key) + ".parquet")


class IndexState:
    """Read, look up and commit one state file (see the module docstring)."""

    def __init__(self, path: str | StoragePath) -> None:
        self.path = as_path(str(path)) if isinstance(path, str) else path

    def exists(self) -> bool:
        return self.path.exists()

    def _read(self, columns: list[str] | None = None) -> pa.Table:
        if not self.exists():
            return SCHEMA.empty_table() if columns is None else SCHEMA.empty_table().select(columns)
        return read_parquet(self.path, columns)

    def identity(self) -> dict[str, str] | None:
        """The model (name, version, role) the stored vectors were made with; None before any commit."""
        if not self.exists():
            return None
        metadata = self.metadata()
        return {key: metadata.get(key, "") for key in IDENTITY_KEYS}

    def check_identity(self, identity: Mapping[str, Any], what: str) -> None:
        """Refuse an incremental run whose model differs from the generation's, naming both."""
        stored = self.identity()
        wanted = {key: str(identity.get(key) or "") for key in IDENTITY_KEYS}
        if stored is not None and stored != wanted:
            raise ModelChangedError(
                f"{what} was built with model {stored['model_name']} v{stored['model_version']} "
                f"(role {stored['role'] or 'none'}) but this run embeds with {wanted['model_name']} "
                f"v{wanted['model_version']} (role {wanted['role'] or 'none'}): vectors of two models "
                "cannot share a generation. Run a full rebuild into a new generation, or publish/"
                "choose the model the generation was built with."
            )

    def lookup(self, ids: Iterable[str]) -> dict[str, Prior]:
        """The prior state of ``ids`` (ids the state does not know are absent)."""
        wanted = pa.array(sorted(set(ids)), pa.string())
        if not self.exists() or len(wanted) == 0:
            return {}
        table = self._read()
        table = table.filter(pc.is_in(table["id"], value_set=wanted))
        return {
            row["id"]: Prior(row["dt_version"], row["text_hash"], row["fields_hash"], row["deleted"])
            for row in table.to_pylist()
        }

    def live(self, up_to_version: int | None = None) -> pa.Table:
        """Ids not deleted (``id``, ``dt_version``), optionally only those last seen at or before
        ``up_to_version``: what a snapshot of that date deletes when it lacks them."""
        table = self._read(["id", "dt_version", "deleted"])
        keep = pc.invert(table["deleted"])
        if up_to_version is not None:
            keep = pc.and_(keep, pc.less_equal(table["dt_version"], up_to_version))
        return table.filter(keep).select(["id", "dt_version"])

    def live_count(self) -> int:
        return self.live().num_rows

    def metadata(self) -> dict[str, str]:
        if not self.exists():
            return {}
        source = str(self.path) if is_local(self.path) else self.path.open("rb")
        return {k.decode(): v.decode() for k, v in (pq.read_schema(source).metadata or {}).items()}

    def commit(
        self,
        delta: pa.Table,
        identity: Mapping[str, Any],
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Merge this run's ``delta`` (see :func:`merged_delta`) into the state. Per id the row
        with the greatest ``dt_version`` wins; on a tie, this run's row. ``metadata`` is kept
        with the file (what a derived stage has applied, e.g. the change-log position)."""
        delta = delta.select(SCHEMA.names).cast(SCHEMA)
        old = self._read().cast(SCHEMA)
        merged = pa.concat_tables(
            [
                old.append_column("run", pa.array([0] * old.num_rows, pa.int8())),
                delta.append_column("run", pa.array([1] * delta.num_rows, pa.int8())),
            ]
        )
        merged = merged.sort_by([("id", "ascending"), ("dt_version", "descending"), ("run", "descending")])
        ids = merged["id"].to_numpy(zero_copy_only=False)
        keep = np.ones(len(ids), dtype=bool)
        keep[1:] = ids[1:] != ids[:-1]
        merged = merged.filter(pa.array(keep))
        kept = {**self.metadata(), **(metadata or {})}
        kept.update({key: str(identity.get(key) or "") for key in IDENTITY_KEYS})
        write_parquet(self.path, merged.drop_columns(["run"]).replace_schema_metadata(kept))

    def drop(self) -> None:
        remove(self.path)


def delta_table(rows: list[tuple[str, int, int, int, bool, str]]) -> pa.Table:
    """A chunk's delta from ``(id, dt_version, text_hash, fields_hash, deleted, change)`` rows."""
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in DELTA_SCHEMA]
    arrays = [pa.array(list(c), f.type) for c, f in zip(columns, DELTA_SCHEMA, strict=True)]
    return pa.table(arrays, schema=DELTA_SCHEMA)


def merged_delta(paths: Iterable[str], excluded: set[str]) -> pa.Table:
    """A run's chunk deltas in one table, without ``excluded`` ids (dead-lettered by a store: they
    keep their previous state, so the next run tries them again)."""
    parts = [read_parquet(path).cast(DELTA_SCHEMA) for path in paths]
    delta = pa.concat_tables(parts) if parts else DELTA_SCHEMA.empty_table()
    if excluded and delta.num_rows:
        delta = delta.filter(pc.invert(pc.is_in(delta["id"], value_set=pa.array(sorted(excluded)))))
    return delta
