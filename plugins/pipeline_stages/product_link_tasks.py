"""The product link stage: plan -> prepare (state, deletes, guard, products keyword changes
affect; a full rebuild's new generation) -> embed[] -> link[] -> relink[] -> finish_sinks ->
finalize (report, state commit, a full rebuild's gate) -> approve_swap (optional) -> go_live (a
full rebuild's swap; emits the ``product_links`` Asset)."""

from __future__ import annotations

from airflow.sdk import Asset, get_current_context

from pipeline_stages.options import input_spec, link_options, publish_options
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

PRODUCT_LINKS = Asset("product_links")
STAGE = "product_link"


def product_link_tasks() -> StageEnds:
    """Create the stage's tasks in the current DAG or TaskGroup."""

    @stage_task
    def relink_chunks(prepared: dict) -> list[dict]:
        return prepared["relink_chunks"]

    @stage_task
    def prepare(planned: dict) -> dict:
        from embedding_pipeline.runs.plan import model_info
        from embedding_pipeline.stages.products import stage as product_link

        params = get_current_context()["params"]
        with no_retry_on_setup_errors():
            model = model_info(server_settings(), params["model_name"])
            return product_link.prepare(
                link_options(params),
                model,
                planned,
                input_spec(params),
                store_settings(),
                relink_all=params["relink"] == "all",
                full=params["mode"] == "full",
            )

    @stage_task
    def embed(chunk: dict, planned: dict, prepared: dict) -> dict:
        from embedding_pipeline.stages.products import stage as product_link

        options = link_options(get_current_context()["params"])
        with no_retry_on_setup_errors():
            return product_link.embed(
                chunk, planned["run_dir"], prepared, options.role, server_settings(), state_settings()
            )

    @stage_task(max_active_tis_per_dag=qdrant_task_concurrency())
    def link(embedded: dict, planned: dict, prepared: dict) -> dict:
        from embedding_pipeline.stages.products import stage as product_link

        options = link_options(get_current_context()["params"])
        with no_retry_on_setup_errors():
            return product_link.link_chunk(embedded, planned["run_dir"], options, prepared, store_settings())

    @stage_task(max_active_tis_per_dag=qdrant_task_concurrency())
    def relink(chunk: dict, planned: dict, prepared: dict) -> dict:
        """Stored products whose lists tonight's keyword changes affect (after link: it reads the
        vectors tonight's products stored)."""
        from embedding_pipeline.stages.products import stage as product_link

        options = link_options(get_current_context()["params"])
        with no_retry_on_setup_errors():
            return product_link.relink_chunk(chunk, planned["run_dir"], options, prepared, store_settings())

    @stage_task(trigger_rule="all_done")
    def finish_sinks(prepared: dict | None) -> None:
        from embedding_pipeline.stages.products import stage as product_link

        options = link_options(get_current_context()["params"])
        product_link.finish(options, prepared, store_settings())

    @stage_task(trigger_rule="none_failed", retries=0)
    def finalize(planned: dict, prepared: dict, embedded: list, linked: list, relinked: list) -> dict:
        from embedding_pipeline.runs.report import summary
        from embedding_pipeline.stages.products import stage as product_link

        params = get_current_context()["params"]
        meta = {**run_meta(STAGE), "link": link_options(params).to_xcom()}
        results = mapped_results(linked) + mapped_results(relinked)
        with no_retry_on_setup_errors():
            report = product_link.finalize(
                planned,
                prepared,
                mapped_results(embedded),
                results,
                meta,
                params["max_dead_letter_ratio"],
                publish_options(params),
            )
        return summary(report, planned["run_dir"])

    planned = plan_task("products", STAGE)
    prepared = prepare(planned)
    embedded = embed.partial(planned=planned, prepared=prepared).expand(chunk=chunks_task(planned, prepared))
    linked = link.partial(planned=planned, prepared=prepared).expand(embedded=embedded)
    relinked = relink.partial(planned=planned, prepared=prepared).expand(chunk=relink_chunks(prepared))
    linked >> relinked
    done = finish_sinks(prepared)
    [linked, relinked] >> done
    report = finalize(planned, prepared, embedded, linked, relinked)
    return publish_tail(PRODUCT_LINKS, planned, prepared, done, report)
