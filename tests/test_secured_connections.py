"""Secured connections, for real: nginx terminates TLS (a self-signed certificate) in front of the ES
emulator and the inference server's gRPC and HTTP ports, and checks credentials. Every setting comes from an
Airflow Connection (``AIRFLOW_CONN_*``: the environment secrets backend), as in a deployment. Then a
whole DAG run with secrets in every Connection, and a search for them in everything it left."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from embedding_pipeline.errors import PipelineError
from nginx_tls import NginxTls

USER, PASSWORD, API_KEY = "elastic", "pw-7Hq2-nginx-checked", "ak-Xe41-nginx-checked"
QDRANT_KEY = "qk-93Lm-never-printed"


@pytest.fixture
def tls(es_url, server, tmp_path):
    upstream = ("127.0.0.1", server.grpc_port, server.http_port)
    with NginxTls(tmp_path / "nginx", es_url, upstream, (USER, PASSWORD, API_KEY)) as t:
        yield t


def es_connection(monkeypatch, tls: NginxTls, login: bool = True, **extra: Any) -> None:
    conn = {"conn_type": "elasticsearch", "host": "127.0.0.1", "port": tls.es_port, "schema": "https"}
    if login:
        conn |= {"login": USER, "password": PASSWORD}
    monkeypatch.setenv("AIRFLOW_CONN_ELASTICSEARCH_DEFAULT", json.dumps({**conn, "extra": extra}))


def es_settings() -> Any:
    from pipeline_hooks.store_hooks import ElasticsearchStoreHook

    return ElasticsearchStoreHook().get_settings()


def reach(settings: Any) -> str:
    """What a stage does first with ES: open a client and resolve an alias (none exists here)."""
    from embedding_pipeline.stores.elasticsearch.client import open_es
    from embedding_pipeline.stores.elasticsearch.indices import write_index

    with open_es(settings) as es:
        assert write_index(es, "no_such_alias") is None
        return es.info()["version"]["number"]


def test_es_over_tls_checks_the_certificate_and_the_credentials(tls, monkeypatch):
    es_connection(monkeypatch, tls, ca_certs=str(tls.cert))
    assert reach(es_settings())  # ca_certs + basic auth

    es_connection(monkeypatch, tls, ssl_assert_fingerprint=tls.fingerprint)
    assert reach(es_settings())  # the pinned fingerprint instead of a CA

    es_connection(monkeypatch, tls, ssl_assert_fingerprint="00" * 32)
    with pytest.raises(PipelineError, match=r"(?i)fingerprint") as wrong:
        reach(es_settings())
    assert PASSWORD not in str(wrong.value)

    es_connection(monkeypatch, tls, login=False, ca_certs=str(tls.cert), api_key=API_KEY)
    assert reach(es_settings())  # the API key reaches nginx, which lets it through

    es_connection(monkeypatch, tls, login=False, ca_certs=str(tls.cert), api_key="ak-wrong")
    with pytest.raises(PipelineError, match="401") as refused:
        reach(es_settings())
    assert "wrong or missing credentials" in str(refused.value) and "ak-wrong" not in str(refused.value)

    es_connection(monkeypatch, tls)  # no CA given: the self-signed certificate is refused
    with pytest.raises(PipelineError, match=r"(?i)certificate"):
        reach(es_settings())
    access = (tls.root / "access.log").read_text()
    assert " 200 " in access and " 401 " in access


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tls_to_the_inference_server_from_the_triton_connection(
    tls, server, repository, monkeypatch, protocol
):
    """gRPC (nginx ``grpc_pass``) and HTTP (``proxy_pass``) over TLS, from ``triton_default``: the
    CA file in ``extra.ca_certs`` verifies the self-signed certificate and the embeddings equal the
    direct server's; without it the system's roots refuse the certificate."""
    from embedding_pipeline.errors import ServerUnavailableError
    from embedding_pipeline.serving.client import EmbeddingClient
    from embedding_pipeline.settings import ServerSettings
    from pipeline_hooks.triton_embedding_hook import TritonEmbeddingHook

    port = tls.grpc_port if protocol == "grpc" else tls.http_port

    def connect(**extra: Any) -> None:
        conn = {"conn_type": "triton", "host": "127.0.0.1", "port": port, "schema": "https"}
        extra = {"model_name": "tiny_bert", "model_repository": str(repository), **extra}
        extra["protocol"] = protocol
        monkeypatch.setenv("AIRFLOW_CONN_TRITON_DEFAULT", json.dumps({**conn, "extra": extra}))

    texts = ["東京 ラーメン", "secured keyword"]
    connect(ca_certs=str(tls.cert))
    settings = TritonEmbeddingHook().get_settings()
    assert settings.ssl and f"127.0.0.1:{port}" == (
        settings.grpc_url if protocol == "grpc" else settings.http_url
    )
    with TritonEmbeddingHook().get_conn() as client:
        through_tls = client.embed(texts).vectors
    direct = ServerSettings(grpc_port=server.grpc_port, model_repository=repository, model_name="tiny_bert")
    with EmbeddingClient(direct) as client:
        np.testing.assert_allclose(through_tls, client.embed(texts).vectors, atol=1e-6)

    connect(retry_deadline_s=2)  # TLS on, the system's roots: the self-signed certificate is refused
    refused = pytest.raises(ServerUnavailableError, match=r"(?i)certificate|ssl|handshake")
    with refused, TritonEmbeddingHook().get_conn() as client:
        client.embed(texts)


def test_secrets_in_the_connections_never_leak_from_a_dag_run(
    airflow_db, tls, repository, tmp_path, monkeypatch, capfd, caplog
):
    """keyword_index through dag.test() with every store and the server reached through
    Connections holding secrets (ES password and API key, Qdrant API key): none of them appears in
    the output and task logs, XComs, rendered template fields, the report or the dead letters."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from embedding_pipeline.local.airflow_runner import run_dag
    from embedding_pipeline.runs.plan import run_dir_for
    from embedding_pipeline.sample.generate import generate

    es_connection(monkeypatch, tls, ca_certs=str(tls.cert), api_key=API_KEY)
    qdrant = {"conn_type": "qdrant", "password": QDRANT_KEY, "extra": {"path": str(tmp_path / "qdrant")}}
    monkeypatch.setenv("AIRFLOW_CONN_QDRANT_DEFAULT", json.dumps(qdrant))
    triton = {"conn_type": "triton", "host": "127.0.0.1", "port": tls.grpc_port, "schema": "https"}
    triton["extra"] = {"ca_certs": str(tls.cert), "model_repository": str(repository)}
    monkeypatch.setenv("AIRFLOW_CONN_TRITON_DEFAULT", json.dumps(triton))
    monkeypatch.setenv("EMBEDDING_MODEL_REPOSITORY", str(repository))
    data = tmp_path / "data"
    generate(data, keywords=300, dates=["2024-01-01"], seed=5, bad_rate=0.05, tables=("keywords",))
    conf = {"dt": "2024-01-01", "input_root": str(data), "model_name": "tiny_bert", "chunk_rows": 150}
    run = run_dag("keyword_index", {**conf, "qdrant_alias": "secret_kw", "es_alias": "secret_kw"})
    assert str(run.state) == "success"

    places: dict[str, str] = {"output": "".join(capfd.readouterr()) + caplog.text}  # task logs
    with create_session() as session:
        xcoms = session.query(XComModel).filter_by(dag_id="keyword_index", run_id=run.run_id).all()
        places["xcom"] = json.dumps([x.value for x in xcoms], default=str)
        fields = session.query(RenderedTaskInstanceFields).filter_by(run_id=run.run_id).all()
        places["rendered"] = json.dumps([f.rendered_fields for f in fields], default=str)
    run_dir = Path(str(run_dir_for("keyword_index", run.run_id)))
    for path in [p for p in run_dir.rglob("*") if p.suffix in (".json", ".md", ".jsonl")]:
        places[str(path)] = path.read_text()
    logs = Path(tmp_path).parents[0]  # dag.test() logs to the output; any log files too
    for path in logs.rglob("*.log"):
        places[str(path)] = path.read_text(errors="replace")
    assert len(xcoms) > 5 and any("dead_letters" in p for p in places), sorted(places)[:5]
    assert "password='<set>', api_key='<set>'" in places["output"]  # logged, redacted
    leaks = {
        secret: [where for where, text in places.items() if secret in text]
        for secret in (PASSWORD, API_KEY, QDRANT_KEY)
    }
    assert leaks == {PASSWORD: [], API_KEY: [], QDRANT_KEY: []}
