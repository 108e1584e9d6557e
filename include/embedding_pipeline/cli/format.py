"""Aligned text for terminals, Japanese included: display widths, clipped cells, tables. Every
command that prints a table uses these."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any

CELL_WIDTH = 48  # display columns; longer keywords are cut with "…" so the table stays readable


def display_width(text: str) -> int:
    """Terminal columns of ``text``: East Asian wide and fullwidth characters take two, marks none."""
    return sum(
        0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
        for ch in text
    )


def clip(value: Any, width: int = CELL_WIDTH) -> str:
    """One line of at most ``width`` columns: whitespace runs collapsed, the rest cut with "…"."""
    text = " ".join(str(value).split())
    if display_width(text) <= width:
        return text
    out, used = [], 0
    for ch in text:
        used += display_width(ch)
        if used > width - 1:
            break
        out.append(ch)
    return "".join(out) + "…"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: frozenset[int]) -> list[str]:
    """Rows padded to their column's display width; columns in ``right`` are right-aligned."""
    widths = [max(display_width(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = []
        for i, cell in enumerate(row):
            pad = " " * (widths[i] - display_width(cell))
            cells.append(pad + cell if i in right else cell + pad)
        lines.append("  ".join(cells).rstrip())
    return lines
