"""Incremental runs: what a partition means (input kinds), what each row does to the stores, and
which ids a run deletes - with the guard that stops a truncated export from wiping an index.

Input kinds and tombstones: :mod:`embedding_pipeline.runs.input_kinds`.

Per row (:func:`decide`), against the state (:mod:`embedding_pipeline.runs.state`):

========================  ==========================================================
``upsert``                new id, text changed, or a deleted id back: embed and write
``update``                same text, other fields changed: rewrite fields, no embedding
``unchanged``             same text and fields: nothing written
``superseded``            a later partition already spoke about the id (state, or a
                          later date in the same run): nothing written
``delete``                tombstone for a stored id: delete from every store
``unknown_delete``        tombstone for an id no store holds: counted, not an error
========================  ==========================================================

An id both upserted and tombstoned in one partition is deleted: the tombstone is kept as the
id's row and the upserts go to the dead letter as ``duplicate_id`` (see ``first_occurrences``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypedDict

import pyarrow as pa
import pyarrow.compute as pc

from embedding_pipeline.errors import SetupError
from embedding_pipeline.runs.input_kinds import InputSpec
from embedding_pipeline.runs.partitions import partition_version
from embedding_pipeline.runs.plan import Planned
from embedding_pipeline.runs.state import IndexState, Prior, merged_delta, state_path, state_root
from embedding_pipeline.runs.storage import StoragePath, as_path, read_parquet, remove, write_parquet


class DeleteGuardError(SetupError):
    """A run would delete more of an index than ``max_delete_ratio`` allows."""


def decide(prior: Prior | None, version: int, text_hash: int, fields_hash: int, tombstone: bool) -> str:
    """What one row of partition ``version`` does (the table in the module docstring)."""
    if prior is not None and prior.dt_version > version:
        return "superseded"
    known = prior is not None and not prior.deleted
    if tombstone:
        return "delete" if known else "unknown_delete"
    if not known or prior.text_hash != text_hash:  # type: ignore[union-attr]
        return "upsert"
    return "update" if prior.fields_hash != fields_hash else "unchanged"  # type: ignore[union-attr]


class Changes(TypedDict, total=False):
    """What :func:`prepare_changes` adds to a stage's prepared payload: the generation's state, the
    input kind, and this run's planned deletes (after the guard)."""

    state_path: str
    role: str | None
    input_kind: str
    tombstone_column: str | None
    delete_chunks: list[dict[str, Any]]
    planned_deletes: int
    live_before: int


def plan_deletes(
    planned: Planned, state: IndexState, spec: InputSpec, run_dir: StoragePath
) -> dict[str, Any]:
    """The ids this run deletes, as delete chunks for the embed tasks, after the guard.

    Snapshot: ids live in the state, last seen at or before the snapshot's date, and absent from
    it. Delta: the tombstoned ids the state holds live (the rows themselves flow through the embed
    tasks; counted here for the guard). Nothing is deleted from an empty state (a first run).
    Raises :class:`DeleteGuardError`, before any store is touched, when the deletes exceed
    ``max_delete_ratio`` of the live ids.
    """
    live_before = state.live_count() if state.exists() else 0
    chunks: list[dict[str, Any]] = []
    deletes = 0
    for dt, ids_path in sorted(planned.get("partition_ids", {}).items()) if live_before else []:
        partition = read_parquet(ids_path)
        live = state.live(partition_version(dt))["id"]
        if spec.kind == "snapshot":
            absent = live.filter(pc.invert(pc.is_in(live, value_set=partition["id"].combine_chunks())))
            if len(absent):
                path = write_parquet(run_dir / "deletes" / f"{dt}.parquet", pa.table({"id": absent}))
                chunks.append({"chunk_id": f"{dt}-deletes", "dt": dt, "segments": [], "deletes_path": path})
            deletes += len(absent)
        tombstoned = partition.filter(partition["tombstone"])["id"]
        deletes += int(pc.sum(pc.is_in(tombstoned, value_set=live.combine_chunks())).as_py() or 0)
    ratio = deletes / live_before if live_before else 0.0
    if deletes and ratio > spec.max_delete_ratio:
        raise DeleteGuardError(
            f"this run would delete {deletes} of {live_before} stored ids ({ratio:.1%}), more than "
            f"max_delete_ratio={spec.max_delete_ratio:.1%}; nothing was deleted. A truncated or "
            "partial export looks like this. If the deletes are intended, run again with "
            "max_delete_ratio raised in the trigger form."
        )
    return {"delete_chunks": chunks, "planned_deletes": deletes, "live_before": live_before}


