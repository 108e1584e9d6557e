"""Registers the "Pipeline report" view: a tab on every DAG run's page in the Airflow UI showing
the run's report (counts per stage and store, dead letters by reason with examples, charts)."""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin
from pipeline_report.app import URL_PREFIX, app


class PipelineReportPlugin(AirflowPlugin):
    name = "pipeline_report"
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {"app": app, "url_prefix": URL_PREFIX, "name": "Pipeline report"}
    ]
    external_views: ClassVar[list[dict[str, Any]]] = [
        {
            "name": "Pipeline report",
            "href": URL_PREFIX + "/dags/{DAG_ID}/runs/{RUN_ID}",
            "destination": "dag_run",
            "url_route": "pipeline-report",
        }
    ]
