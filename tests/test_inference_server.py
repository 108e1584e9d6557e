"""The local KServe v2 server, driven through the real embedding client and raw tritonclient."""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest
from conftest import settings_for
from embedding_pipeline.errors import (
    ContractMismatchError,
    InvalidInputError,
    ModelNotReadyError,
    ServerUnavailableError,
)
from embedding_pipeline.model.parity import run_onnx
from embedding_pipeline.model.publish import ExportRequest, export_model, gate_model, publish_model
from embedding_pipeline.serving.client import EmbeddingClient
from embedding_pipeline.serving.process import LocalServer, free_port
from embedding_pipeline.settings import ServerSettings

MODELS = ["tiny_bert", "tiny_xlm_roberta", "tiny_modernbert", "minilm"]
TEXTS = [
    "東京 ラーメン 人気店",
    "cheap flights from tokyo to seoul " * 3,
    "a",
    "北海道 旅行 冬 おすすめ 温泉",
    "Organic cotton t-shirt, men's, size L",
    "오늘 날씨가 정말 좋네요.",
] * 9


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_health_and_metadata_follow_the_published_contract(server, repository, protocol):
    if protocol == "grpc":
        import tritonclient.grpc as module

        client = module.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        metadata = lambda name: client.get_model_metadata(name, as_json=True)  # noqa: E731
    else:
        import tritonclient.http as module

        client = module.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        metadata = client.get_model_metadata
    assert client.is_server_live() and client.is_server_ready()
    for name in MODELS:
        assert client.is_model_ready(name)
        meta = metadata(name)
        assert [(t["name"], t["datatype"]) for t in meta["inputs"]] == [
            ("input_ids", "INT64"),
            ("attention_mask", "INT64"),
        ]
        dim = 384 if name == "minilm" else 32
        outputs = [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta["outputs"]]
        assert outputs == [("sentence_embedding", "FP32", [-1, dim])]  # gRPC JSON carries int64 as strings
    if protocol == "http":
        assert not client.is_model_ready("no_such_model")
    else:  # KServe answers NOT_FOUND over gRPC where Triton answers False; the client maps both
        from tritonclient.utils import InferenceServerException

        with pytest.raises(InferenceServerException, match="does not exist"):
            client.is_model_ready("no_such_model")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("name", MODELS)
def test_server_embeddings_equal_in_process_onnx_in_input_order(server, repository, protocol, name):
    with EmbeddingClient(
        settings_for(server, repository, model_name=name, protocol=protocol, batch_size=8)
    ) as client:
        result = client.embed(TEXTS, role="passage")
        assert result.vectors.shape == (len(TEXTS), client.dim)
        assert result.requests == 7  # 54 texts in batches of 8, length-sorted
        batch = client.encoder.encode(TEXTS, "passage")
        expected = run_onnx(client.published.path / "model.onnx", batch.input_ids, batch.attention_mask)
    np.testing.assert_allclose(result.vectors, expected, atol=2e-5)


def test_roles_apply_the_family_prefix(server, repository):
    with EmbeddingClient(settings_for(server, repository, model_name="tiny_modernbert")) as client:
        query = client.embed(["福岡 もつ鍋"], role="query").vectors[0]
        passage = client.embed(["福岡 もつ鍋"], role="passage").vectors[0]
        explicit = client.embed(["検索クエリ: 福岡 もつ鍋"], role=None).vectors[0]
        with pytest.raises(InvalidInputError, match="role must be one of"):
            client.embed(["x"], role="document")  # type: ignore[arg-type]
    assert not np.allclose(query, passage)
    np.testing.assert_allclose(query, explicit, atol=1e-6)


def test_empty_batch_bad_texts_and_truncation(server, repository):
    with EmbeddingClient(settings_for(server, repository, model_name="minilm")) as client:
        empty = client.embed([])
        assert empty.vectors.shape == (0, 384) and empty.requests == 0
        with pytest.raises(InvalidInputError, match=r"#1: text is null, #2: text is empty or whitespace"):
            client.embed(["ok", None, "  ", 3.5])
        result = client.embed(["word " * 1000, "short"])
        assert result.truncated == 1 and result.vectors.shape == (2, 384)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_batch_over_max_batch_size_is_refused_with_a_clear_error(server, repository, protocol):
    with EmbeddingClient(
        settings_for(server, repository, model_name="tiny_bert", protocol=protocol)
    ) as client:
        ids = np.ones((33, 4), dtype=np.int64)
        with pytest.raises(ContractMismatchError, match="batch size 33 exceeds max_batch_size 32"):
            client.infer_arrays(ids, np.ones_like(ids))
        assert client.infer_arrays(ids[:32], np.ones_like(ids[:32])).shape == (32, 32)


def test_wrong_dtype_and_missing_input_are_refused(server):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    ids = httpclient.InferInput("input_ids", [1, 3], "INT32")
    ids.set_data_from_numpy(np.ones((1, 3), dtype=np.int32))
    mask = httpclient.InferInput("attention_mask", [1, 3], "INT64")
    mask.set_data_from_numpy(np.ones((1, 3), dtype=np.int64))
    with pytest.raises(InferenceServerException, match="'input_ids' must be INT64, got INT32"):
        client.infer("tiny_bert", [ids, mask])
    with pytest.raises(InferenceServerException, match="expects inputs"):
        client.infer("tiny_bert", [mask])


def test_model_missing_on_server_is_a_clear_error(server, repository, tmp_path):
    local = tmp_path / "repo"
    shutil.copytree(repository / "tiny_bert", local / "not_served")
    (local / "not_served" / "config.pbtxt").write_text(
        (local / "not_served" / "config.pbtxt").read_text().replace('name: "tiny_bert"', 'name: "not_served"')
    )
    with (
        EmbeddingClient(settings_for(server, local, model_name="not_served")) as client,
        pytest.raises(ModelNotReadyError, match="'not_served' is not ready"),
    ):
        client.embed(["hello"])


