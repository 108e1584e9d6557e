"""Blue/green generations of a stage's stores: number the next one, gate it, move every alias
together, keep the last few, roll back.

A stage writes one alias per store (keyword index: Qdrant ``keywords`` + ES ``keywords``; product
link: ES ``products`` + the Qdrant product-vector collection ``products``). A full rebuild
(``mode=full``) fills ``<alias>-g<N>`` in every store beside the live generation, with one ``N``
for all of them; readers keep using the aliases. Then:

* the **gate** (:func:`~embedding_pipeline.generations.cutover.gate_generation`, in the finalize
  task; checks: ``generations.gate``) measures the new generation: counts, shrink against the live
  one, model, canaries and what the stage adds (products: link quality). A failed check moves no
  alias and keeps the generation for inspection;
* the **swap** (:func:`swap`; in a run, ``cutover.swap_generation`` in the go_live task, after an
  optional approval) moves the aliases one store at a time, each in one atomic request (Qdrant
  ``update_collection_aliases``, ES ``_aliases``); if one fails, the ones already moved are moved
  back and the error names every alias's state;
* **retention** (:func:`retain`) keeps the live generation and the ``keep - 1`` generations that
  served before it; generations that never served (failed gates) and older ones are dropped, and
  nothing an alias points at is ever dropped;
* **rollback** (:func:`rollback`) moves every alias to the newest generation below the live one
  that served before, after checking that all stores agree on its model and vector size.

Which generations served is recorded in each store (``promoted_at`` in the Qdrant collection's
metadata and the index ``_meta``), so rollback and retention need nothing outside the stores.
Every store is reached through :class:`~embedding_pipeline.stores.protocol.Stores`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypedDict

from embedding_pipeline.errors import ConfigError, PipelineError, SetupError
from embedding_pipeline.runs.plan import Planned
from embedding_pipeline.runs.state import forget_generations
from embedding_pipeline.runs.state_db import StateSettings
from embedding_pipeline.runs.storage import StoragePath, as_path, write_text
from embedding_pipeline.stores.protocol import StoreAlias, Stores

log = logging.getLogger(__name__)


class GenerationError(PipelineError):
    """A full rebuild stopped before its generation went live; ``section`` is what the run report
    shows about it (checks, moves)."""

    def __init__(self, message: str, section: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.section = section


class GateError(GenerationError):
    """A new generation failed a gate check: no alias moved."""


class SwapError(GenerationError):
    """An alias could not be moved; those already moved were moved back (or could not be)."""


class RollbackError(SetupError):
    """There is no generation to roll back to, or the stores disagree on it."""


class GenerationPlan(TypedDict):
    """A full rebuild's generation, as its prepare task hands it on: the number, what every alias
    (``system:alias``) points at now, the new physical names, and each new generation's
    bulk-load settings to restore."""

    number: int
    live: dict[str, str | None]
    new: dict[str, str]
    bulk_load: dict[str, Any]


def generation_number(name: str) -> int:
    """``keywords-g3`` -> 3."""
    return int(name.rsplit("-g", 1)[1])


def next_generation(stores: Stores, aliases: Sequence[StoreAlias], run_dir: StoragePath) -> int:
    """One number past every generation of every store of the stage, chosen once per run (kept in
    the run directory, so a retried prepare task builds the same generation, not another)."""
    path = run_dir / "generation.json"
    if path.exists():
        return int(json.loads(path.read_text())["generation"])
    existing = [n for store in aliases for n in stores.generations(store)]
    number = max(existing, default=0) + 1
    write_text(path, json.dumps({"generation": number}))
    return number


def live_names(stores: Stores, aliases: Sequence[StoreAlias]) -> dict[str, str | None]:
    return {store.key: stores.live(store) for store in aliases}


def begin_generation(
    stores: Stores,
    aliases: Sequence[StoreAlias],
    planned: Planned,
    schemas: Mapping[str, Any],
    identity: Mapping[str, Any],
) -> GenerationPlan:
    """Create the next generation of every alias (not aliased) and switch each to its store's
    bulk-load settings (no reader uses it yet): what the prepare task of a full rebuild hands on.
    ``schemas``: per store system, what its generation is created with (point schema, mappings)."""
    if not planned["chunks"]:
        raise SetupError(
            f"a full rebuild found no input rows in {planned['partitions'] or 'any partition'}: nothing "
            "was built and the live generation stays. Check input_root and dt"
        )
    number = next_generation(stores, aliases, as_path(planned["run_dir"]))
    new, bulk_load = {}, {}
    for store in aliases:
        adapter = stores[store.system]
        name = adapter.create_generation(store.alias, number, schemas[store.system], identity)
        bulk_load[store.key] = adapter.begin_bulk_load(name)
        new[store.key] = name
    log.info("full rebuild: generation %d -> %s", number, new)
    return {"number": number, "live": live_names(stores, aliases), "new": new, "bulk_load": bulk_load}


def end_generation_load(stores: Stores, generation: GenerationPlan) -> None:
    """Restore each new generation's settings after its bulk load (teardown, before the gate)."""
    for key, previous in generation.get("bulk_load", {}).items():
        store = StoreAlias.from_key(key)
        stores[store.system].end_bulk_load(generation["new"][key], previous)


# ------------------------------------------------------------------------------- swap, retain


def _now() -> str:
    return datetime.now(UTC).isoformat()


