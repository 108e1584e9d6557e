"""The model publish stage: export -> parity_gate -> publish -> load_on_server (emits the
``embedding_model`` Asset), and for the chain a ``decide`` branch in front and ``model_ready``
behind, so a nightly chain run does not re-export a model that is already published."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import Asset, get_current_context, task

from pipeline_stages.runtime import stage_task

EMBEDDING_MODEL = Asset("embedding_model")


def model_publish_tasks() -> tuple[Any, Any]:
    """Create export -> parity_gate -> publish -> load_on_server; return (export, load_on_server)."""

    @stage_task
    def export() -> str:
        from embedding_pipeline.model.publish import ExportRequest, export_model
        from embedding_pipeline.model.repository import validate_model_name
        from embedding_pipeline.settings import work_dir

        context = get_current_context()
        params = context["params"]
        validate_model_name(params["model_name"])
        request = ExportRequest(
            source=params["model_source"],
            precision=params["precision"],
            family=None if params["family"] == "auto" else params["family"],
            max_length=params["max_length"],
        )
        run_key = "".join(c if c.isalnum() else "_" for c in context["run_id"])
        staging = work_dir() / "staging" / "model_publish" / context["dag"].dag_id / run_key
        return str(export_model(request, staging))

    @stage_task(retries=0)
    def parity_gate(staging: str) -> dict:
        from embedding_pipeline.model.publish import gate_model

        return gate_model(Path(staging))

    @stage_task(retries=1, retry_delay=timedelta(seconds=10))
    def publish(staging: str, parity: dict) -> dict:
        from embedding_pipeline.model.publish import publish_model
        from embedding_pipeline.settings import model_repository_path

        params = get_current_context()["params"]
        published = publish_model(
            Path(staging),
            model_repository_path(),
            params["model_name"],
            max_batch_size=params["max_batch_size"],
            keep_versions=params["keep_versions"],
        )
        return {
            "unchanged": published.unchanged,
            "name": published.name,
            "version": published.version,
            "path": str(published.path),
            "dim": published.metadata["dim"],
            "precision": published.metadata["precision"],
        }

    @stage_task(retries=3, retry_delay=timedelta(seconds=15), outlets=[EMBEDDING_MODEL])
    def load_on_server(published: dict) -> dict:
        context = get_current_context()
        if context["params"]["load_on_server"]:
            published = {**published, "probe_dim": _load_and_probe(published["name"])}
        context["outlet_events"][EMBEDDING_MODEL].extra = {
            "name": published["name"],
            "version": published["version"],
            "dim": published["dim"],
        }
        return published

    staging = export()
    loaded = load_on_server(publish(staging, parity_gate(staging)))
    return staging, loaded


def _load_and_probe(model_name: str) -> int:
    """Ask the server to load the latest version, wait until ready, embed one sentence."""
    from pipeline_hooks.triton_embedding_hook import TritonEmbeddingHook

    with TritonEmbeddingHook(model_name=model_name).get_conn() as client:
        client.load_model()
        client.check_ready()
        probe = client.embed(["model publish smoke test"], role="query")
    return int(probe.vectors.shape[1])


def model_gate_tasks() -> None:
    """decide -> [publish tasks] -> model_ready, for the chain.

    ``publish_model``: ``always`` exports, gates and publishes (identical weights keep the current
    version); ``if_missing`` only when the repository has no version of ``model_name``; ``never``
    requires one. ``model_ready`` then makes sure the server serves the latest version (loading it
    if needed), so the index stages never embed with a model the server does not have.
    """

    @task.branch(retries=0)
    def decide() -> str | None:
        from airflow.sdk.exceptions import AirflowFailException
        from embedding_pipeline.errors import RepositoryError
        from embedding_pipeline.model.repository import latest_version
        from embedding_pipeline.settings import model_repository_path

        from pipeline_stages.options import check_params

        context = get_current_context()
        params = context["params"]
        check_params(params)  # the chain's first task: bad Params fail the run before any work
        group = context["ti"].task_id.rpartition(".")[0]
        prefix = f"{group}." if group else ""
        try:
            latest_version(model_repository_path(), params["model_name"])
            published = True
        except RepositoryError:
            published = False
        if params["publish_model"] == "always" or (params["publish_model"] == "if_missing" and not published):
            return f"{prefix}export"
        if not published:
            raise AirflowFailException(
                f"publish_model=never, but {model_repository_path()} has no version of "
                f"{params['model_name']!r}: publish it first (embedding_model_publish)"
            )
        return None  # skip the publish tasks; model_ready runs on its trigger rule

    @stage_task(trigger_rule="none_failed", retries=3, retry_delay=timedelta(seconds=15))
    def model_ready() -> dict:
        from embedding_pipeline.runs.plan import model_info

        params = get_current_context()["params"]
        model = model_info(None, params["model_name"])
        _load_and_probe(params["model_name"])
        return model

    first = decide()
    export, loaded = model_publish_tasks()
    ready = model_ready()
    first >> export
    loaded >> ready
