"""A full rebuild's cut-over, as a run's tasks do it: the gate in the finalize task (after the
report and the state commit), the swap plus retention in the go_live task (after an optional
approval). Both record what they did in the run's report; the lifecycle itself is
:mod:`embedding_pipeline.generations.lifecycle`, the checks :mod:`embedding_pipeline.generations.gate`."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from embedding_pipeline.errors import PipelineError
from embedding_pipeline.generations.gate import NO_STAGE_CHECKS, Candidate, StageChecks, gate
from embedding_pipeline.generations.lifecycle import GateError, GenerationError, SwapError, retain, swap
from embedding_pipeline.generations.rules import Publish
from embedding_pipeline.runs.state import IndexState
from embedding_pipeline.runs.state_db import state_settings
from embedding_pipeline.stores.protocol import StoreAlias
from embedding_pipeline.stores.registry import open_stores


def _aliases_of(prepared: Mapping[str, Any]) -> list[StoreAlias]:
    return [StoreAlias.from_key(key) for key in prepared["generation"]["new"]]


def _open(publish: Publish, aliases: Sequence[StoreAlias]) -> Any:
    return open_stores(publish.store_settings, [store.system for store in aliases])


def _failed(report: dict[str, Any], run_dir: str, exc: GenerationError) -> None:
    """Put the failed rebuild into the report (the error is raised by the caller)."""
    from embedding_pipeline.runs.report import write_report

    section = {**(report.get("generation") or {}), **(exc.section or {}), "error": str(exc)}
    write_report(run_dir, {**report, "status": "failed", "generation": section})


def gate_generation(
    report: dict[str, Any],
    run_dir: str,
    prepared: dict[str, Any],
    kind: str,
    publish: Publish,
    stage: StageChecks = NO_STAGE_CHECKS,
) -> dict[str, Any]:
    """The gate of a full rebuild, after the run's report and state commit (the finalize task).
    The report gains a ``generation`` section with every check's numbers, status ``gated``; a
    failed check rewrites it with ``gate_failed`` and raises :class:`GateError` (no alias moved,
    the new generation kept for inspection). ``stage``: what the stage adds to the generic gate."""
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
                candidate = Candidate(
                    {store: plan["new"][store.key] for store in aliases},
                    {store: plan["live"][store.key] for store in aliases},
                )
                state = IndexState(state_settings(publish.store_settings), prepared["state_key"])
                checks = gate(stores, candidate, state, prepared, kind, publish.rules, stage)
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
            section["dropped"] = retain(stores, aliases, publish.keep, state_settings(publish.store_settings))
    except SwapError as exc:
        exc.section = {**section, "status": "swap_failed"}
        _failed(report, run_dir, exc)
        raise
    report = {**report, "generation": {**section, "status": "swapped"}}
    write_report(run_dir, report)
    return report
