"""Run accounting: what each task read, indexed and dead-lettered, small enough for XCom.

The finalize task sums these per sink and asserts ``rows_in == indexed + dead_lettered``: a row that
is neither indexed nor dead-lettered is silent loss, and fails the run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class StageResult:
    """Counts of one mapped task (embed chunk, or one sink over one staged chunk)."""

    stage: str
    chunk: str
    rows_in: int = 0
    indexed: int = 0
    dead_lettered: int = 0
    dead_letters_by_reason: dict[str, int] = field(default_factory=dict)
    dead_letter_path: str | None = None
    seconds: float = 0.0
    extra: dict[str, float | int | str] = field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        return self.rows_in == self.indexed + self.dead_lettered

    def to_xcom(self) -> dict:
        return asdict(self)

    @classmethod
    def from_xcom(cls, data: dict) -> StageResult:
        return cls(**data)