def test_server_down_fails_after_bounded_retries(repository):
    settings = ServerSettings(
        grpc_port=free_port(),
        http_port=free_port(),
        model_repository=repository,
        model_name="tiny_bert",
        max_retries=2,
        backoff_initial_s=0.01,
    )
    started = time.monotonic()
    with EmbeddingClient(settings) as client, pytest.raises(ServerUnavailableError, match="after 3 attempts"):
        client.embed(["hello"])
    assert time.monotonic() - started < 30


def test_client_retries_until_a_starting_server_is_up(repository, tmp_path):
    """Transient UNAVAILABLE (server still starting) is retried with backoff, then succeeds."""
    late = LocalServer(repository, threads=1, log_path=tmp_path / "late.log", models=["tiny_bert"])
    starter = threading.Timer(1.5, late.start)
    starter.start()
    try:
        settings = ServerSettings(
            grpc_port=late.grpc_port,
            http_port=late.http_port,
            model_repository=repository,
            model_name="tiny_bert",
            max_retries=12,
            backoff_initial_s=0.5,
            backoff_max_s=4,
        )
        with EmbeddingClient(settings) as client:
            assert client.embed(["hello", "world"]).vectors.shape == (2, 32)
    finally:
        starter.join()
        late.stop()


@pytest.mark.slow
def test_a_server_restart_mid_run_costs_seconds_inside_the_call_with_the_default_budget(repository, tmp_path):
    """The server process is killed between two requests of one ``embed`` call and started again
    8 s later on the same ports. With the default retry settings (a time budget, not a handful of
    attempts) the same call carries on and returns every vector: the task does not fail, so no
    Airflow retry re-embeds the chunk. Before the budget, the client gave up after ~1.5 s."""
    server = LocalServer(repository, threads=1, log_path=tmp_path / "first.log", models=["tiny_bert"]).start()
    again = LocalServer(
        repository,
        threads=1,
        log_path=tmp_path / "again.log",
        models=["tiny_bert"],
        grpc_port=server.grpc_port,
        http_port=server.http_port,
    )
    defaults = ServerSettings()
    settings = ServerSettings(
        grpc_port=server.grpc_port,
        http_port=server.http_port,
        model_repository=repository,
        model_name="tiny_bert",
        batch_size=8,
    )
    assert (settings.max_retries, settings.retry_deadline_s) == (defaults.max_retries, 120.0)
    texts = [f"keyword {i}" for i in range(64)]  # 8 requests of 8
    restarted = threading.Event()
    try:
        with EmbeddingClient(settings) as client:
            expected = client.embed(texts).vectors
            sent = 0
            real_infer = client.infer_arrays

            def infer_then_kill(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
                nonlocal sent
                sent += 1
                if sent == 3:  # the server dies (SIGKILL, by PID) while the call is half done
                    assert server.process is not None
                    server.process.kill()
                    server.process.wait(timeout=30)
                    threading.Timer(8.0, lambda: (again.start(), restarted.set())).start()
                return real_infer(ids, mask)

            client.infer_arrays = infer_then_kill  # type: ignore[method-assign]
            started = time.monotonic()
            vectors = client.embed(texts).vectors
            took = time.monotonic() - started
        assert restarted.is_set() and np.allclose(vectors, expected, atol=1e-5)
        assert 8 <= took < 120, took  # waited for the restart, well inside the budget
    finally:
        restarted.wait(timeout=150)
        again.stop()
        server.stop()


def test_reload_serves_the_new_version_and_sigterm_stops_cleanly(tiny_models, tmp_path):
    repo = tmp_path / "repo"
    staging = export_model(ExportRequest(str(tiny_models["bert"]), "fp32", "generic"), tmp_path / "bert")
    gate_model(staging)
    publish_model(staging, repo, "swap", max_batch_size=16)
    server = LocalServer(repo, threads=1, log_path=tmp_path / "server.log").start()
    try:
        settings = ServerSettings(
            grpc_port=server.grpc_port,
            http_port=server.http_port,
            model_repository=repo,
            model_name="swap",
            max_retries=1,
        )
        old = EmbeddingClient(settings)
        v1 = old.embed(["北海道 旅行"]).vectors
        staging = export_model(
            ExportRequest(str(tiny_models["modernbert"]), "fp32", "generic"), tmp_path / "mb"
        )
        gate_model(staging)
        assert publish_model(staging, repo, "swap", max_batch_size=16).version == 2
        old.load_model()
        with pytest.raises(ContractMismatchError, match="v2 but this client tokenizes for v1"):
            old.embed(["北海道 旅行"])
        old.close()
        with EmbeddingClient(settings) as new:
            assert new.published.version == 2
            v2 = new.embed(["北海道 旅行"]).vectors
        assert not np.allclose(v1, v2)
    finally:
        returncode = server.stop(timeout_s=40)
    assert returncode == 0
    assert not server.is_live()


def test_server_with_a_broken_model_still_serves_the_others(repository, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(repository / "tiny_bert", repo / "tiny_bert")
    (repo / "unpublished").mkdir()
    shutil.copy(repository / "tiny_bert" / "config.pbtxt", repo / "unpublished" / "config.pbtxt")
    with LocalServer(repo, threads=1, log_path=tmp_path / "server.log") as server:
        with EmbeddingClient(settings_for(server, repo, model_name="tiny_bert")) as client:
            assert client.embed(["ok"]).vectors.shape == (1, 32)
        assert "could not load unpublished" in server.log_tail(200)
