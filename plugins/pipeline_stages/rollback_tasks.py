"""The rollback task: every alias of the chosen stage(s) back to the previous generation that
served, in one step, after the model/size checks (generations.lifecycle.rollback)."""

from __future__ import annotations

from airflow.sdk import get_current_context

from pipeline_stages.runtime import no_retry_on_setup_errors, stage_task, store_settings


def rollback_tasks() -> None:
    """Create the rollback task in the current DAG."""

    @stage_task(retries=0)
    def rollback() -> list[dict]:
        from embedding_pipeline.generations.lifecycle import rollback_stage
        from embedding_pipeline.stages.names import stage_aliases
        from embedding_pipeline.stores.registry import open_stores

        params = get_current_context()["params"]
        by_stage = stage_aliases(params["qdrant_alias"], params["es_alias"], params["product_alias"])
        with no_retry_on_setup_errors(), open_stores(store_settings()) as stores:
            return rollback_stage(stores, params["stage"], by_stage)

    rollback()
