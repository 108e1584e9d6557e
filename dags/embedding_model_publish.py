"""Export a Hugging Face encoder to ONNX, gate it against PyTorch, publish it and load it.

export -> parity_gate -> publish -> load_on_server. Each step leaves its result on disk; XCom
carries paths and version numbers only. The last task emits the ``embedding_model`` Asset with the
published name and version. The same tasks run inside ``embedding_chain``.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag
from pipeline_stages.model_publish_tasks import model_publish_tasks
from pipeline_stages.params import model_params, publish_params


@dag(
    dag_id="embedding_model_publish",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["embedding", "model"],
    doc_md=__doc__,
    default_args={"retries": 0},
    params={**publish_params(), **model_params()},
)
def embedding_model_publish():
    model_publish_tasks()


embedding_model_publish()
