"""Dead letters: every row that cannot be indexed, with its reason, in one place per run.

Layout: ``<run_dir>/dead_letters/<stage>-<part>.jsonl`` - one file per writer (a mapped task writes
its own part), so concurrent tasks on any executor never share a file handle, and a retried task
overwrites its own part instead of duplicating it. Each line carries enough of the row to replay it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
    """Collects dead letters of one task and writes them to its own JSONL part file."""

    def __init__(self, run_dir: Path, stage: str, part: str) -> None:
        self.path = run_dir / DEAD_LETTER_DIRNAME / f"{stage}-{part}.jsonl"
        self.stage = stage
        self.letters: list[DeadLetter] = []

    def add(
        self, record_id: object, reason: str, error: str, row: dict[str, Any] | None = None, attempt: int = 1
    ) -> None:
        self.letters.append(
            DeadLetter(
                None if record_id is None else str(record_id),
                self.stage,
                reason,
                error[:2000],
                attempt,
                _jsonable(row or {}),
            )
        )

    def __len__(self) -> int:
        return len(self.letters)

    def by_reason(self) -> dict[str, int]:
        return dict(Counter(letter.reason for letter in self.letters))

    def flush(self) -> str | None:
        """Write (or replace) this task's part file; return its path, or None when there is nothing."""
        if not self.letters:
            self.path.unlink(missing_ok=True)  # a retry that succeeded leaves no stale part behind
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            for letter in self.letters:
                handle.write(json.dumps(asdict(letter), ensure_ascii=False) + "\n")
        tmp.replace(self.path)
        return str(self.path)


def read_dead_letters(run_dir: Path, stage: str | None = None) -> list[dict[str, Any]]:
    """All dead letters of a run (optionally of one stage), for reports and replays."""
    folder = run_dir / DEAD_LETTER_DIRNAME
    if not folder.is_dir():
        return []
    letters = []
    for path in sorted(folder.glob(f"{stage or '*'}-*.jsonl")):
        with open(path, encoding="utf-8") as handle:
            letters.extend(json.loads(line) for line in handle if line.strip())
    return letters
