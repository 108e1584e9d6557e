"""Client-side tokenization with the tokenizer published next to the model.

Tokenizing in the client keeps the production server a plain Triton onnxruntime backend (no Python
backend, no tokenizer on the GPU box). The tokenizer is the ``tokenizer.json`` written at publish
time, so client and model can never drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedding_pipeline.errors import InvalidInputError, ModelSourceError
from embedding_pipeline.model.registry import Role

TOKENIZER_FILENAME = "tokenizer.json"


@dataclass(frozen=True)
class EncodedBatch:
    """Padded INT64 model inputs plus how many texts were truncated to ``max_length``."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    truncated: int

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def validate_texts(texts: Sequence[object]) -> list[str]:
    """Return ``texts`` as strings or raise naming every bad position and why.

    The pipeline dead-letters bad rows before they reach the client; this check makes a direct
    caller's mistake an error that names the rows instead of a tokenizer traceback.
    """
    if isinstance(texts, str):
        raise InvalidInputError("expected a sequence of texts, got one string (wrap it in a list)")
    problems: list[str] = []
    for index, text in enumerate(texts):
        reason = text_problem(text)
        if reason:
            problems.append(f"#{index}: {reason}")
    if problems:
        shown = ", ".join(problems[:10]) + (f" (+{len(problems) - 10} more)" if len(problems) > 10 else "")
        raise InvalidInputError(f"{len(problems)} invalid text(s): {shown}")
    return list(texts)  # type: ignore[arg-type]


def text_problem(text: object) -> str | None:
    """Why ``text`` cannot be embedded (``None`` when it can). Shared with row validation."""
    if text is None:
        return "text is null"
    if not isinstance(text, str):
        return f"text is {type(text).__name__}, not str"
    if not text.strip():
        return "text is empty or whitespace"
    return None


class TextEncoder:
    """Turns texts into padded ``input_ids``/``attention_mask`` with role prefixes and truncation."""

    def __init__(
        self,
        tokenizer_file: Path,
        max_length: int,
        pad_token_id: int,
        prefixes: dict[str, str] | None = None,
    ) -> None:
        from tokenizers import Tokenizer

        if not tokenizer_file.is_file():
            raise ModelSourceError(f"tokenizer file {tokenizer_file} is missing")
        if max_length < 2:
            raise ModelSourceError(f"max_length must be >= 2, got {max_length}")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_length)
        self.max_length = max_length
        self.pad_token_id = pad_token_id
        self.prefixes = dict(prefixes or {})

    def prefixed(self, texts: Sequence[str], role: Role | None) -> list[str]:
        prefix = self.prefixes.get(role, "") if role else ""
        return [prefix + text for text in texts] if prefix else list(texts)

    def token_lengths(self, texts: Sequence[str], role: Role | None = None) -> list[int]:
        """Token count of each text after prefixing and truncation (for length-sorted batching)."""
        return [len(encoding.ids) for encoding in self.tokenizer.encode_batch(self.prefixed(texts, role))]

    def tokenize(self, texts: Sequence[str], role: Role | None = None) -> list[Any]:
        """``tokenizers`` encodings of already-validated ``texts`` (prefixed, truncated), for callers
        that sort by length before batching: tokenized once, then :meth:`pad`-ded per batch."""
        return self.tokenizer.encode_batch(self.prefixed(texts, role)) if texts else []

    def encode(self, texts: Sequence[str], role: Role | None = None) -> EncodedBatch:
        """Tokenize already-validated ``texts``; pads to the longest text in the batch."""
        return self.pad(self.tokenize(texts, role))

    def pad(self, encodings: Sequence[Any]) -> EncodedBatch:
        """One batch of encodings as padded INT64 arrays, as wide as its longest row."""
        if not encodings:
            empty = np.zeros((0, 0), dtype=np.int64)
            return EncodedBatch(empty, empty.copy(), 0)
        width = max(len(encoding.ids) for encoding in encodings)
        input_ids = np.full((len(encodings), width), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(encodings), width), dtype=np.int64)
        truncated = 0
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            input_ids[row, :n] = encoding.ids
            attention_mask[row, :n] = 1
            truncated += bool(encoding.overflowing)
        return EncodedBatch(input_ids, attention_mask, truncated)
