"""Run a stage's task functions in this process, in the order the DAG's tasks call them.

For the property tests (dozens of nightly runs per example: ``dag.test()`` costs ~15 s a run, the
functions themselves well under one) and the incremental benchmark (which measures the pipeline's
work, not Airflow's overhead). It calls the same library functions, with the same arguments, as
the task factories in ``plugins/pipeline_stages``; the ``dag.test()`` tests cover the wiring.
Mapped tasks run one after another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from embedding_pipeline.generations.cutover import swap_generation
from embedding_pipeline.generations.rules import Publish
from embedding_pipeline.runs.input_kinds import InputSpec
from embedding_pipeline.runs.partitions import KEYWORDS, PRODUCTS, TableSpec
from embedding_pipeline.runs.plan import PlanRules, model_info, plan, replayed_partitions
from embedding_pipeline.stages.keywords import stage as ki
from embedding_pipeline.stages.products import stage as pl
from embedding_pipeline.stages.products.options import LinkOptions

CHUNK_ROWS = 50_000


def _plan(
    table: TableSpec, root: Path, dts: list[str], run_dir: Path, spec: InputSpec, full: bool
) -> dict[str, Any]:
    table = replace(table, tombstone_column=spec.tombstone_column)
    if full:  # a full rebuild replays every partition up to the last date
        dts = replayed_partitions(root, table, dts[-1])
    return plan(table, root, dts, run_dir, CHUNK_ROWS, 64, PlanRules(input_kind=spec.kind))


def run_keywords(
    root: Path,
    dts: list[str],
    run_dir: Path,
    model_name: str,
    spec: InputSpec,
    alias: str,
    publish: Publish | None = None,
    before_finalize: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """plan -> prepare_sinks -> embed[] -> qdrant[] + es[] -> finish_sinks -> finalize (+ commit;
    with ``publish``, a full rebuild into a new generation, gated) -> swap. ``before_finalize``
    gets what prepare set up, between the writes and finalize: where a test injects a fault."""
    targets = ki.KeywordStores(qdrant_alias=alias, es_alias=alias)
    full = publish is not None
    planned = _plan(KEYWORDS, root, dts, run_dir, spec, full)
    model = model_info(None, model_name)
    prepared = None
    try:
        prepared = ki.prepare_sinks(targets, model, planned, spec, full=full)
        embedded = [
            ki.embed(c, str(run_dir), prepared) for c in planned["chunks"] + prepared["delete_chunks"]
        ]
        qdrant = [ki.write_qdrant(e, str(run_dir), targets, prepared) for e in embedded]
        es = [ki.write_es(e, str(run_dir), targets, prepared) for e in embedded]
    finally:
        ki.finish_sinks(targets, prepared)
    sinks = {"qdrant": qdrant, "es": es}
    if before_finalize is not None:
        before_finalize(prepared)
    report = ki.finalize(planned, prepared, embedded, sinks, {"stage": "kw"}, 0.5, publish)
    return swap_generation(planned["run_dir"], prepared, publish) if publish else report


def run_products(
    root: Path,
    dts: list[str],
    run_dir: Path,
    model_name: str,
    spec: InputSpec,
    options: LinkOptions,
    relink_all: bool = False,
    publish: Publish | None = None,
) -> dict[str, Any]:
    """plan -> prepare -> embed[] -> link[] (+ relink[]) -> finish -> finalize (+ commit; with
    ``publish``, a full rebuild, gated) -> swap."""
    full = publish is not None
    planned = _plan(PRODUCTS, root, dts, run_dir, spec, full)
    model = model_info(None, model_name)
    prepared = pl.prepare(options, model, planned, spec, relink_all=relink_all, full=full)
    try:
        chunks = planned["chunks"] + prepared["delete_chunks"]
        embedded = [pl.embed(c, str(run_dir), prepared, options.role) for c in chunks]
        linked = [pl.link_chunk(e, str(run_dir), options, prepared) for e in embedded]
        # relink after link: it reads the vectors tonight's products just stored
        linked += [pl.relink_chunk(r, str(run_dir), options, prepared) for r in prepared["relink_chunks"]]
    finally:
        pl.finish(options, prepared)
    report = pl.finalize(planned, prepared, embedded, linked, {"stage": "link"}, 0.5, publish)
    return swap_generation(planned["run_dir"], prepared, publish) if publish else report
