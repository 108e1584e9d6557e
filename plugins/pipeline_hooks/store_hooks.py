"""Hooks for the two stores: Airflow Connections -> ``QdrantSettings`` / ``EsSettings``.

Connection ``qdrant_default`` (the Qdrant provider's layout)::

    host qdrant, port 6333 (REST), password = API key,
    extra {"grpc_port": 6334, "prefer_grpc": true, "https": false}

or, on one machine, the embedded engine: extra {"path": "/data/qdrant"} (no host), plus
"local_engine": "python" for qdrant-client's local mode (default ``edge``, Qdrant's own engine).

Connection ``elasticsearch_default``::

    schema https, host elasticsearch, port 9200, login elastic, password ...,
    extra {"ca_certs": "/certs/ca/ca.crt", "ssl_assert_fingerprint": "...", "api_key": "...",
           "verify_certs": true}

Without a Connection each hook falls back to the environment (``QDRANT_*`` / ``ES_*``), and from
there to the embedded defaults: Qdrant's engine in-process on disk, ES on 127.0.0.1:9200 (the demo starts
the noida-db emulator and sets ``ES_URL``). Secrets are never logged: both settings classes redact
them in ``repr``.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from airflow.sdk import BaseHook
from embedding_pipeline.errors import ConfigError
from embedding_pipeline.settings import truthy
from embedding_pipeline.stores.elasticsearch.settings import EsSettings
from embedding_pipeline.stores.qdrant.settings import QdrantSettings

log = logging.getLogger(__name__)


def optional_connection(conn_id: str):
    """The Connection ``conn_id``, or None when it is not defined."""
    try:
        return BaseHook.get_connection(conn_id)
    except Exception as exc:
        if type(exc).__name__ != "AirflowNotFoundException":
            raise
        return None


class QdrantStoreHook(BaseHook):
    conn_name_attr = "qdrant_conn_id"
    default_conn_name = "qdrant_default"
    conn_type = "qdrant"
    hook_name = "Qdrant (embedding pipeline)"

    def __init__(self, qdrant_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.qdrant_conn_id = qdrant_conn_id

    def get_settings(self) -> QdrantSettings:
        conn = optional_connection(self.qdrant_conn_id)
        if conn is None:
            settings = QdrantSettings.from_env()
            log.info("connection %r not set; Qdrant from environment: %r", self.qdrant_conn_id, settings)
            return settings
        extra = conn.extra_dejson
        api_key = conn.password or extra.get("api_key") or None
        if extra.get("path"):  # local mode on one machine; an API key is kept but unused
            engine = extra.get("local_engine") or QdrantSettings.from_env().local_engine
            try:
                settings = QdrantSettings(path=extra["path"], api_key=api_key, local_engine=engine)
            except ConfigError as exc:
                raise ConfigError(f"connection {self.qdrant_conn_id!r}: {exc}") from exc
            log.info("connection %r -> %r", self.qdrant_conn_id, settings)
            return settings
        if not conn.host:
            raise ConfigError(
                f"connection {self.qdrant_conn_id!r} has no host (or extra.path for local mode)"
            )
        try:
            settings = QdrantSettings(
                host=conn.host,
                port=int(conn.port or 6333),
                grpc_port=int(extra.get("grpc_port", 6334)),
                prefer_grpc=truthy(extra.get("prefer_grpc", False)),
                api_key=api_key,
                https=truthy(extra["https"]) if "https" in extra else None,
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"connection {self.qdrant_conn_id!r}: {exc}") from exc
        log.info("connection %r -> %r", self.qdrant_conn_id, settings)
        return settings


class ElasticsearchStoreHook(BaseHook):
    conn_name_attr = "elasticsearch_conn_id"
    default_conn_name = "elasticsearch_default"
    conn_type = "elasticsearch"
    hook_name = "Elasticsearch (embedding pipeline)"

    def __init__(self, elasticsearch_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.elasticsearch_conn_id = elasticsearch_conn_id

    def get_settings(self) -> EsSettings:
        base = EsSettings.from_env()
        conn = optional_connection(self.elasticsearch_conn_id)
        if conn is None:
            log.info(
                "connection %r not set; Elasticsearch from environment: %r", self.elasticsearch_conn_id, base
            )
            return base
        if not conn.host:
            raise ConfigError(f"connection {self.elasticsearch_conn_id!r} has no host")
        extra = conn.extra_dejson
        scheme = (
            conn.schema
            if conn.schema in ("http", "https")
            else ("https" if extra.get("ca_certs") else "http")
        )
        settings = replace(
            base,
            hosts=(f"{scheme}://{conn.host}:{conn.port or 9200}",),
            username=conn.login or None,
            password=conn.password or None,
            api_key=extra.get("api_key") or None,
            ca_certs=extra.get("ca_certs") or None,
            ssl_assert_fingerprint=extra.get("ssl_assert_fingerprint") or None,
            verify_certs=truthy(extra.get("verify_certs", True)),
        )
        log.info("connection %r -> %r", self.elasticsearch_conn_id, settings)
        return settings
