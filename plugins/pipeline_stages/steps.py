"""The shape every stage shares around its own tasks:

    plan -> prepare -> chunks -> (the stage's mapped tasks) -> finish (teardown) -> finalize
    -> approve_swap (optional) -> go_live (a full rebuild's swap) -> announce (its Asset event)

``plan_task``, ``chunks_task`` and ``publish_tail`` create the shared tasks in the DAG being
defined; a stage's module adds its own prepare, mapped, finish and finalize tasks between them."""

from __future__ import annotations

from typing import Any, NamedTuple

from airflow.sdk import get_current_context

from pipeline_stages.approval import SwapApproval
from pipeline_stages.options import check_params, input_spec, publish_options
from pipeline_stages.runtime import no_retry_on_setup_errors, stage_task


class StageEnds(NamedTuple):
    """Where a stage's tasks start and where its data is live: the chain wires the next stage after
    ``live``, not after the Asset event, which an empty night skips."""

    first: Any
    live: Any


def plan_task(table: str, stage: str) -> Any:
    """The stage's first task, ``plan``: bad Params fail the run here, before any work; then this
    run's partitions of ``table`` (``keywords`` or ``products``) in bounded chunks."""

    @stage_task(retries=0, task_id="plan")
    def plan() -> dict:
        from embedding_pipeline.runs.partitions import KEYWORDS, PRODUCTS

        check_params(get_current_context()["params"])
        return plan_stage({"keywords": KEYWORDS, "products": PRODUCTS}[table], stage)

    return plan()


def chunks_task(planned: Any, prepared: Any) -> Any:
    """``chunks``: what the embed tasks are mapped over (the planned chunks and the delete chunks
    prepare planned against the state)."""

    @stage_task(task_id="chunks")
    def chunks(planned: dict, prepared: dict) -> list[dict]:
        return planned["chunks"] + prepared["delete_chunks"]

    return chunks(planned, prepared)


def publish_tail(asset: Any, planned: Any, prepared: Any, finished: Any, report: Any) -> StageEnds:
    """The end every stage shares, after its teardown (``finished``) and finalize (``report``):
    approve_swap (optional) -> go_live -> announce."""

    @stage_task(trigger_rule="none_failed", retries=0, task_id="go_live")
    def live(planned: dict, prepared: dict) -> dict:
        return go_live(planned, prepared)

    @stage_task(outlets=[asset], retries=0, task_id="announce")
    def announced(planned: dict) -> dict:
        return announce(asset, planned)

    served = live(planned, prepared)
    finished >> report >> SwapApproval(task_id="approve_swap") >> served >> announced(planned)
    return StageEnds(planned, served)


def plan_stage(table: Any, stage: str) -> dict:
    """The plan task of a stage: this run's partitions of ``table`` in bounded chunks (Params)."""
    from dataclasses import replace
    from pathlib import Path

    from embedding_pipeline.runs import plan as partition_runs

    context = get_current_context()
    params = context["params"]
    spec = input_spec(params)
    with no_retry_on_setup_errors():
        dts = partition_runs.resolve_partitions(
            params["dt"], params["dt_end"], context.get("data_interval_start"), context["dag_run"].run_after
        )
        if params["mode"] == "full":  # every partition up to the last date, replayed oldest first
            dts = partition_runs.replayed_partitions(Path(params["input_root"]), table, dts[-1])
    run_dir = partition_runs.run_dir_for(context["dag"].dag_id, context["run_id"], stage)
    with no_retry_on_setup_errors():
        return partition_runs.plan(
            replace(table, tombstone_column=spec.tombstone_column),
            Path(params["input_root"]),
            dts,
            run_dir,
            params["chunk_rows"],
            params["max_chunks"],
            partition_runs.PlanRules(params["missing_partition"], params["bad_files"], spec.kind),
            owner=f"{context['dag'].dag_id}/{context['run_id']}",
        )


def go_live(planned: dict, prepared: dict) -> dict:
    """The stage's last step of work, after finalize (report, state commit, a full rebuild's gate)
    and the optional approval: a full rebuild's swap. Returns the summary XCom gets (the full report
    is a file in the run dir)."""
    from embedding_pipeline.runs.report import read_report, summary

    params, run_dir = get_current_context()["params"], planned["run_dir"]
    if params["mode"] == "full":
        from embedding_pipeline.generations.cutover import swap_generation

        with no_retry_on_setup_errors():
            report = swap_generation(run_dir, prepared, publish_options(params))
    else:
        report = read_report(run_dir)
    return summary(report, run_dir)


def announce(asset: Any, planned: dict) -> dict:
    """The stage's Asset event (partitions and rows read), after ``go_live``: followers only ever
    see data the aliases serve. A run that read no rows sends none - the task is skipped, so a DAG
    scheduled on the Asset does not run on an empty night."""
    from airflow.sdk.exceptions import AirflowSkipException
    from embedding_pipeline.runs.report import read_report

    report = read_report(planned["run_dir"])
    if report["status"] == "no_data":
        raise AirflowSkipException(
            f"no data: partitions {report['partitions'] or 'none'} held no rows; no {asset.name} event"
        )
    extra = {"partitions": report["partitions"], "rows_read": report["rows_read"]}
    get_current_context()["outlet_events"][asset].extra = extra
    return extra
