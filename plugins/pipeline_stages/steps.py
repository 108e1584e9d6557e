"""The steps every stage shares around its own tasks: plan (this run's partitions in bounded
chunks), go_live (a full rebuild's swap) and announce (the stage's Asset event)."""

from __future__ import annotations

from typing import Any, NamedTuple

from pipeline_stages.options import input_spec, publish_options
from pipeline_stages.runtime import no_retry_on_setup_errors


def plan_stage(table: Any, stage: str) -> dict:
    """The plan task of a stage: this run's partitions of ``table`` in bounded chunks (Params)."""
    from dataclasses import replace
    from pathlib import Path

    from airflow.sdk import get_current_context
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
        )


class StageEnds(NamedTuple):
    """Where a stage's tasks start and where its data is live: the chain wires the next stage after
    ``live``, not after the Asset event, which an empty night skips."""

    first: Any
    live: Any


def go_live(planned: dict, prepared: dict) -> dict:
    """The stage's last step of work, after finalize (report, state commit, a full rebuild's gate)
    and the optional approval: a full rebuild's swap. Returns the summary XCom gets (the full report
    is a file in the run dir)."""
    from airflow.sdk import get_current_context
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
    from airflow.sdk import get_current_context
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
