"""Importing, once, what every pipeline task imports, in the Airflow processes that start tasks.

On Linux, Airflow 3 forks each task process from the process that launches it: a LocalExecutor
worker (itself forked from the scheduler) or a Celery worker's pool process. A module already
imported there is inherited by the task instead of imported again - and the stores' and
serving clients' libraries (qdrant-client's models, pyarrow, elasticsearch, gRPC) take seconds
to import on a small CPU, in every task instance. ``plugins/airflow_local_settings.py`` (Airflow's
start-up hook, imported by every Airflow process) calls :func:`preload_for_tasks`, which imports
them only in those launching processes; the dag-processor and the API server stay light, and DAG
parsing imports none of them (tests/test_dag_parsing.py).

What it costs: the launching process holds the modules (shared copy-on-write with its forks).
``EMBEDDING_TASK_PRELOAD=0`` turns it off. Measured by bench/bench_executors.py.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time

log = logging.getLogger(__name__)

# The modules a stage's tasks import (their heavy libraries come with them). Not the model export's
# (torch): the publish task runs rarely, and torch alone would double the launcher's memory.
TASK_MODULES = (
    "embedding_pipeline.stages.keywords.stage",
    "embedding_pipeline.stages.products.stage",
    "embedding_pipeline.stages.embed",
    "embedding_pipeline.stores.registry",
    "embedding_pipeline.stores.qdrant.adapter",
    "embedding_pipeline.stores.elasticsearch.adapter",
    "embedding_pipeline.generations.lifecycle",
    "embedding_pipeline.generations.cutover",
    "embedding_pipeline.generations.agreement",
    "embedding_pipeline.runs.report",
    "embedding_pipeline.serving.client",
    "embedding_pipeline.stores.qdrant.upsert",
    "embedding_pipeline.stores.qdrant.search",
    "embedding_pipeline.stores.qdrant.edge.client",
    "embedding_pipeline.stores.elasticsearch.bulk",
    "embedding_pipeline.stores.elasticsearch.bulk_load",
    "embedding_pipeline.stores.elasticsearch.read",
)


def launches_tasks(argv: list[str]) -> bool:
    """Is this the Airflow command that forks task processes: the scheduler (whose LocalExecutor
    workers run tasks) or a Celery worker?"""
    command = [a for a in argv[1:] if not a.startswith("-")][:2]
    return command[:1] == ["scheduler"] or command == ["celery", "worker"]


def preload_for_tasks(argv: list[str] | None = None) -> list[str]:
    """Import :data:`TASK_MODULES` when this process launches tasks (and preloading is on); the
    modules imported. A module that fails to import is left to the task, which reports it."""
    argv = sys.argv if argv is None else argv
    if os.environ.get("EMBEDDING_TASK_PRELOAD", "1") == "0" or not launches_tasks(argv):
        return []
    started, loaded = time.monotonic(), []
    for name in TASK_MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # the task imports it again and fails with the full trace
            log.warning("task preload: %s not imported (%s: %s)", name, type(exc).__name__, exc)
        else:
            loaded.append(name)
    log.info(
        "task preload: %d modules in %.1fs for the tasks this process forks",
        len(loaded),
        time.monotonic() - started,
    )
    return loaded
