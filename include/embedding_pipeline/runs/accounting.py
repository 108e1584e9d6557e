"""Run accounting: what each task read, indexed and dead-lettered, small enough for XCom.

The finalize task sums these per sink and asserts ``rows_in == indexed + dead_lettered``: a row that
is neither indexed nor dead-lettered is silent loss, and fails the run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
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


def chunk_result(
    stage: str,
    chunk: str,
    rows_in: int,
    indexed: int,
    dead: DeadLetterWriter,
    started: float,
    extra: dict[str, float | int | str],
) -> StageResult:
    """The result of one task over one chunk, with ``dead`` (this task's writer) flushed.

    A row neither indexed nor dead-lettered here is a bug in the task, never bad data: it fails
    loudly instead of reaching finalize as a wrong count. ``started`` is a ``time.monotonic()``.
    """
    result = StageResult(
        stage=stage,
        chunk=chunk,
        rows_in=rows_in,
        indexed=indexed,
        dead_lettered=len(dead),
        dead_letters_by_reason=dead.by_reason(),
        dead_letter_path=dead.flush(),
        seconds=round(time.monotonic() - started, 3),
        extra=extra,
    )
    if not result.balanced:
        raise PipelineError(f"{stage} accounting does not add up for chunk {chunk}: {result.to_xcom()}")
    return result
