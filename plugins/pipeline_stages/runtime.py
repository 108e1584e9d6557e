"""What every stage task needs at run time: the ``@task`` flavour stage tasks use, store and
inference-server settings from Connections, the Qdrant task concurrency, setup errors turned into
failures Airflow does not retry, and reading mapped results."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

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


def store_settings() -> dict[str, Any]:
    """Each store's settings (``stores.registry``) from the ``qdrant_default`` /
    ``elasticsearch_default`` Connections, and the state database's (``state``) from
    ``embedding_state``."""
    from pipeline_hooks.store_hooks import ElasticsearchStoreHook, QdrantStoreHook

    return {
        "qdrant": QdrantStoreHook().get_settings(),
        "es": ElasticsearchStoreHook().get_settings(),
        "state": state_settings(),
    }


def state_settings() -> Any:
    """The state database from the ``embedding_state`` Connection (else the environment)."""
    from pipeline_hooks.state_hook import StateStoreHook

    return StateStoreHook().get_settings()


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


def run_meta(stage: str) -> dict[str, Any]:
    """What the run report says about the run: DAG, stage and run id."""
    from airflow.sdk import get_current_context

    context = get_current_context()
    return {"dag_id": context["dag"].dag_id, "stage": stage, "run_id": context["run_id"]}