def prepare_changes(
    table: str,
    stores: dict[str, str | None],
    identity: dict[str, Any],
    planned: Planned,
    spec: InputSpec,
    what: str,
) -> Changes:
    """What a stage's prepare task adds for incremental runs: the state of the generation it
    writes (``stores``: physical names), refused if made with another model, and the planned
    deletes (after the guard). The result goes to XCom and into the report."""
    names = {store: name for store, name in stores.items() if name}
    state = IndexState(state_path(table, names))
    state.check_identity(identity, f"{what} ({', '.join(f'{k} {v}' for k, v in sorted(names.items()))})")
    deletes = plan_deletes(planned, state, spec, as_path(planned["run_dir"]))
    return {
        "state_path": str(state.path),
        "role": identity.get("role"),
        "input_kind": spec.kind,
        "tombstone_column": spec.tombstone_column,
        **deletes,
    }


class ChangeLog:
    """What each committed run changed in a table, for stages that keep data derived from it
    current (the product links follow the keyword collection's log).

    ``<state root>/changes/<name>/<seq>.parquet`` with ``id`` and ``change`` (upsert: text new or
    changed; update: fields only; delete), one file per run that changed something, numbered in
    commit order. A reader remembers the last number it applied. Files are small (the changed ids
    of a night) and kept: several derived stages may read one log.
    """

    def __init__(self, root: StoragePath) -> None:
        self.root = root

    def _numbers(self) -> list[int]:
        if not self.root.exists():
            return []
        return sorted(int(p.name.split(".")[0]) for p in self.root.iterdir() if p.name.endswith(".parquet"))

    def latest(self) -> int:
        numbers = self._numbers()
        return numbers[-1] if numbers else 0

    def append(self, changes: pa.Table) -> int | None:
        if changes.num_rows == 0:
            return None
        number = self.latest() + 1
        write_parquet(self.root / f"{number:08d}.parquet", changes.select(["id", "change"]))
        return number

    def since(self, applied: int) -> tuple[pa.Table, int]:
        """Every change after ``applied``, the last one per id (in log order), and the log's end."""
        numbers = [n for n in self._numbers() if n > applied]
        parts = [read_parquet(self.root / f"{n:08d}.parquet") for n in numbers]
        if not parts:
            return pa.table({"id": pa.array([], pa.string()), "change": pa.array([], pa.string())}), applied
        log = pa.concat_tables(parts)
        log = log.append_column("order", pa.array(range(log.num_rows), pa.int64()))
        last = log.group_by("id").aggregate([("order", "max")])
        log = log.filter(pc.is_in(log["order"], value_set=last["order_max"]))
        return log.select(["id", "change"]), numbers[-1]


CHANGED = ("upsert", "update", "delete")


def change_log(name: str) -> ChangeLog:
    """The change log of the collection or index ``name`` (a physical name: per generation)."""
    return ChangeLog(state_root() / "changes" / name)


def forget_generations(dropped: Iterable[tuple[str, str]]) -> int:
    """Remove what the state root keeps about dropped generations (``(store, physical name)``
    pairs): every state file one of whose stores is dropped, and the dropped collections' change
    logs. Returns how many files went. Retention calls it after dropping the stores themselves."""
    dropped = set(dropped)
    tokens = {_key_token(store, name) for store, name in dropped}
    removed = 0
    root = state_root()
    for table in root.iterdir() if root.exists() else ():
        if table.name == "changes" or not table.is_dir():
            continue
        for path in table.iterdir():
            if tokens & set(path.name.removesuffix(".parquet").split(",")):
                remove(path)
                removed += 1
    for _, name in {pair for pair in dropped if pair[0] == "qdrant"}:  # logs follow collections
        log_dir = change_log(name).root
        if log_dir.exists():
            for path in log_dir.iterdir():
                remove(path)
                removed += 1
            log_dir.rmdir()
    return removed


def _key_token(store: str, name: str) -> str:
    """How :func:`~embedding_pipeline.runs.state.state_path` spells one store in a file name."""
    return state_path("", {store: name}).name.removesuffix(".parquet")


def commit_changes(prepared: dict[str, Any], embedded: list[dict[str, Any]], run_dir: str) -> int | None:
    """After the stores were written: merge the run's state deltas into the generation's state
    (ids a store dead-lettered keep their previous state: the next run tries them again) with the
    ``state_metadata`` the prepare task planned, and, if the stage keeps one, append what changed
    to its change log. Returns the rows merged."""
    if not prepared.get("state_path"):
        return None
    from embedding_pipeline.runs.dead_letter import read_dead_letters

    excluded = {
        letter["record_id"]
        for letter in read_dead_letters(run_dir)
        if letter["stage"] not in ("embed", "plan") and letter["record_id"] is not None
    }
    delta = merged_delta([e["state_delta"] for e in embedded if e.get("state_delta")], excluded)
    identity = {key: prepared.get(key) for key in ("model_name", "model_version", "role")}
    IndexState(prepared["state_path"]).commit(delta, identity, prepared.get("state_metadata"))
    if prepared.get("change_log"):
        ChangeLog(as_path(prepared["change_log"])).append(
            delta.filter(pc.is_in(delta["change"], value_set=pa.array(CHANGED)))
        )
    return delta.num_rows
