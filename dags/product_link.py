"""Link every product of one or more ``dt`` partitions to its top-K most similar keywords.

**Run one date** (once keywords are indexed): Trigger -> *Date (dt)* YYYY-MM-DD; a range: also
*End date (dt_end)*. **Results**: the run's **Pipeline report** tab, and
``var/runs/product_link/<run_id>/`` (``report.md``, ``report.json``, ``dead_letters/``).

plan -> prepare (keyword collection exists and matches the model; product index behind its alias)
-> embed (mapped; product text with the model's query role) -> link (mapped; Qdrant top-K in
batches -> product documents with nested keywords in Elasticsearch) -> relink (stored products
tonight's keyword changes affect) -> finish_sinks -> finalize -> approve_swap -> go_live ->
announce (the ``product_links`` Asset event; skipped when no rows were read).

Nightly and in backfills it runs inside ``embedding_chain``. Re-linking replaces each product's
nested list; the latest ``dt`` of a product wins whatever order partitions are linked in.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag
from pipeline_stages.params import (
    limit_params,
    model_params,
    partition_params,
    product_params,
    rebuild_params,
)
from pipeline_stages.product_link_tasks import product_link_tasks


@dag(
    dag_id="product_link",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    # One run at a time: a run's finalize commits the generation's state, and the next run's plan
    # of deletes and skips must see it (runs of other DAGs on the same generation are refused by
    # the state's lease).
    max_active_runs=1,
    tags=["embedding", "link"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True},
    params={**partition_params(), **model_params(), **product_params(), **rebuild_params(), **limit_params()},
)
def product_link():
    product_link_tasks()


product_link()
