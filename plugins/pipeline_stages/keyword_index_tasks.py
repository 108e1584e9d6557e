"""The keyword index stage: plan -> prepare_sinks (state, deletes, guard; a full rebuild's new
generation) -> embed[] -> qdrant_upsert[] + es_index[] -> finish_sinks -> finalize (report, state
commit, a full rebuild's gate) -> approve_swap (optional) -> go_live (a full rebuild's swap; emits
the ``keyword_index`` Asset)."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, get_current_context

from pipeline_stages.options import input_spec, publish_options
from pipeline_stages.runtime import (
    mapped_results,
    no_retry_on_setup_errors,
    qdrant_task_concurrency,
    run_meta,
    server_settings,
    stage_task,
    state_settings,
    store_settings,
)
from pipeline_stages.steps import StageEnds, chunks_task, plan_task, publish_tail

KEYWORD_INDEX = Asset("keyword_index")
STAGE = "keyword_index"


def _stores(params: dict) -> Any:
    from embedding_pipeline.stages.keywords.stage import KeywordStores

    return KeywordStores(
        params["write_qdrant"], params["write_es"], params["qdrant_alias"], params["es_alias"]
    )


def keyword_index_tasks() -> StageEnds:
    """Create the stage's tasks in the current DAG or TaskGroup."""

    @stage_task
    def prepare_sinks(planned: dict) -> dict:
        from embedding_pipeline.runs.plan import model_info
        from embedding_pipeline.stages.keywords import stage as ki

        params = get_current_context()["params"]
        with no_retry_on_setup_errors():
            model = model_info(server_settings(), params["model_name"])
            spec = input_spec(params)
            full = params["mode"] == "full"
            return ki.prepare_sinks(_stores(params), model, planned, spec, store_settings(), full=full)

    @stage_task
    def embed(chunk: dict, planned: dict, prepared: dict) -> dict:
        from embedding_pipeline.stages.keywords import stage as ki

        with no_retry_on_setup_errors():
            return ki.embed(chunk, planned["run_dir"], prepared, server_settings(), state_settings())

    @stage_task(max_active_tis_per_dag=qdrant_task_concurrency())
    def qdrant_upsert(embedded: dict, planned: dict, prepared: dict) -> dict:
        from embedding_pipeline.stages.keywords import stage as ki

        params = get_current_context()["params"]
        with no_retry_on_setup_errors():
            return ki.write_qdrant(embedded, planned["run_dir"], _stores(params), prepared, store_settings())

    @stage_task
    def es_index(embedded: dict, planned: dict, prepared: dict) -> dict:
        from embedding_pipeline.stages.keywords import stage as ki

        params = get_current_context()["params"]
        with no_retry_on_setup_errors():
            return ki.write_es(embedded, planned["run_dir"], _stores(params), prepared, store_settings())

    @stage_task(trigger_rule="all_done")
    def finish_sinks(prepared: dict | None) -> None:
        from embedding_pipeline.stages.keywords import stage as ki

        ki.finish_sinks(_stores(get_current_context()["params"]), prepared, store_settings())

    @stage_task(trigger_rule="none_failed", retries=0)
    def finalize(planned: dict, prepared: dict, embedded: list, qdrant: list, es: list) -> dict:
        from embedding_pipeline.runs.report import summary
        from embedding_pipeline.stages.keywords import stage as ki

        params = get_current_context()["params"]
        targets = _stores(params)
        sinks = {
            name: mapped_results(results)
            for name, results in (("qdrant", qdrant), ("es", es))
            if getattr(targets, name)
        }
        ratio, publish = params["max_dead_letter_ratio"], publish_options(params)
        with no_retry_on_setup_errors():
            report = ki.finalize(
                planned, prepared, mapped_results(embedded), sinks, run_meta(STAGE), ratio, publish
            )
        return summary(report, planned["run_dir"])

    planned = plan_task("keywords", STAGE)
    prepared = prepare_sinks(planned)
    embedded = embed.partial(planned=planned, prepared=prepared).expand(chunk=chunks_task(planned, prepared))
    qdrant = qdrant_upsert.partial(planned=planned, prepared=prepared).expand(embedded=embedded)
    es = es_index.partial(planned=planned, prepared=prepared).expand(embedded=embedded)
    done = finish_sinks(prepared)
    [qdrant, es] >> done
    report = finalize(planned, prepared, embedded, qdrant, es)
    return publish_tail(KEYWORD_INDEX, planned, prepared, done, report)
