"""The Triton hook turns an Airflow Connection (or none) into client settings."""

from __future__ import annotations

import json

import pytest
from embedding_pipeline.errors import ConfigError
from pipeline_hooks.triton_embedding_hook import TritonEmbeddingHook


def _set_conn(monkeypatch, conn_id: str, **fields) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))


def test_connection_fields_become_settings(monkeypatch, tmp_path):
    _set_conn(
        monkeypatch,
        "triton_prod",
        conn_type="triton",
        host="triton.internal",
        port=9001,
        extra={
            "protocol": "grpc",
            "http_port": 9000,
            "model_name": "ruri",
            "timeout_s": 5,
            "max_in_flight": 8,
            "model_repository": str(tmp_path),
            "ssl": "true",
        },
    )
    settings = TritonEmbeddingHook("triton_prod").get_settings()
    assert (settings.host, settings.grpc_port, settings.http_port, settings.protocol) == (
        "triton.internal",
        9001,
        9000,
        "grpc",
    )
    assert (settings.model_name, settings.timeout_s, settings.max_in_flight, settings.ssl) == (
        "ruri",
        5.0,
        8,
        True,
    )
    assert settings.model_repository == tmp_path


def test_http_connection_uses_its_port_for_http(monkeypatch):
    _set_conn(
        monkeypatch,
        "triton_http",
        conn_type="triton",
        host="h",
        port=18000,
        extra={"protocol": "http", "grpc_port": 18001},
    )
    settings = TritonEmbeddingHook("triton_http", model_name="other").get_settings()
    assert (settings.protocol, settings.http_port, settings.grpc_port, settings.url) == (
        "http",
        18000,
        18001,
        "h:18000",
    )
    assert settings.model_name == "other"  # task-level override wins over the Connection


def test_missing_connection_falls_back_to_local_defaults_and_env(monkeypatch):
    monkeypatch.setenv("EMBEDDING_SERVER_GRPC_PORT", "28001")
    settings = TritonEmbeddingHook("not_configured").get_settings()
    assert (settings.host, settings.grpc_port, settings.http_port) == ("127.0.0.1", 28001, 8000)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"protocol": "websocket"}, "extra.protocol must be grpc or http"),
        ({"timeout_s": "soon"}, "timeout_s='soon' is not a valid float"),
        ({"max_in_flight": 0}, "max_in_flight must be >= 1"),
    ],
)
def test_bad_connection_settings_fail_clearly(monkeypatch, extra, message):
    _set_conn(monkeypatch, "triton_bad", conn_type="triton", host="h", port=1, extra=extra)
    with pytest.raises(ConfigError, match=message):
        TritonEmbeddingHook("triton_bad").get_settings()


def test_store_connections_become_qdrant_and_es_settings(monkeypatch):
    from pipeline_hooks.store_hooks import ElasticsearchStoreHook, QdrantStoreHook

    _set_conn(
        monkeypatch,
        "qdrant_default",
        conn_type="qdrant",
        host="qdrant",
        port=6333,
        password="s3cret-key",
        extra={"grpc_port": 6334, "prefer_grpc": True},
    )
    _set_conn(
        monkeypatch,
        "elasticsearch_default",
        conn_type="elasticsearch",
        host="es",
        port=9200,
        schema="https",
        login="elastic",
        password="hunter2",
        extra={"ca_certs": "/certs/ca/ca.crt"},
    )
    qdrant = QdrantStoreHook().get_settings()
    assert (qdrant.host, qdrant.port, qdrant.grpc_port, qdrant.prefer_grpc, qdrant.is_local) == (
        "qdrant",
        6333,
        6334,
        True,
        False,
    )
    assert qdrant.api_key == "s3cret-key" and "s3cret-key" not in repr(qdrant)
    es = ElasticsearchStoreHook().get_settings()
    assert es.hosts == ("https://es:9200",) and es.username == "elastic" and es.ca_certs == "/certs/ca/ca.crt"
    assert es.password == "hunter2" and "hunter2" not in repr(es)


def test_store_hooks_fall_back_to_the_environment(monkeypatch, tmp_path):
    from pipeline_hooks.store_hooks import ElasticsearchStoreHook, QdrantStoreHook

    monkeypatch.setenv("QDRANT_PATH", str(tmp_path / "q"))
    monkeypatch.setenv("ES_URL", "http://127.0.0.1:19200")
    assert QdrantStoreHook("absent").get_settings().is_local
    assert ElasticsearchStoreHook("absent").get_settings().hosts == ("http://127.0.0.1:19200",)
    _set_conn(monkeypatch, "qdrant_nohost", conn_type="qdrant", port=6333)
    with pytest.raises(ConfigError, match="has no host"):
        QdrantStoreHook("qdrant_nohost").get_settings()


def test_a_local_qdrant_connection_picks_its_engine(monkeypatch, tmp_path):
    """``extra.path`` is the embedded store; ``extra.local_engine`` (else ``QDRANT_LOCAL_ENGINE``,
    else Qdrant's own engine) says which engine reads it; a wrong name fails naming the connection."""
    from pipeline_hooks.store_hooks import QdrantStoreHook

    monkeypatch.delenv("QDRANT_LOCAL_ENGINE", raising=False)
    _set_conn(monkeypatch, "q_local", conn_type="qdrant", extra={"path": str(tmp_path / "q")})
    settings = QdrantStoreHook("q_local").get_settings()
    assert (settings.local_path, settings.local_engine) == (str(tmp_path / "q"), "edge")
    monkeypatch.setenv("QDRANT_LOCAL_ENGINE", "python")
    assert QdrantStoreHook("q_local").get_settings().local_engine == "python"
    _set_conn(monkeypatch, "q_old", conn_type="qdrant", extra={"path": "/q", "local_engine": "python"})
    monkeypatch.delenv("QDRANT_LOCAL_ENGINE")
    assert QdrantStoreHook("q_old").get_settings().local_engine == "python"
    _set_conn(monkeypatch, "q_bad", conn_type="qdrant", extra={"path": "/q", "local_engine": "rocksdb"})
    with pytest.raises(ConfigError, match=r"'q_bad'.*local_engine"):
        QdrantStoreHook("q_bad").get_settings()


def test_the_state_connection_becomes_a_database_url_that_hides_its_password(monkeypatch, tmp_path):
    from pipeline_hooks.state_hook import StateStoreHook

    _set_conn(
        monkeypatch,
        "embedding_state",
        conn_type="postgres",
        host="postgres",
        port=5432,
        schema="embedding_state",
        login="airflow",
        password="s3cret/+",
    )
    settings = StateStoreHook().get_settings()
    assert settings.url == "postgresql+psycopg://airflow:s3cret%2F+@postgres:5432/embedding_state"
    assert "s3cret" not in repr(settings) and "s3cret" not in settings.describe()
    assert settings.source == "Connection 'embedding_state'" and settings.run_active is not None

    _set_conn(
        monkeypatch, "embedding_state", conn_type="generic", extra={"url": f"sqlite:///{tmp_path}/s.db"}
    )
    assert StateStoreHook().get_settings().url == f"sqlite:///{tmp_path}/s.db"

    _set_conn(monkeypatch, "embedding_state", conn_type="mysql", host="db")
    with pytest.raises(ConfigError, match=r"embedding_state.*type postgres.*extra.url"):
        StateStoreHook().get_settings()

    monkeypatch.delenv("AIRFLOW_CONN_EMBEDDING_STATE")
    monkeypatch.setenv("EMBEDDING_STATE_DB", f"sqlite:///{tmp_path}/env.db")
    assert StateStoreHook().get_settings().source == "EMBEDDING_STATE_DB"
