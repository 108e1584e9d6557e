"""What a full rebuild must show before its generation goes live, and how many generations to
keep: light (no store clients), so the trigger forms can take their defaults at parse time. The
checks themselves: :mod:`embedding_pipeline.generations.gate`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from embedding_pipeline.errors import ConfigError
from embedding_pipeline.runs.input_kinds import DEFAULT_MAX_DELETE_RATIO

MODES = ("incremental", "full")
DEFAULT_KEEP_GENERATIONS = 2


@dataclass(frozen=True)
class GateRules:
    """What a new generation must show before the aliases move (Params ``gate_*``)."""

    canaries: int = 5
    min_recall: float = 0.95
    recall_tolerance: float = 0.02
    quality_sample: int = 100
    max_shrink: float = DEFAULT_MAX_DELETE_RATIO  # the run's max_delete_ratio: a truncated input

    def __post_init__(self) -> None:
        if self.canaries < 1 or self.quality_sample < 1:
            raise ConfigError("gate_canaries and gate_quality_sample must be >= 1")
        bounded = (self.min_recall, self.recall_tolerance, self.max_shrink)
        if not all(0 <= value <= 1 for value in bounded):
            raise ConfigError("gate_min_recall, gate_recall_tolerance and max_delete_ratio must be in [0, 1]")


@dataclass(frozen=True)
class Publish:
    """How a full rebuild ends: its gate, how many generations to keep, and the stores' settings."""

    rules: GateRules = field(default_factory=GateRules)
    keep: int = DEFAULT_KEEP_GENERATIONS
    store_settings: Mapping[str, Any] | None = (
        None  # per store system (stores.registry); None: the environment
    )

    def __post_init__(self) -> None:
        if self.keep < 1:
            raise ConfigError(f"keep_generations must be >= 1, got {self.keep}")
