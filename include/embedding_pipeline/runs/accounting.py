"""Run accounting: what each task read, indexed and dead-lettered, small enough for XCom.

The finalize task sums these per sink and asserts ``rows_in == indexed + unchanged + deleted +
dead_lettered``: a row that is none of these is silent loss, and fails the run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

from embedding_pipeline.errors import PipelineError

if TYPE_CHECKING:
    from embedding_pipeline.runs.dead_letter import DeadLetterWriter


@dataclass
class StageResult:
    """Counts of one mapped task (embed chunk, or one sink over one staged chunk)."""

    stage: str
    chunk: str
    rows_in: int = 0
    indexed: int = 0  # written: embedded and stored, or (fields only) rewritten
    dead_lettered: int = 0
    dead_letters_by_reason: dict[str, int] = field(default_factory=dict)
    dead_letter_path: str | None = None
    seconds: float = 0.0
    extra: dict[str, float | int | str] = field(default_factory=dict)
    unchanged: int = 0  # incremental runs: nothing to write (runs.changes)
    deleted: int = 0

    @property
    def balanced(self) -> bool:
        return self.rows_in == self.indexed + self.unchanged + self.deleted + self.dead_lettered

    def to_xcom(self) -> dict:
        return asdict(self)

    @classmethod
    def from_xcom(cls, data: dict) -> StageResult:
        return cls(**data)


def chunk_result(counted: StageResult, dead: DeadLetterWriter, started: float) -> StageResult:
    """``counted`` (the task's counts) with ``dead`` (this task's writer) flushed into it and the
    task's seconds (``started`` is a ``time.monotonic()``).

    A row neither written, unchanged, deleted nor dead-lettered here is a bug in the task, never
    bad data: it fails loudly instead of reaching finalize as a wrong count.
    """
    result = replace(
        counted,
        dead_lettered=len(dead),
        dead_letters_by_reason=dead.by_reason(),
        dead_letter_path=dead.flush(),
        seconds=round(time.monotonic() - started, 3),
    )
    if not result.balanced:
        raise PipelineError(
            f"{result.stage} accounting does not add up for chunk {result.chunk}: {result.to_xcom()}"
        )
    return result
