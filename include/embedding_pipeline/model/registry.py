"""The one place that knows the supported model families.

A family fixes how a model is pooled, how long its inputs may be and which prefixes mark queries
and passages for asymmetric retrieval. The embedding dimension is *not* here: it is read from the
exported ONNX graph, so a registry entry can never disagree with the weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from embedding_pipeline.errors import ConfigError

# Export variants: fp32 (default), int8 (CPU, dynamic quantisation), fp16 (GPU serving).
Precision = Literal["fp32", "int8", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "int8", "fp16")

Pooling = Literal["mean", "cls"]
Role = Literal["query", "passage"]
ROLES: tuple[Role, ...] = ("query", "passage")


@dataclass(frozen=True)
class ModelFamily:
    """How to export, tokenize and prefix one family of encoder models."""

    name: str
    architecture: str
    pooling: Pooling
    max_length: int
    query_prefix: str = ""
    passage_prefix: str = ""
    description: str = ""

    def prefix(self, role: Role) -> str:
        """Return the text prefix for ``role`` (``query`` or ``passage``)."""
        if role == "query":
            return self.query_prefix
        if role == "passage":
            return self.passage_prefix
        raise ConfigError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


FAMILIES: dict[str, ModelFamily] = {
    family.name: family
    for family in (
        ModelFamily(
            name="ruri-v3",
            architecture="modernbert",
            pooling="mean",
            max_length=512,
            query_prefix="検索クエリ: ",
            passage_prefix="検索文書: ",
            description="cl-nagoya/ruri-v3-* (Japanese, ModernBERT); the model accepts up to 8192 tokens",
        ),
        ModelFamily(
            name="multilingual-e5",
            architecture="xlm-roberta",
            pooling="mean",
            max_length=512,
            query_prefix="query: ",
            passage_prefix="passage: ",
            description="intfloat/multilingual-e5-* (XLM-RoBERTa)",
        ),
        ModelFamily(
            name="bge-m3",
            architecture="xlm-roberta",
            pooling="cls",
            max_length=512,
            description="BAAI/bge-m3 dense vectors (CLS pooling); the model accepts up to 8192 tokens",
        ),
        ModelFamily(
            name="generic",
            architecture="bert-like",
            pooling="mean",
            max_length=512,
            description="any BERT-like encoder with mean pooling (e.g. sentence-transformers models)",
        ),
    )
}

# Hub-name fragments that identify a family when the caller does not name one.
_NAME_HINTS: tuple[tuple[str, str], ...] = (
    ("ruri-v3", "ruri-v3"),
    ("multilingual-e5", "multilingual-e5"),
    ("e5-", "multilingual-e5"),
    ("bge-m3", "bge-m3"),
)


def get_family(name: str) -> ModelFamily:
    """Return the family called ``name`` or fail naming the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        known = ", ".join(sorted(FAMILIES))
        raise ConfigError(f"unknown model family {name!r}; known families: {known}") from None


def infer_family(source: str, model_dir: Path | None = None) -> ModelFamily:
    """Guess the family from a hub name or local directory, falling back to ``generic``.

    For ``generic`` models the pooling follows a sentence-transformers ``1_Pooling/config.json``
    when the model ships one (CLS-pooled models would otherwise be mean-pooled silently).
    """
    lowered = source.lower()
    for fragment, family_name in _NAME_HINTS:
        if fragment in lowered:
            return FAMILIES[family_name]
    family = FAMILIES["generic"]
    if model_dir is not None:
        pooling = _sentence_transformers_pooling(model_dir)
        max_length = _sentence_transformers_max_length(model_dir)
        if pooling or max_length:
            family = ModelFamily(
                name=family.name,
                architecture=family.architecture,
                pooling=pooling or family.pooling,
                max_length=max_length or family.max_length,
                description=family.description,
            )
    return family


def _sentence_transformers_pooling(model_dir: Path) -> Pooling | None:
    config = model_dir / "1_Pooling" / "config.json"
    if not config.is_file():
        return None
    settings = json.loads(config.read_text())
    if settings.get("pooling_mode_cls_token"):
        return "cls"
    if settings.get("pooling_mode_mean_tokens"):
        return "mean"
    return None


def _sentence_transformers_max_length(model_dir: Path) -> int | None:
    config = model_dir / "sentence_bert_config.json"
    if not config.is_file():
        return None
    value = json.loads(config.read_text()).get("max_seq_length")
    return int(value) if value else None
