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
    from embedding_pipeline.product_link import LinkSetupError
    from embedding_pipeline.qdrant_sink import CollectionMismatchError

    try:
        yield
    except (ConfigError, EsIndexError, LinkSetupError, CollectionMismatchError) as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


def run_dir(stage: str) -> Any:
    """This run's directory for ``stage`` (the chain keeps one subdirectory per stage)."""
    from airflow.sdk import get_current_context
    from embedding_pipeline.partition_runs import run_dir_for

    context = get_current_context()
    return run_dir_for(context["dag"].dag_id, context["run_id"], stage)


def partitions() -> list[str]:
    """The ``dt`` partitions of this run: Params, else the data interval, else the day before."""
    from airflow.sdk import get_current_context
    from embedding_pipeline.partition_runs import resolve_partitions

    context = get_current_context()
    params = context["params"]
    return resolve_partitions(
        params["dt"], params["dt_end"], context.get("data_interval_start"), context["dag_run"].run_after
    )
