"""Index one or more ``dt`` partitions of keywords into Qdrant (vectors) and Elasticsearch (text).

plan -> prepare_sinks -> embed (mapped over bounded, row-group-aligned chunks) -> qdrant_upsert and
es_index (mapped, in parallel) -> finish_sinks -> finalize (accounting identity + run report).

Schedule: nightly at 01:00 UTC with ``CronDataIntervalTimetable``, so each run has a real data
interval [D 01:00, D+1 01:00) and indexes partition ``dt=D`` (Airflow 3's default cron timetable,
CronTriggerTimetable, gives runs with start == end and no "previous day" to derive). Backfill:
``airflow backfill create --dag-id keyword_index --from-date 2024-01-01 --to-date 2024-01-08``.
Manual runs: set ``dt`` (and ``dt_end`` for a range) in the form, or leave it empty for the day
before the run. Re-running a partition is idempotent: ids derive from ``keyword_id``.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import Asset, CronDataIntervalTimetable, Param, dag, get_current_context, task
from embedding_pipeline.keyword_index import Targets
from embedding_pipeline.settings import data_root

KEYWORD_INDEX = Asset("keyword_index")
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# Embedded Qdrant (local mode) keeps its storage folder locked by one process: serialise its writers.
QDRANT_LOCAL = not (os.environ.get("QDRANT_URL") or os.environ.get("AIRFLOW_CONN_QDRANT_DEFAULT"))


def _store_settings():
    """Qdrant and ES settings from the ``qdrant_default`` / ``elasticsearch_default`` Connections."""
    from pipeline_hooks.store_hooks import ElasticsearchStoreHook, QdrantStoreHook

    return QdrantStoreHook().get_settings(), ElasticsearchStoreHook().get_settings()


def _targets(params: dict) -> Targets:
    return Targets(params["write_qdrant"], params["write_es"], params["qdrant_alias"], params["es_alias"])


@dag(
    dag_id="keyword_index",
    schedule=CronDataIntervalTimetable("0 1 * * *", timezone="UTC"),
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=2,
    tags=["embedding", "index"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True},
    params={
        "dt": Param(None, type=["null", "string"], format="date", description="Partition (YYYY-MM-DD)."),
        "dt_end": Param(
            None, type=["null", "string"], format="date", description="Last partition of a range."
        ),
        "input_root": Param(
            str(data_root()), type="string", minLength=1, description="Root of <table>/dt=.../"
        ),
        "chunk_rows": Param(50_000, type="integer", minimum=100, maximum=1_000_000),
        "max_chunks": Param(64, type="integer", minimum=1, maximum=1024),
        "model_name": Param("minilm", type="string", pattern=NAME),
        "write_qdrant": Param(True, type="boolean"),
        "write_es": Param(True, type="boolean"),
        "qdrant_alias": Param("keywords", type="string", pattern=NAME),
        "es_alias": Param("keywords", type="string", pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$"),
        "max_dead_letter_ratio": Param(0.05, type="number", minimum=0, maximum=1),
        "missing_partition": Param("skip", enum=["skip", "fail"]),
        "bad_files": Param("fail", enum=["fail", "dead_letter"]),
    },
)
def keyword_index():
    @task(retries=0)
    def plan() -> dict:
        from pathlib import Path

        from embedding_pipeline import keyword_index as ki

        context = get_current_context()
        params = context["params"]
        dts = ki.resolve_partitions(
            params["dt"], params["dt_end"], context.get("data_interval_start"), context["dag_run"].run_after
        )
        run_dir = ki.run_dir_for(context["dag"].dag_id, context["run_id"])
        return ki.plan(
            Path(params["input_root"]),
            dts,
            run_dir,
            params["chunk_rows"],
            params["max_chunks"],
            params["missing_partition"],
            params["bad_files"],
        )

    @task
    def chunks(planned: dict) -> list[dict]:
        return planned["chunks"]

    @task
    def prepare_sinks() -> dict:
        from embedding_pipeline import keyword_index as ki

        params = get_current_context()["params"]
        model = ki.model_info(None, params["model_name"])
        qdrant, es = _store_settings()
        return {**model, **ki.prepare_sinks(_targets(params), model, qdrant, es)}

    @task
    def embed(chunk: dict, planned: dict, prepared: dict) -> dict:
        from embedding_pipeline import keyword_index as ki

        return ki.embed(chunk, planned["run_dir"], prepared["model_name"])

    @task(max_active_tis_per_dag=1 if QDRANT_LOCAL else 16)
    def qdrant_upsert(embedded: dict, planned: dict) -> dict:
        from embedding_pipeline import keyword_index as ki

        params = get_current_context()["params"]
        return ki.write_qdrant(embedded, planned["run_dir"], _targets(params), _store_settings()[0])

    @task
    def es_index(embedded: dict, planned: dict) -> dict:
        from embedding_pipeline import keyword_index as ki

        params = get_current_context()["params"]
        return ki.write_es(embedded, planned["run_dir"], _targets(params), _store_settings()[1])

    @task(trigger_rule="all_done")
    def finish_sinks(prepared: dict | None) -> None:
        from embedding_pipeline import keyword_index as ki

        ki.finish_sinks(_targets(get_current_context()["params"]), prepared, _store_settings()[1])

    @task(trigger_rule="none_failed", outlets=[KEYWORD_INDEX], retries=0)
    def finalize(planned: dict, prepared: dict, embedded: list, qdrant: list, es: list) -> dict:
        from embedding_pipeline import keyword_index as ki

        context = get_current_context()
        params = context["params"]
        meta = {"dag_id": context["dag"].dag_id, "run_id": context["run_id"], **prepared}
        meta.pop("es_previous_settings", None)
        report = ki.finalize(
            planned,
            list(embedded or []),
            list(qdrant or []),
            list(es or []),
            _targets(params),
            meta,
            params["max_dead_letter_ratio"],
        )
        context["outlet_events"][KEYWORD_INDEX].extra = {
            "partitions": report["partitions"],
            "rows_read": report["rows_read"],
        }
        return {k: report[k] for k in ("status", "rows_read", "partitions", "missing_partitions")} | {
            "sinks": {
                name: {"indexed": s["indexed"], "dead_lettered": s["dead_lettered"]}
                for name, s in report["sinks"].items()
            }
        }

    planned = plan()
    prepared = prepare_sinks()
    embedded = embed.partial(planned=planned, prepared=prepared).expand(chunk=chunks(planned))
    qdrant = qdrant_upsert.partial(planned=planned).expand(embedded=embedded)
    es = es_index.partial(planned=planned).expand(embedded=embedded)
    done = finish_sinks(prepared)
    [qdrant, es] >> done
    report = finalize(planned, prepared, embedded, qdrant, es)
    done >> report


keyword_index()
