"""What a partition means, and how a deletion is marked. Light (no pyarrow): the trigger form's
Params are built from these at DAG parse time.

Input kinds (Param ``input_kind``):

``delta`` (default)
    A partition holds new or changed rows. An optional tombstone column (Param
    ``tombstone_column``, e.g. ``deleted``) marks deletions: a boolean ``true``, or a string
    ``delete`` / ``deleted`` / ``d`` (any case; e.g. a CDC ``op`` column whose other values are
    ``upsert``, ``insert``, ``update``).
``snapshot``
    A partition is the whole table as of its date: ids stored before and absent from it are
    deleted. A run over a range of snapshot dates reads only the latest one (it supersedes the
    others).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from embedding_pipeline.errors import ConfigError

INPUT_KINDS = ("delta", "snapshot")
TOMBSTONE_STRINGS = frozenset({"delete", "deleted", "d"})
DEFAULT_MAX_DELETE_RATIO = 0.05


@dataclass(frozen=True)
class InputSpec:
    """How a table's partitions are read (Params ``input_kind``, ``tombstone_column``)."""

    kind: str = "delta"
    tombstone_column: str | None = None
    max_delete_ratio: float = DEFAULT_MAX_DELETE_RATIO

    def __post_init__(self) -> None:
        if self.kind not in INPUT_KINDS:
            raise ConfigError(f"input_kind must be one of {list(INPUT_KINDS)}, got {self.kind!r}")
        if not 0.0 <= self.max_delete_ratio <= 1.0:
            raise ConfigError(f"max_delete_ratio must be in [0, 1], got {self.max_delete_ratio}")


def is_tombstone(value: Any) -> bool:
    """A tombstone column's value that marks a deletion (see the module docstring)."""
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value.strip().lower() in TOMBSTONE_STRINGS
