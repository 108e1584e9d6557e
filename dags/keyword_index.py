"""Index one or more ``dt`` partitions of keywords into Qdrant (vectors) and Elasticsearch (text).

**Run one date**: Trigger -> *Date (dt)* YYYY-MM-DD; a range: also *End date (dt_end)* (at most 366
days); empty: the day before the run. **Results**: the run's **Pipeline report** tab, and
``var/runs/keyword_index/<run_id>/`` (``report.md``, ``report.json``, ``dead_letters/``).

plan -> prepare_sinks -> embed (mapped over bounded, row-group-aligned chunks) -> qdrant_upsert and
es_index (mapped, in parallel) -> finish_sinks -> finalize (accounting identity + run report) ->
approve_swap (a full rebuild, if asked) -> go_live -> announce (the ``keyword_index`` Asset event;
skipped when no rows were read).

The nightly schedule and backfills belong to ``embedding_chain``, which runs these same tasks after
the model stage and before product linking (one schedule, so a partition is never indexed twice a
night). Re-running a partition is idempotent: ids derive from ``keyword_id``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag
from pipeline_stages.keyword_index_tasks import keyword_index_tasks
from pipeline_stages.params import (
    keyword_params,
    limit_params,
    model_params,
    partition_params,
    rebuild_params,
)


@dag(
    dag_id="keyword_index",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    # One run at a time: a run's finalize commits the generation's state, and the next run's plan
    # of deletes and skips must see it (runs of other DAGs on the same generation are refused by
    # the state's lease).
    max_active_runs=1,
    tags=["embedding", "index"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True},
    params={**partition_params(), **model_params(), **keyword_params(), **rebuild_params(), **limit_params()},
)
def keyword_index():
    keyword_index_tasks()


keyword_index()
