"""Hook for the inference server (Triton in production, the local KServe server by default).

Not named ``triton.py``: Airflow imports every plugins-folder module under its file name, and a
top-level ``triton`` module shadows OpenAI Triton, which torch probes for (``triton.language``).

Connection ``triton_default`` (type ``triton``, or any generic type)::

    host      triton                    (default 127.0.0.1)
    port      8001                      the port of ``extra.protocol`` (default gRPC 8001)
    extra     {"protocol": "grpc", "http_port": 8000, "model_name": "minilm",
               "model_repository": "/models", "timeout_s": 60, "max_in_flight": 4,
               "batch_size": 64, "max_retries": 100, "retry_deadline_s": 120,
               "ssl": false, "ca_certs": "/certs/ca.crt"}

``ssl`` (or schema ``https``) turns TLS on; ``ca_certs`` is the PEM the server certificate is
checked against over gRPC (empty: the system's roots).

With no such Connection the hook falls back to ``ServerSettings.from_env()`` (the embedded default:
the local server on 127.0.0.1:8001/8000), so a fresh install runs without any setup.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import BaseHook
from embedding_pipeline.errors import ConfigError
from embedding_pipeline.settings import ServerSettings

log = logging.getLogger(__name__)

_EXTRA_FIELDS = (
    "model_name",
    "model_repository",
    "timeout_s",
    "max_in_flight",
    "batch_size",
    "max_retries",
    "retry_deadline_s",
    "backoff_initial_s",
    "backoff_max_s",
    "ready_timeout_s",
    "ssl",
    "ca_certs",
)


def _connection_missing(exc: Exception) -> bool:
    return type(exc).__name__ == "AirflowNotFoundException"


class TritonEmbeddingHook(BaseHook):
    """Builds ``ServerSettings`` / an ``EmbeddingClient`` from an Airflow Connection."""

    conn_name_attr = "triton_conn_id"
    default_conn_name = "triton_default"
    conn_type = "triton"
    hook_name = "Triton Inference Server (KServe v2)"

    def __init__(self, triton_conn_id: str = default_conn_name, **overrides: Any) -> None:
        super().__init__()
        self.triton_conn_id = triton_conn_id
        self.overrides = overrides

    def get_settings(self) -> ServerSettings:
        base = ServerSettings.from_env()
        try:
            conn = self.get_connection(self.triton_conn_id)
        except Exception as exc:
            if not _connection_missing(exc):
                raise
            log.info("connection %r not set; using local defaults %s", self.triton_conn_id, base.url)
            return base.with_overrides(**self.overrides)
        extra = conn.extra_dejson
        protocol = extra.get("protocol", "grpc")
        if protocol not in ("grpc", "http"):
            raise ConfigError(f"connection {self.triton_conn_id!r}: extra.protocol must be grpc or http")
        fields: dict[str, Any] = {key: extra.get(key) for key in _EXTRA_FIELDS}
        fields.update(
            host=conn.host,
            protocol=protocol,
            grpc_port=conn.port if protocol == "grpc" else extra.get("grpc_port"),
            http_port=conn.port if protocol == "http" else extra.get("http_port"),
        )
        if conn.schema == "https":
            fields["ssl"] = True
        settings = base.with_overrides(**fields).with_overrides(**self.overrides)
        log.info(
            "connection %r -> %s://%s model %s",
            self.triton_conn_id,
            settings.protocol,
            settings.url,
            settings.model_name,
        )
        return settings

    def get_conn(self) -> Any:
        """An ``EmbeddingClient`` (imported here: tritonclient and numpy stay out of DAG parsing)."""
        from embedding_pipeline.serving.client import EmbeddingClient

        return EmbeddingClient(self.get_settings())
