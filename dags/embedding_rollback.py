"""Point the aliases back at the previous generation: undo a full rebuild that went live.

One task: for every alias of the chosen stage (``all``: keyword index and product link together),
the newest earlier generation that served is found in each store, all stores (and, for one stage,
the other stage's live generation) must agree on its model and vector size, and the aliases move
in one atomic request per store, moved back if one fails. Kept generations: ``keep_generations``
of the full rebuild. The restored generation misses the nights written since it last served:
re-run those dates (incremental runs are idempotent). The CLI does the same:
``embedding-pipeline rollback``.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag
from pipeline_stages.params import rollback_params
from pipeline_stages.rollback_tasks import rollback_tasks


@dag(
    dag_id="embedding_rollback",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["embedding", "generations"],
    doc_md=__doc__,
    params=rollback_params(),
)
def embedding_rollback():
    rollback_tasks()


embedding_rollback()
