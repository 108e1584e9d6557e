"""The FastAPI app behind the "Pipeline report" tab: one HTML page per DAG run, rendered from the
run's report files (``embedding_pipeline.runs.report_page``) wherever they are stored (a local
folder or object storage: ``EMBEDDING_STAGING_URL``).

Mounted on Airflow's API server, so it answers only a signed-in user allowed to read the DAG's runs
(``requires_access_dag``: the UI's session cookie, or a Bearer token, checked by Airflow's auth
manager); anyone else gets Airflow's 401/403.
"""

from __future__ import annotations

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import requires_access_dag
from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse

URL_PREFIX = "/pipeline-report"

app = FastAPI(title="Pipeline report", docs_url=None, redoc_url=None, openapi_url=None)


@app.get(
    "/dags/{dag_id}/runs/{run_id}",
    response_class=HTMLResponse,
    dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.RUN))],
)
def run_report(dag_id: str, run_id: str) -> HTMLResponse:
    """The report page of one run (every stage it ran); a plain message while none is written."""
    from embedding_pipeline.runs.report_page import render_page, stage_pages

    return HTMLResponse(render_page(dag_id, run_id, stage_pages(dag_id, run_id)))
