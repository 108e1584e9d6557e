"""Our embedding client against a real NVIDIA Triton Inference Server (2.51; ``tests/real_triton.py``).

Triton here has the python backend only, so the published models are served through a
python-backend model that runs ONNX Runtime on the published ``model.onnx``, with the published I/O
contract, ``max_batch_size`` and dynamic batching, in EXPLICIT model-control mode with the compose
file's flags. What is Triton's own is real: its gRPC and HTTP front ends, config parser, repository
manager, version policy, readiness and error messages. The model repository is a copy for this
module: a test publishes a new version into it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from embedding_pipeline.errors import ContractMismatchError, ModelNotReadyError
from embedding_pipeline.model.publish import ExportRequest, export_model, gate_model, publish_model
from embedding_pipeline.model.triton_config import parse_config
from embedding_pipeline.serving.client import EmbeddingClient
from real_triton import RealTriton
from store_data import assert_keyword_run_balanced
from tiny_models import build_tiny_model

SERVED = ["minilm", "tiny_bert"]
TEXTS = ["北海道 ラーメン 人気店", "wireless earbuds noise cancelling", "x", "国産 有機 緑茶 " * 40] * 5
PROTOCOLS = ["grpc", "http"]


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory, repository: Path) -> Path:
    """The session repository's served models, copied: publishes here do not reach other tests."""
    root = tmp_path_factory.mktemp("triton-repo") / "model_repository"
    for name in [*SERVED, "tiny_xlm_roberta"]:
        shutil.copytree(repository / name, root / name, symlinks=True)
    return root


@pytest.fixture(scope="module")
def triton(tmp_path_factory, repo_copy: Path) -> Iterator[RealTriton]:
    with RealTriton(repo_copy, tmp_path_factory.mktemp("triton"), models=list(SERVED)) as running:
        yield running


def _settings(triton: RealTriton, repository: Path, protocol: str, model: str, **overrides):
    from conftest import settings_for

    return settings_for(triton, repository, protocol=protocol, model_name=model, **overrides)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_health_metadata_and_config_match_the_published_contract(triton, repo_copy, protocol):
    """live/ready, and the model's metadata and config as Triton parsed them equal our config.pbtxt."""
    for model in SERVED:
        with EmbeddingClient(_settings(triton, repo_copy, protocol, model)) as client:
            client.check_ready()  # live, model ready, metadata: INT64 inputs, FP32[-1, dim] output
            raw = client._client()
            if protocol == "grpc":
                served = raw.get_model_config(model, as_json=True)["config"]
            else:
                served = raw.get_model_config(model)
            assert raw.is_server_ready() and raw.is_model_ready(model)
        published = parse_config((repo_copy / model / "config.pbtxt").read_text())
        # (Another test may have published MiniLM's config again with the default batch size.)
        assert int(served["max_batch_size"]) == published.max_batch_size
        assert [(t["name"], t["data_type"]) for t in served["input"]] == [
            (t.name, "TYPE_INT64") for t in published.input
        ]
        assert served["output"][0]["name"] == "sentence_embedding"
        assert [int(d) for d in served["output"][0]["dims"]] == list(published.output[0].dims)
        assert [int(s) for s in served["dynamic_batching"]["preferred_batch_size"]] == list(
            published.dynamic_batching.preferred_batch_size
        )


