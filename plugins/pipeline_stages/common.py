"""What every stage's tasks share: store settings from Connections, the local-Qdrant rule, and
turning configuration errors into failures that Airflow does not retry."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Embedded Qdrant (local mode) keeps its storage folder locked by one process: tasks that open it
# run one at a time. With a Qdrant server (QDRANT_URL or a qdrant_default Connection) they fan out.
QDRANT_LOCAL = not (os.environ.get("QDRANT_URL") or os.environ.get("AIRFLOW_CONN_QDRANT_DEFAULT"))
QDRANT_TASK_CONCURRENCY = 1 if QDRANT_LOCAL else 16


def store_settings() -> tuple[Any, Any]:
    """Qdrant and ES settings from the ``qdrant_default`` / ``elasticsearch_default`` Connections."""
    from pipeline_hooks.store_hooks import ElasticsearchStoreHook, QdrantStoreHook

    return QdrantStoreHook().get_settings(), ElasticsearchStoreHook().get_settings()


@contextmanager
def no_retry_on_setup_errors() -> Iterator[None]:
    """Raise ``AirflowFailException`` for errors a retry cannot fix (wrong model, mapping conflict,
    bad configuration), so the run fails at once with the message instead of after its retries.
    Transient errors (a server down) pass through unchanged and are retried."""
    from airflow.sdk.exceptions import AirflowFailException
    from embedding_pipeline.errors import ConfigError
    from embedding_pipeline.es_sink import EsIndexError
    from embedding_pipeline.qdrant_sink import CollectionMismatchError
    from embedding_pipeline.stages.product_link import LinkSetupError

    try:
        yield
    except (ConfigError, EsIndexError, LinkSetupError, CollectionMismatchError) as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


def plan_stage(table: Any, stage: str) -> dict:
    """The plan task of a stage: this run's partitions of ``table`` in bounded chunks (Params)."""
    from pathlib import Path

    from airflow.sdk import get_current_context
    from embedding_pipeline.runs import plan as partition_runs

    context = get_current_context()
    params = context["params"]
    dts = partition_runs.resolve_partitions(
        params["dt"], params["dt_end"], context.get("data_interval_start"), context["dag_run"].run_after
    )
    run_dir = partition_runs.run_dir_for(context["dag"].dag_id, context["run_id"], stage)
    with no_retry_on_setup_errors():
        return partition_runs.plan(
            table,
            Path(params["input_root"]),
            dts,
            run_dir,
            params["chunk_rows"],
            params["max_chunks"],
            params["missing_partition"],
            params["bad_files"],
        )


def summary(report: dict) -> dict:
    """The small part of a run report that goes to XCom (the full report is a file)."""
    return {k: report[k] for k in ("status", "rows_read", "partitions", "missing_partitions")} | {
        "sinks": {
            name: {"indexed": s["indexed"], "dead_lettered": s["dead_lettered"]}
            for name, s in report["sinks"].items()
        },
    }
