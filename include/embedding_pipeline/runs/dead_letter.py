"""Dead letters: every row that cannot be indexed, with its reason, in one place per run.

Layout: ``<run_dir>/dead_letters/<stage>-<part>.jsonl`` - one file per writer (a mapped task writes
its own part), so concurrent tasks on any executor never share a file handle, and a retried task
overwrites its own part instead of duplicating it. Each line carries enough of the row to replay it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from embedding_pipeline.runs.storage import StoragePath, as_path, copy_text, remove

DEAD_LETTER_DIRNAME = "dead_letters"


@dataclass(frozen=True)
class DeadLetter:
    record_id: str | None
    stage: str
    reason: str
    error: str
    attempt: int = 1
    row: dict[str, Any] = field(default_factory=dict)
    timestamp: str = field(default_factory=lambda: datetime.now(UTC).isoformat())


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


class DeadLetterWriter:
    """Collects dead letters of one task and writes them to its own JSONL part file.

    Letters are streamed to a local temporary file as they come and only counted in memory: a
    chunk whose every row is bad costs disk, not memory. :meth:`flush` copies them to the part
    file (on local disk or object storage)."""

    def __init__(self, run_dir: str | StoragePath, stage: str, part: str) -> None:
        self.path = as_path(run_dir) / DEAD_LETTER_DIRNAME / f"{stage}-{part}.jsonl"
        self.stage = stage
        self._reasons: Counter[str] = Counter()
        self._spool: IO[str] | None = None

    def add(
        self, record_id: object, reason: str, error: str, row: dict[str, Any] | None = None, attempt: int = 1
    ) -> None:
        letter = DeadLetter(
            None if record_id is None else str(record_id),
            self.stage,
            reason,
            error[:2000],
            attempt,
            _jsonable(row or {}),
        )
        if self._spool is None:
            # Lives as long as the writer (a task): removed by the OS when it is closed or collected.
            self._spool = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
        self._spool.write(json.dumps(asdict(letter), ensure_ascii=False) + "\n")
        self._reasons[reason] += 1

    def __len__(self) -> int:
        return sum(self._reasons.values())

    def by_reason(self) -> dict[str, int]:
        return dict(self._reasons)

    def flush(self) -> str | None:
        """Write (or replace) this task's part file; return its path, or None when there is nothing."""
        if self._spool is None:
            remove(self.path)  # a retry that succeeded leaves no stale part behind
            return None
        self._spool.flush()
        self._spool.seek(0)
        copy_text(self._spool, self.path)
        self._spool.seek(0, os.SEEK_END)  # later letters append; a later flush writes them all
        return str(self.path)


def read_dead_letters(run_dir: str | StoragePath, stage: str | None = None) -> list[dict[str, Any]]:
    """All dead letters of a run (optionally of one stage), for reports and replays."""
    folder = as_path(run_dir) / DEAD_LETTER_DIRNAME
    if not folder.exists():
        return []
    letters = []
    for path in sorted(folder.glob(f"{stage or '*'}-*.jsonl"), key=str):
        # split on "\n" only: str.splitlines() also splits inside values (U+2028, U+0085, \x1c...)
        letters.extend(json.loads(line) for line in path.read_text().split("\n") if line.strip())
    return letters
