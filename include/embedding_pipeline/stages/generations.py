"""Blue/green generations of a stage's stores: number the next one, gate it, move every alias
together, keep the last few, roll back.

A stage writes one alias per store (keyword index: Qdrant ``keywords`` + ES ``keywords``; product
link: ES ``products`` + the Qdrant product-vector collection ``products``). A full rebuild
(``mode=full``) fills ``<alias>-g<N>`` in every store beside the live generation, with one ``N``
for all of them; readers keep using the aliases. Then:

* the **gate** (:func:`gate_generation`, in the finalize task; checks: ``generation_gate``)
  measures the new generation: counts, shrink against the live one, model, canaries and (products)
  link quality. A failed check moves no alias and keeps the generation for inspection;
* the **swap** (:func:`swap_generation`, in the go_live task, after an optional approval) moves the
  aliases one store at a time, each in one atomic request
  (Qdrant ``update_collection_aliases``, ES ``_aliases``); if one fails, the ones already moved
  are moved back and the error names every alias's state;
* **retention** (:func:`retain`) keeps the live generation and the ``keep - 1`` generations that
  served before it; generations that never served (failed gates) and older ones are dropped, and
  nothing an alias points at is ever dropped;
* **rollback** (:func:`rollback`) moves every alias to the newest generation below the live one
  that served before, after checking that all stores agree on its model and vector size.

Which generations served is recorded in each store (``promoted_at`` in the Qdrant collection's
metadata and the index ``_meta``), so rollback and retention need nothing outside the stores.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from embedding_pipeline.errors import ConfigError, PipelineError, SetupError
from embedding_pipeline.runs.changes import forget_generations
from embedding_pipeline.runs.storage import StoragePath, as_path, write_text
from embedding_pipeline.stages.generation_gate import gate
from embedding_pipeline.stages.generation_rules import Publish
from embedding_pipeline.stages.generation_stores import StoreAlias, Stores, open_stores

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
    planned: Mapping[str, Any],
    schemas: Mapping[str, Any],
    identity: Mapping[str, Any],
) -> dict[str, Any]:
    """Create the next generation of every alias (not aliased; Qdrant indexing deferred, ES bulk
    settings are the stage's begin_bulk_load): what the prepare task of a full rebuild hands on.
    ``schemas``: the Qdrant point schema and the ES mappings of the stage."""
    from embedding_pipeline.stores.elasticsearch import generations as es_generations
    from embedding_pipeline.stores.qdrant import generations as qdrant_generations
    from embedding_pipeline.stores.qdrant.collections import create_generation

    if not planned["chunks"]:
        raise SetupError(
            f"a full rebuild found no input rows in {planned['partitions'] or 'any partition'}: nothing "
            "was built and the live generation stays. Check input_root and dt"
        )
    number = next_generation(stores, aliases, as_path(planned["run_dir"]))
    new, indexing = {}, {}
    for store in aliases:
        if store.system == "qdrant":
            target = create_generation(
                stores.qdrant, store.alias, number, **identity, schema=schemas["qdrant"]
            )
            indexing[target.name] = qdrant_generations.begin_bulk_load(stores.qdrant, target.name)
            new[store.key] = target.name
        else:
            new[store.key] = es_generations.create_generation(stores.es, store.alias, number, schemas["es"])
    log.info("full rebuild: generation %d -> %s", number, new)
    return {"number": number, "live": live_names(stores, aliases), "new": new, "qdrant_indexing": indexing}


def end_generation_load(stores: Stores, generation: Mapping[str, Any]) -> None:
    """Restore Qdrant indexing on the new generation's collections (teardown, before the gate)."""
    from embedding_pipeline.stores.qdrant import generations as qdrant_generations

    for name, previous in generation.get("qdrant_indexing", {}).items():
        qdrant_generations.end_bulk_load(stores.qdrant, name, previous)


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


def retain(stores: Stores, aliases: Sequence[StoreAlias], keep: int) -> list[str]:
    """Drop generations older than the live one, except the ``keep - 1`` newest that served;
    generations newer than the live one (another run's build, or one kept for inspection after a
    failed gate) and the live one are never dropped."""
    if keep < 1:
        raise ConfigError(f"keep_generations must be >= 1, got {keep}")
    dropped: list[str] = []
    gone: list[tuple[str, str]] = []  # (store, physical name): their state files and change logs go too
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
    forget_generations(gone)
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


ROLLBACK_STAGES = ("all", "keyword_index", "product_link")


def stage_aliases(keyword_qdrant: str, keyword_es: str, product: str) -> dict[str, list[StoreAlias]]:
    """The aliases of each stage: keyword index (Qdrant + ES), product link (Qdrant + ES)."""
    return {
        "keyword_index": [StoreAlias("qdrant", keyword_qdrant), StoreAlias("es", keyword_es)],
        "product_link": [StoreAlias("qdrant", product), StoreAlias("es", product)],
    }


def rollback_stage(
    stores: Stores, stage: str, by_stage: Mapping[str, list[StoreAlias]]
) -> list[dict[str, Any]]:
    """:func:`rollback` of one stage's aliases (the other stage's live model must match), or of
    every alias of both stages at once (``all``)."""
    if stage not in ROLLBACK_STAGES:
        raise ConfigError(f"stage must be one of {ROLLBACK_STAGES}, got {stage!r}")
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


def _aliases_of(prepared: Mapping[str, Any]) -> list[StoreAlias]:
    return [StoreAlias(*key.split(":", 1)) for key in prepared["generation"]["new"]]


def _open(publish: Publish, aliases: Sequence[StoreAlias]) -> Any:
    systems = {store.system for store in aliases}
    return open_stores(
        publish.qdrant_settings, publish.es_settings, qdrant="qdrant" in systems, es="es" in systems
    )


def _failed(report: dict[str, Any], run_dir: str, exc: GenerationError) -> None:
    """Put the failed rebuild into the report (the error is raised by the caller)."""
    from embedding_pipeline.runs.report import write_report

    section = {**(report.get("generation") or {}), **(exc.section or {}), "error": str(exc)}
    write_report(run_dir, {**report, "status": "failed", "generation": section})


def gate_generation(
    report: dict[str, Any], run_dir: str, prepared: dict[str, Any], kind: str, publish: Publish
) -> dict[str, Any]:
    """The gate of a full rebuild, after the run's report and state commit (the finalize task).
    The report gains a ``generation`` section with every check's numbers, status ``gated``; a
    failed check rewrites it with ``gate_failed`` and raises :class:`GateError` (no alias moved,
    the new generation kept for inspection)."""
    from embedding_pipeline.runs.report import write_report

    plan = prepared["generation"]
    aliases = _aliases_of(prepared)
    section: dict[str, Any] = {
        "generation": plan["number"],
        "live_before": plan["live"],
        "new": plan["new"],
        "checks": [],
        "swapped": [],
        "dropped": [],
    }
    started = time.monotonic()
    try:
        with _open(publish, aliases) as stores:
            try:
                checks = gate(stores, prepared, aliases, kind, publish.rules)
            except PipelineError as exc:  # a check that cannot run (a generation gone, a store down)
                raise GateError(f"the gate could not run: {exc}; no alias moved", section) from exc
        section["checks"] = [asdict(c) for c in checks]
        section["gate_seconds"] = round(time.monotonic() - started, 2)
        failed = [c for c in checks if not c.ok]
        if failed:
            section["status"] = "gate_failed"
            raise GateError(
                "the new generation failed the gate; no alias moved and it is kept for inspection ("
                + ", ".join(plan["new"].values())
                + "): "
                + "; ".join(f"{c.name}: {c.detail}" for c in failed),
                section,
            )
    except GateError as exc:
        _failed(report, run_dir, exc)
        raise
    report = {**report, "generation": {**section, "status": "gated"}}
    write_report(run_dir, report)
    return report


def swap_generation(run_dir: str, prepared: dict[str, Any], publish: Publish) -> dict[str, Any]:
    """The swap of a gated full rebuild (the publish task, after an optional approval): move every
    alias, drop what retention lets go, and record both in the run's report, which it returns. A
    failed swap is recorded (``swap_failed``, what every alias points at) and raised."""
    from embedding_pipeline.runs.report import read_report, write_report

    report = read_report(run_dir)
    section = dict(report.get("generation") or {})
    if section.get("status") != "gated":
        raise GenerationError(
            f"the run's generation is {section.get('status')!r}, not gated: nothing to swap"
        )
    plan, aliases = prepared["generation"], _aliases_of(prepared)
    started = time.monotonic()
    try:
        with _open(publish, aliases) as stores:
            section["swapped"] = swap(stores, [(store, plan["new"][store.key]) for store in aliases])
            section["swap_seconds"] = round(time.monotonic() - started, 2)
            section["dropped"] = retain(stores, aliases, publish.keep)
    except SwapError as exc:
        exc.section = {**section, "status": "swap_failed"}
        _failed(report, run_dir, exc)
        raise
    report = {**report, "generation": {**section, "status": "swapped"}}
    write_report(run_dir, report)
    return report
