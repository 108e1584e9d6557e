"""What every stage's tasks share: store settings from Connections, the Qdrant task concurrency,
turning setup errors into failures that Airflow does not retry, planning and finalizing a stage."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

from airflow.sdk import task

log = logging.getLogger(__name__)

# ``@task`` for the stages' tasks. Airflow infers ``multiple_outputs`` from a ``-> dict`` return
# annotation and then pushes every key of the dict as an XCom of its own besides the whole: one
# Execution API call and one metadata-DB row per key (~90 a keyword_index run), which nothing reads.
# Downstream tasks take the whole dict.
stage_task = functools.partial(task, multiple_outputs=False)


def qdrant_task_concurrency() -> int:
    """How many mapped tasks that open Qdrant may run at once, from the resolved settings: 1 for
    local mode (its storage folder is locked by one process), more for a Qdrant server.

    Resolved when the DAG file is parsed, through the same hook the tasks use, so a
    ``qdrant_default`` Connection stored in the metadata DB counts as much as one in the
    environment (the dag-processor serves Connection look-ups to parsing processes). A Connection
    that cannot be read or is malformed gives 1 here; the tasks then fail with the clear error.
    """
    from pipeline_hooks.store_hooks import QdrantStoreHook

    try:
        return QdrantStoreHook().get_settings().task_concurrency
    except Exception as exc:
        log.warning("Qdrant settings unresolved at parse time (%s); Qdrant tasks run one at a time", exc)
        return 1


def mapped_results(results: Sequence[Any] | None) -> list[Any]:
    """The results of a mapped task, as finalize takes them: one request for all (a slice of
    Airflow's lazy sequence). Iterating the sequence would fetch them one request each and end on
    a 404 that Airflow logs as an error ("XCom not found"). None (upstream skipped) is empty."""
    return list(results[:]) if results else []


def store_settings() -> tuple[Any, Any]:
    """Qdrant and ES settings from the ``qdrant_default`` / ``elasticsearch_default`` Connections."""
    from pipeline_hooks.store_hooks import ElasticsearchStoreHook, QdrantStoreHook

    return QdrantStoreHook().get_settings(), ElasticsearchStoreHook().get_settings()


def server_settings() -> Any:
    """Inference server settings from the ``triton_default`` Connection (else the environment)."""
    from pipeline_hooks.triton_embedding_hook import TritonEmbeddingHook

    return TritonEmbeddingHook().get_settings()


@contextmanager
def no_retry_on_setup_errors() -> Iterator[None]:
    """Raise ``AirflowFailException`` for a ``SetupError`` (wrong model, mapping conflict, bad
    configuration): a retry cannot fix it, so the run fails at once with the message instead of
    after its retries. Transient errors (a server down) pass through unchanged and are retried."""
    from airflow.sdk.exceptions import AirflowFailException
    from embedding_pipeline.errors import SetupError

    try:
        yield
    except SetupError as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


def check_params(params: dict) -> None:
    """The rules between Params that the form's schema cannot state (``dt_end`` after ``dt`` and at
    most a year on, the link options together, the input kind and delete ratio), checked
    by a run's first task: every broken rule in one line, and the run fails at once instead of
    minutes later in the stage that trips over it."""
    from airflow.sdk.exceptions import AirflowFailException
    from embedding_pipeline.errors import SetupError
    from embedding_pipeline.runs.plan import check_range

    checks = [lambda: check_range(params.get("dt"), params.get("dt_end"))]
    if "input_kind" in params:
        checks.append(lambda: input_spec(params))
    if "link_mode" in params:
        from pipeline_stages.product_link_tasks import link_options

        checks.append(lambda: link_options(params))
    problems = []
    for check in checks:
        try:
            check()
        except (SetupError, AirflowFailException) as exc:  # the latter wraps a SetupError
            problems.append(str(exc.__cause__ or exc))
    if problems:
        raise AirflowFailException("Params rejected: " + "; ".join(problems))


def input_spec(params: dict) -> Any:
    """How partitions are read and how much a run may delete (Params; runs.changes)."""
    from embedding_pipeline.runs.input_kinds import InputSpec

    with no_retry_on_setup_errors():
        return InputSpec(params["input_kind"], params["tombstone_column"] or None, params["max_delete_ratio"])


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


def publish_options(params: dict) -> Any:
    """How a full rebuild gates, swaps and retains (Params ``gate_*``, ``keep_generations``)."""
    from embedding_pipeline.stages.generation_rules import GateRules, Publish

    qdrant, es = store_settings()
    with no_retry_on_setup_errors():
        rules = GateRules(
            canaries=params["gate_canaries"],
            min_recall=params["gate_min_recall"],
            recall_tolerance=params["gate_recall_tolerance"],
            quality_sample=params["gate_quality_sample"],
            max_shrink=params["max_delete_ratio"],
        )
        return Publish(rules, params["keep_generations"], qdrant, es)


def run_meta(stage: str) -> dict[str, Any]:
    """What the run report says about the run: DAG, stage and run id."""
    from airflow.sdk import get_current_context

    context = get_current_context()
    return {"dag_id": context["dag"].dag_id, "stage": stage, "run_id": context["run_id"]}


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
        from embedding_pipeline.stages.generations import swap_generation

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
