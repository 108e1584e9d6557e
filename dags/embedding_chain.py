"""The whole pipeline for a ``dt``: model -> keyword index -> product link, in one DAG run.

**Run one date**: Trigger -> set *Date (dt)* (YYYY-MM-DD) -> Trigger. **A range**: also set *End
date (dt_end)* (at most 366 days), or for many dates, one run per date: ``airflow backfill create
--dag-id embedding_chain --from-date 2024-01-01 --to-date 2024-01-31``. Empty *dt*: the run's own
day (a nightly run processes yesterday). Untick "Unpause on trigger" to run only what you trigger:
unpausing also starts the scheduled run of last night.

**Results**: the **Pipeline report** tab of the run (counts per stage and store, dead letters by
reason with examples, charts); the same as files in ``var/runs/embedding_chain/<run_id>/<stage>/``
(``report.md``, ``report.json``, ``dead_letters/``), whose path ``finalize`` logs. Search the
stores with ``embedding-pipeline search``.

    model (decide -> export -> parity_gate -> publish -> load_on_server -> model_ready)
      -> keyword_index (plan -> prepare_sinks -> embed[] -> qdrant_upsert[] + es_index[] -> finalize
                        -> approve_swap -> go_live -> announce)
      -> product_link  (plan -> prepare -> embed[] -> link[] -> relink[] -> finalize
                        -> approve_swap -> go_live -> announce)

``announce`` sends the stage's Asset event (``keyword_index`` / ``product_links``) and is skipped
when the run read no rows: DAGs scheduled on those Assets do not run on an empty night.

Why one DAG of task groups rather than Assets or a controller triggering the stage DAGs: a night
(or a backfilled date) is one row in the grid with every stage's tasks, mapped tasks and logs in
it; one Param form drives all stages; ``airflow backfill create --dag-id embedding_chain`` and the
nightly schedule apply to the chain directly (Asset-triggered DAGs cannot be backfilled by date,
and a controller with TriggerDagRunOperator splits one date over three runs and holds a worker
slot, or the triggerer, while it waits). The stage DAGs (``embedding_model_publish``,
``keyword_index``, ``product_link``) are built from the same task factories and run alone.

Schedule: nightly at 01:00 UTC with ``CronDataIntervalTimetable``: the run at D+1 01:00 has the
data interval of day D and processes ``dt=D`` (Airflow 3's default CronTriggerTimetable has no
interval to derive a day from). ``publish_model=if_missing`` (default) exports the model only
when the repository has none, so nightly runs do not re-export it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import CronDataIntervalTimetable, TaskGroup, dag
from pipeline_stages.keyword_index_tasks import keyword_index_tasks
from pipeline_stages.model_publish_tasks import model_gate_tasks
from pipeline_stages.params import (
    chain_params,
    keyword_params,
    limit_params,
    model_params,
    partition_params,
    product_params,
    publish_params,
    rebuild_params,
)
from pipeline_stages.product_link_tasks import product_link_tasks


@dag(
    dag_id="embedding_chain",
    schedule=CronDataIntervalTimetable("0 1 * * *", timezone="UTC"),
    start_date=datetime(2024, 1, 1),
    catchup=False,
    # Runs share the collections and indices behind the aliases, and local-mode Qdrant is locked
    # by one process: one date at a time (backfills queue behind each other).
    max_active_runs=1,
    tags=["embedding", "chain"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True},
    params={
        **partition_params(),
        **chain_params(),
        **model_params(),
        **publish_params(),
        **keyword_params(),
        **product_params(),
        **rebuild_params(),
        **limit_params(),
    },
)
def embedding_chain():
    with TaskGroup("model") as model:
        model_gate_tasks()
    with TaskGroup("keyword_index"):
        keywords = keyword_index_tasks()
    with TaskGroup("product_link"):
        products = product_link_tasks()
    # Each stage after the previous one's data is live (go_live), not after its Asset event: an
    # empty night of keywords skips that event, and tonight's products are still linked.
    model >> keywords.first
    keywords.live >> products.first


embedding_chain()
