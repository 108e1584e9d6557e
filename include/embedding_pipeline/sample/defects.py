"""Seeds, ids and the defect plan: which rows of a partition are bad, and how, decided from a
counter-based hash of the position so any row of any partition can be planned alone."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

from embedding_pipeline.sample.layout import EPOCH, ID_STRIDE, LONG_TEXT_CHARS

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def derive_seed(*parts: object) -> int:
    """A 64-bit seed from labelled parts; sha256 so nearby inputs give unrelated streams."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, vectorised (uint64 array arithmetic wraps, as the algorithm needs)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def position_uniforms(key: int, positions: np.ndarray, stream: int) -> np.ndarray:
    """Uniform [0, 1) per position, a pure function of (key, stream, position): defects can be decided
    for any row of any partition without generating the rows before it."""
    salted = np.uint64(derive_seed(key, stream) & _MASK64)
    x = _mix64((np.asarray(positions, dtype=np.int64).astype(np.uint64) * _GOLDEN) ^ salted)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def days_since_epoch(dt: date) -> int:
    return (dt - EPOCH).days


def row_ids(dt: date, positions: np.ndarray | Sequence[int]) -> np.ndarray:
    """Business ids of rows of partition ``dt`` (see ``ID_STRIDE``)."""
    return np.int64(days_since_epoch(dt)) * np.int64(ID_STRIDE) + np.asarray(positions, dtype=np.int64) + 1


@dataclass(frozen=True)
class Defect:
    """One kind of injected bad row and what the pipeline is expected to do with it."""

    kind: str
    expect: str
    placement: str
    """``inline`` (in the main part files) or the stem of the variant file the row is diverted to."""
    description: str


DEFECTS: tuple[Defect, ...] = (
    Defect("null_text", "dead_letter", "inline", "text column is null"),
    Defect("empty_text", "dead_letter", "inline", "text column is the empty string"),
    Defect("whitespace_text", "dead_letter", "inline", "text is only spaces, tabs, newlines or U+3000"),
    Defect("text_too_long", "dead_letter", "inline", f"text is {LONG_TEXT_CHARS} characters"),
    Defect(
        "duplicate_id",
        "dead_letter",
        "inline",
        "id of an earlier clean row of the same partition (duplicate_of)",
    ),
    Defect(
        "duplicate_id_cross_partition",
        "upsert",
        "inline",
        "id of the clean row at the same position of the previous calendar day's partition (original_*): "
        "a later version of that row, valid on its own; re-indexing it overwrites the earlier document",
    ),
    Defect(
        "wrong_type",
        "dead_letter",
        "part-wrongtype",
        "row in a file whose text column is int64 (a typed Parquet column cannot hold a wrong-typed cell)",
    ),
    Defect("extra_column", "index", "part-extracolumn", "row in a file with one extra column (ignore it)"),
    Defect(
        "missing_optional_column",
        "index",
        "part-missingcol",
        "row in a file without the optional column (null)",
    ),
)
DEFECT_BY_KIND = {d.kind: d for d in DEFECTS}
_KIND_INDEX = {d.kind: i for i, d in enumerate(DEFECTS)}
EXTRA_COLUMN = "legacy_source"
WHITESPACE_TEXTS = (" ", "   ", "\u3000", "\t", " \u3000 \n", "\u3000\u3000")
_STREAM_BAD, _STREAM_KIND = 0, 1
STREAM_DETAIL = 2  # the stream the writer draws defect details (values, lengths) from
_STREAM_ORIGINAL = 10  # .. _STREAM_ORIGINAL + _ORIGINAL_ATTEMPTS
_ORIGINAL_ATTEMPTS = 8


@dataclass(frozen=True)
class PartitionKey:
    """Everything a partition's content depends on."""

    table: str
    dt: date
    seed: int
    lang: str
    bad_rate: float

    @property
    def defect_key(self) -> int:
        return derive_seed("defects", self.seed, self.table, self.lang, self.dt.isoformat())

    def block_seed(self, block: int) -> int:
        return derive_seed("rows", self.seed, self.table, self.lang, self.dt.isoformat(), block)

    def previous_day(self) -> PartitionKey:
        return PartitionKey(self.table, self.dt - timedelta(days=1), self.seed, self.lang, self.bad_rate)


def bad_mask(key: PartitionKey, positions: np.ndarray) -> np.ndarray:
    """Which positions carry a defect. Position 0 never does, so every duplicate has a clean original."""
    positions = np.asarray(positions, dtype=np.int64)
    if key.bad_rate <= 0:
        return np.zeros(positions.shape, dtype=bool)
    return (position_uniforms(key.defect_key, positions, _STREAM_BAD) < key.bad_rate) & (positions > 0)


def defect_kinds(key: PartitionKey, positions: np.ndarray) -> np.ndarray:
    """Kind index (into ``DEFECTS``) per position: a fixed, equal mix.

    A cross-partition duplicate reuses the id of the *same position* of the previous day, so two of
    them can never share an id (which would make them a within-partition duplicate as well); where
    that row is itself bad there, the position becomes a within-partition duplicate instead."""
    positions = np.asarray(positions, dtype=np.int64)
    u = position_uniforms(key.defect_key, positions, _STREAM_KIND)
    kinds = np.minimum((u * len(DEFECTS)).astype(np.int64), len(DEFECTS) - 1)
    cross = kinds == _KIND_INDEX["duplicate_id_cross_partition"]
    if cross.any():
        unusable = cross & bad_mask(key.previous_day(), positions)
        kinds[unusable] = _KIND_INDEX["duplicate_id"]
    return kinds


def clean_original(key: PartitionKey, positions: np.ndarray) -> np.ndarray:
    """For each within-partition duplicate at ``positions``, a clean earlier position of the same
    partition, so "first occurrence wins" keeps the original: a few hashed attempts, then position 0
    (never bad)."""
    positions = np.asarray(positions, dtype=np.int64)
    chosen = np.zeros(positions.shape, dtype=np.int64)
    done = np.zeros(positions.shape, dtype=bool)
    for attempt in range(_ORIGINAL_ATTEMPTS):
        u = position_uniforms(key.defect_key, positions, _STREAM_ORIGINAL + attempt)
        candidate = (u * positions).astype(np.int64)
        ok = ~bad_mask(key, candidate) & ~done
        chosen[ok] = candidate[ok]
        done |= ok
    return chosen