@pytest.mark.slow
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_embeddings_equal_the_local_servers(triton, server, repo_copy, repository, protocol):
    """The same texts through Triton and through the local KServe server: max abs diff <= 1e-5
    (both run ONNX Runtime on the same model.onnx; batches above max_batch_size are split)."""
    for model in SERVED:
        with (
            EmbeddingClient(_settings(triton, repo_copy, protocol, model)) as real,
            EmbeddingClient(_settings(server, repository, "grpc", model)) as local,
        ):
            texts = TEXTS * 8  # 160: more than one request at max_batch_size 32 or 128
            got, want = real.embed(texts), local.embed(texts)
        assert got.requests >= 2 and want.requests >= 2
        assert np.abs(got.vectors - want.vectors).max() <= 1e-5
        assert np.allclose(np.linalg.norm(got.vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_batch_over_max_batch_size_is_refused_with_our_error(triton, repo_copy, protocol):
    with EmbeddingClient(_settings(triton, repo_copy, protocol, "tiny_bert")) as client:
        ids = np.ones((33, 8), dtype=np.int64)
        with pytest.raises(ContractMismatchError, match=r"refused by the server.*batch"):
            client.infer_arrays(ids, ids)


@pytest.mark.slow
def test_unknown_and_unloaded_models_are_typed_errors(triton, repo_copy):
    """A model Triton's repository does not hold, and one it holds but has unloaded."""
    # Published in our repository, absent from what Triton serves.
    with EmbeddingClient(_settings(triton, repo_copy, "grpc", "tiny_xlm_roberta")) as unknown:
        with pytest.raises(ModelNotReadyError, match="not ready"):
            unknown.check_ready()
        with pytest.raises(ModelNotReadyError):
            unknown.infer_arrays(np.ones((1, 4), np.int64), np.ones((1, 4), np.int64))
    http = EmbeddingClient(_settings(triton, repo_copy, "http", "tiny_bert", ready_timeout_s=5))
    raw = http._client()
    raw.unload_model("tiny_bert")
    try:
        with pytest.raises(ModelNotReadyError, match="not ready"):
            http.check_ready()
        with pytest.raises(ModelNotReadyError):
            http.infer_arrays(np.ones((1, 4), np.int64), np.ones((1, 4), np.int64))
    finally:
        http.load_model("tiny_bert")  # the repository API over HTTP, then wait until ready
    http.check_ready()
    http.close()


@pytest.mark.slow
def test_a_new_version_is_loaded_and_old_clients_are_told(triton, repo_copy, tmp_path):
    """Publish v2 of tiny_bert (a retrained tiny BERT: same vocabulary, other weights), load it
    through the repository API: Triton serves v2 only (version policy latest 1), a new client
    embeds with it, and a client still tokenizing for v1 gets our contract error instead of
    vectors from the wrong model."""
    old = EmbeddingClient(_settings(triton, repo_copy, "grpc", "tiny_bert"))
    before = old.embed(TEXTS).vectors
    retrained = build_tiny_model("bert", tmp_path / "retrained")
    staging = export_model(ExportRequest(str(retrained), "fp32", "generic"), tmp_path / "staging")
    gate_model(staging)
    published = publish_model(staging, repo_copy, "tiny_bert", max_batch_size=32)
    assert published.version == 2
    triton.sync()
    with EmbeddingClient(_settings(triton, repo_copy, "http", "tiny_bert")) as new:
        new.load_model()
        after = new.embed(TEXTS).vectors
        index = new._client().get_model_repository_index()
    assert {(m["name"], m.get("version"), m.get("state")) for m in index if m["name"] == "tiny_bert"} >= {
        ("tiny_bert", "2", "READY")
    }
    assert after.shape == before.shape and not np.allclose(after, before, atol=1e-3)
    with old, pytest.raises(ContractMismatchError, match="v2 but this client tokenizes for v1"):
        old.embed(["another text"])


@pytest.mark.slow
def test_tritons_parser_accepts_our_generated_config(triton, repo_copy, tmp_path):
    """Our config.pbtxt as published (backend onnxruntime) beside the served models: Triton's parser
    takes it and the load fails only because this Triton has no onnxruntime backend. A copy with
    one wrong value fails in the parser, which Triton reports differently (and logs the proto)."""
    from embedding_pipeline.settings import ServerSettings

    original = (repo_copy / "tiny_bert" / "config.pbtxt").read_text()
    for name, text in (
        ("as_published", original),
        ("broken", original.replace("max_batch_size: 32", "max_batch_size: 'x'")),
    ):
        folder = triton.view / name
        (folder / "1").mkdir(parents=True)
        (folder / "config.pbtxt").write_text(text.replace('name: "tiny_bert"', f'name: "{name}"'))
        (folder / "1" / "model.onnx").symlink_to(repo_copy / "tiny_bert" / "1" / "model.onnx")
    settings = ServerSettings(host="127.0.0.1", http_port=triton.http_port, grpc_port=triton.grpc_port)
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(settings.http_url)
    messages = {}
    for name in ("as_published", "broken"):
        with pytest.raises(Exception) as caught:
            client.load_model(name)
        messages[name] = str(caught.value)
    client.close()
    assert "version 1 is at UNAVAILABLE state" in messages["as_published"], messages
    log = triton.log_path.read_text()
    assert "unable to find backend library for backend 'onnxruntime'" in log
    assert "failed to poll from model repository" in messages["broken"], messages
    assert "failed to read text proto from" in log and "broken/config.pbtxt" in log


@pytest.mark.slow
def test_a_keyword_index_run_against_the_real_triton(
    triton, repo_copy, airflow_db, es_url, tmp_path, monkeypatch
):
    """One ``keyword_index`` run through ``dag.test()`` with Triton as the inference server: the
    identity balances and each store holds every kept keyword once."""
    from embedding_pipeline.local.airflow_runner import run_dag
    from embedding_pipeline.runs.plan import run_dir_for
    from embedding_pipeline.runs.report import read_report
    from embedding_pipeline.sample.generate import generate

    monkeypatch.setenv("EMBEDDING_MODEL_REPOSITORY", str(repo_copy))
    monkeypatch.setenv("EMBEDDING_SERVER_GRPC_PORT", str(triton.grpc_port))
    monkeypatch.setenv("EMBEDDING_SERVER_HTTP_PORT", str(triton.http_port))
    monkeypatch.setenv("ES_URL", es_url)
    monkeypatch.setenv("QDRANT_PATH", str(tmp_path / "qdrant"))
    generate(tmp_path / "data", keywords=300, products=0, dates=["2024-05-01"], seed=3, tables=("keywords",))
    conf = {
        "dt": "2024-05-01",
        "input_root": str(tmp_path / "data"),
        "model_name": "minilm",
        "chunk_rows": 100,
    }
    run = run_dag("keyword_index", {**conf, "qdrant_alias": "triton_kw", "es_alias": "triton_kw"})
    assert str(run.state) == "success"
    report = read_report(run_dir_for(run.dag_id, run.run_id, "keyword_index"))
    assert_keyword_run_balanced(report)
    assert report["rows_read"] == 300 and report["sinks"]["qdrant"]["indexed"] > 250
