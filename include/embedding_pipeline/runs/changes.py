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

from typing import Any, TypedDict

import pyarrow as pa
import pyarrow.compute as pc

from embedding_pipeline.errors import SetupError
from embedding_pipeline.runs.input_kinds import InputSpec
from embedding_pipeline.runs.partitions import partition_version
from embedding_pipeline.runs.plan import Planned
from embedding_pipeline.runs.state import IndexState, Prior, merged_delta
from embedding_pipeline.runs.state_db import StateSettings
from embedding_pipeline.runs.state_migrate import migrate_once
from embedding_pipeline.runs.storage import StoragePath, as_path, read_parquet, write_parquet


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
    """What :func:`prepare_changes` adds to a stage's prepared payload: the generation's state (its
    key in the state database) and the run holding its lease, the input kind, and this run's
    planned deletes (after the guard)."""

    state_key: str
    owner: str | None
    role: str | None
    input_kind: str
    tombstone_column: str | None
    delete_chunks: list[dict[str, Any]]
    planned_deletes: int
    live_before: int


def _absent_from(state: IndexState, version: int, present: pa.Array) -> pa.Array:
    """Ids live in the state, last seen at or before ``version``, that are not in ``present``:
    streamed from the state a batch at a time."""
    parts = [
        part["id"].filter(pc.invert(pc.is_in(part["id"], value_set=present)))
        for part in state.live_batches(version)
    ]
    return pa.chunked_array(parts, pa.string()).combine_chunks()


def plan_deletes(
    planned: Planned, state: IndexState, spec: InputSpec, run_dir: StoragePath
) -> dict[str, Any]:
    """The ids this run deletes, as delete chunks for the embed tasks, after the guard.

    Snapshot: ids live in the state, last seen at or before the snapshot's date, and absent from
    it (a pass over the live ids: a snapshot is the whole table). Delta: the tombstoned ids the
    state holds live (indexed look-ups of those ids only; the rows themselves flow through the
    embed tasks; counted here for the guard). Nothing is deleted from an empty state (a first
    run). Raises :class:`DeleteGuardError`, before any store is touched, when the deletes exceed
    ``max_delete_ratio`` of the live ids.
    """
    live_before = state.live_count()
    chunks: list[dict[str, Any]] = []
    deletes = 0
    for dt, ids_path in sorted(planned.get("partition_ids", {}).items()) if live_before else []:
        partition = read_parquet(ids_path)
        version = partition_version(dt)
        if spec.kind == "snapshot":
            absent = _absent_from(state, version, partition["id"].combine_chunks())
            if len(absent):
                path = write_parquet(run_dir / "deletes" / f"{dt}.parquet", pa.table({"id": absent}))
                chunks.append({"chunk_id": f"{dt}-deletes", "dt": dt, "segments": [], "deletes_path": path})
            deletes += len(absent)
        tombstoned = partition.filter(partition["tombstone"])["id"].to_pylist()
        priors = state.lookup(tombstoned).values()
        deletes += sum(1 for prior in priors if not prior.deleted and prior.dt_version <= version)
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
    settings: StateSettings | None = None,
) -> Changes:
    """What a stage's prepare task adds for incremental runs: the state of the generation it
    writes (``stores``: physical names), refused if made with another model, held for this run
    (``planned["owner"]``; refused while another run holds it), and the planned deletes (after
    the guard; a run refused there gives the lease back). The result goes to XCom and into the report."""
    names = {store: name for store, name in stores.items() if name}
    settings = settings or StateSettings.from_env()
    migrate_once(settings)  # the Parquet state of an earlier release, imported on first use
    state = IndexState.of(settings, table, names)
    state.check_identity(identity, f"{what} ({', '.join(f'{k} {v}' for k, v in sorted(names.items()))})")
    owner = planned.get("owner") or None
    if owner:
        state.acquire(owner)
    try:
        deletes = plan_deletes(planned, state, spec, as_path(planned["run_dir"]))
    except Exception:  # the guard, or the state unreadable: this run writes nothing
        if owner:
            state.release(owner)
        raise
    return {
        "state_key": state.key,
        "owner": owner,
        "role": identity.get("role"),
        "input_kind": spec.kind,
        "tombstone_column": spec.tombstone_column,
        **deletes,
    }


def commit_changes(
    prepared: dict[str, Any],
    embedded: list[dict[str, Any]],
    run_dir: str,
    settings: StateSettings | None = None,
) -> int | None:
    """After the stores were written, in one transaction: the run's state deltas merged into the
    generation's state (ids a store dead-lettered keep their previous state: the next run tries
    them again), the ``state_metadata`` the prepare task planned, and, if the stage keeps one
    (``prepared["change_log"]``), the change log entry of what changed. Releases the run's lease.
    Returns the rows merged."""
    if not prepared.get("state_key"):
        return None
    from embedding_pipeline.runs.dead_letter import read_dead_letters

    excluded = {
        letter["record_id"]
        for letter in read_dead_letters(run_dir)
        if letter["stage"] not in ("embed", "plan") and letter["record_id"] is not None
    }
    delta = merged_delta([e["state_delta"] for e in embedded if e.get("state_delta")], excluded)
    identity = {key: prepared.get(key) for key in ("model_name", "model_version", "role")}
    IndexState(settings or StateSettings.from_env(), prepared["state_key"]).commit(
        delta,
        identity,
        prepared.get("state_metadata"),
        owner=prepared.get("owner"),
        change_log=prepared.get("change_log"),
    )
    return delta.num_rows
