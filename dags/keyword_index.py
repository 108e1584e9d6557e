"""Index one or more ``dt`` partitions of keywords into Qdrant (vectors) and Elasticsearch (text).

plan -> prepare_sinks -> embed (mapped over bounded, row-group-aligned chunks) -> qdrant_upsert and
es_index (mapped, in parallel) -> finish_sinks -> finalize (accounting identity + run report).

Runs alone from the trigger form: set ``dt`` (and ``dt_end`` for a range, up to 366 days), or
leave it empty for the day before the run. The nightly schedule and backfills belong to
``embedding_chain``, which runs these same tasks after the model stage and before product linking
(one schedule, so a partition is never indexed twice a night). Re-running a partition is
idempotent: ids derive from ``keyword_id``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag
from pipeline_stages.keyword_index_tasks import keyword_index_tasks
from pipeline_stages.params import keyword_params, model_params, partition_params, rebuild_params


@dag(
    dag_id="keyword_index",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    # One run at a time: a run's finalize commits the generation's state (read-merge-write), and
    # the next run's plan of deletes and skips must see it.
    max_active_runs=1,
    tags=["embedding", "index"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True},
    params={**partition_params(), **rebuild_params(), **model_params(), **keyword_params()},
)
def keyword_index():
    keyword_index_tasks()


keyword_index()