def swap(stores: Stores, moves: Sequence[tuple[StoreAlias, str]]) -> list[dict[str, Any]]:
    """Move each alias to its new name, one atomic request per store; on a failure move back the
    ones already moved and raise :class:`SwapError` naming what every alias points at now."""
    done: list[tuple[StoreAlias, str | None, str]] = []
    for store, name in moves:
        try:
            done.append((store, stores.move(store, name), name))
        except Exception as exc:
            undo = []
            for moved, previous, to in reversed(done):
                try:
                    stores.unmove(moved, previous, to)
                    undo.append(f"{moved.key} moved back to {previous}")
                except Exception as undo_exc:  # both failed: say so, do not hide the first error
                    undo.append(f"{moved.key} could NOT be moved back to {previous} ({undo_exc})")
            now = ", ".join(f"{s.key} -> {stores.live(s)}" for s, _ in moves)
            raise SwapError(
                f"moving {store.key} to {name} failed: {exc}. "
                + ("; ".join(undo) + ". " if undo else "")
                + f"Aliases now: {now}"
            ) from exc
    when = _now()
    for store, previous, name in done:
        stores.mark_promoted(store, name, when)
        if previous is not None:
            stores.mark_promoted(store, previous, when)  # it served: a rollback target
    return [{"store": store.key, "from": previous, "to": name} for store, previous, name in done]


def retain(
    stores: Stores, aliases: Sequence[StoreAlias], keep: int, state: StateSettings | None = None
) -> list[str]:
    """Drop generations older than the live one, except the ``keep - 1`` newest that served;
    generations newer than the live one (another run's build, or one kept for inspection after a
    failed gate) and the live one are never dropped. What the ledger (``state``, default the
    environment's) keeps about dropped generations goes with them."""
    if keep < 1:
        raise ConfigError(f"keep_generations must be >= 1, got {keep}")
    dropped: list[str] = []
    gone: list[tuple[str, str]] = []  # (store, physical name): their states and change logs go too
    for store in aliases:
        live = stores.live(store)
        if live is None:
            continue
        current = generation_number(live) if "-g" in live else None
        older = {n: name for n, name in stores.generations(store).items() if current and n < current}
        served = sorted(n for n, name in older.items() if stores.record(store, name).get("promoted_at"))
        kept = set(served[len(served) - (keep - 1) :]) if keep > 1 else set()
        for number, name in older.items():
            if number not in kept:
                stores.drop(store, name)
                gone.append((store.system, name))
                dropped.append(f"{store.key}/{name}")
    forget_generations(state or StateSettings.from_env(), gone)
    return dropped


def rollback(
    stores: Stores, aliases: Sequence[StoreAlias], others: Sequence[StoreAlias] = ()
) -> list[dict[str, Any]]:
    """Move every alias back to the newest earlier generation that served, in one step (with the
    swap's move-back on failure). Refused when a store has no such generation, or when the stores
    (and the live ``others``, e.g. the other stage's aliases) disagree on its model or dimension."""
    moves: list[tuple[StoreAlias, str]] = []
    for store in aliases:
        live = stores.live(store)
        if live is None or "-g" not in live:
            raise RollbackError(f"{store.key} has no live generation to roll back from")
        earlier = {
            n: name
            for n, name in stores.generations(store).items()
            if n < generation_number(live) and stores.record(store, name).get("promoted_at")
        }
        if not earlier:
            raise RollbackError(
                f"{store.key} -> {live}: no earlier generation that served is kept "
                f"(generations: {sorted(stores.generations(store).values())})"
            )
        moves.append((store, earlier[max(earlier)]))
    identities = {f"{store.key} {name}": stores.identity(store, name) for store, name in moves}
    for store in others:
        live = stores.live(store)
        if live is not None:
            identities[f"{store.key} {live} (live)"] = stores.identity(store, live)
    if len(set(identities.values())) > 1:
        shown = "; ".join(f"{key}: {v[0]} v{v[1]} dim {v[2]}" for key, v in identities.items())
        raise RollbackError(
            f"the rollback targets do not share one model and dimension: {shown}. Roll back every "
            "stage together (stage=all), or rebuild the other stage with mode=full"
        )
    return swap(stores, moves)


def rollback_stage(
    stores: Stores, stage: str, by_stage: Mapping[str, list[StoreAlias]]
) -> list[dict[str, Any]]:
    """:func:`rollback` of one stage's aliases (``by_stage``: each stage's aliases; the other
    stages' live model must match), or of every alias of every stage at once (``all``)."""
    if stage != "all" and stage not in by_stage:
        raise ConfigError(f"stage must be one of {('all', *by_stage)}, got {stage!r}")
    if stage == "all":
        return rollback(stores, [store for aliases in by_stage.values() for store in aliases])
    others = [store for name, aliases in by_stage.items() if name != stage for store in aliases]
    return rollback(stores, by_stage[stage], others)


def _model_text(record: Mapping[str, Any]) -> str:
    return f"{record.get('model_name')} v{record.get('model_version')} dim {record.get('dim')}"


def describe(stores: Stores, aliases: Sequence[StoreAlias]) -> list[dict[str, Any]]:
    """Every generation of every alias: name, live or not, served before, model, count."""
    rows = []
    for store in aliases:
        live = stores.live(store)
        for number, name in stores.generations(store).items():
            record = stores.record(store, name)
            rows.append(
                {
                    "store": store.key,
                    "generation": number,
                    "name": name,
                    "live": name == live,
                    "promoted_at": record.get("promoted_at"),
                    "model": _model_text(record),
                    "count": stores.count(store, name),
                }
            )
    return rows
