"""What every document builder needs, whatever the index: the default analyzer, date values ES
accepts, and the check that a row's fields fit the index's mapping before any store is written."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

# ES refuses longer _ids (a real cluster fails the whole bulk request, not one item). Rows are checked
# against it before any store is written, so a row is in every store or in none.
MAX_ID_BYTES = 512
# Lucene's longest indexable term: a longer ``keyword`` value fails the whole document.
MAX_KEYWORD_BYTES = 32766
# Stock Elasticsearch ships it (kuromoji and icu need plugins); bigrams serve Japanese fragments.
DEFAULT_ANALYZER = "cjk"


def normalise_date(value: Any) -> Any:
    """ISO 8601 for anything Python can parse as a date (``2024-01-01 10:00:00`` included).

    Values that do not parse are passed through unchanged on purpose: ES then rejects the item and
    the dead letter carries ES's own reason, rather than this module guessing.
    """
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).isoformat()
        except ValueError:
            return value
    return value


def payload_fields(payload: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """The ``names`` a document takes from a row's payload; missing or None fields are left out (an
    explicit mapping has no use for nulls) and ``updated_at`` is normalised to ISO 8601."""
    fields = {}
    for name in names:
        value = payload.get(name)
        if value is not None:
            fields[name] = normalise_date(value) if name == "updated_at" else value
    return fields


def field_types(mappings: Mapping[str, Any]) -> dict[str, str]:
    """Top-level field name -> mapping type (``keyword``, ``text``, ``date``, ...)."""
    return {name: spec.get("type", "object") for name, spec in mappings["properties"].items()}


def _value_problem(name: str, kind: str, value: Any) -> str | None:
    if isinstance(value, list):
        return next((p for v in value if (p := _value_problem(name, kind, v))), None)
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} is {value}, which JSON cannot carry"
    if kind == "date":
        if isinstance(value, int) and not isinstance(value, bool):
            return None  # epoch milliseconds
        if isinstance(value, str):
            try:
                datetime.fromisoformat(value)  # what normalise_date turns into ISO 8601 on write
                return None
            except ValueError:
                pass
        return f"{name} is {value!r:.80}, not a date (ISO 8601 or epoch milliseconds)"
    if kind in ("keyword", "text"):
        if isinstance(value, bool | int | float):
            return None  # ES indexes numbers as their text
        if not isinstance(value, str):
            return f"{name} is {type(value).__name__}; the index maps it as {kind}"
        size = len(value.encode("utf-8", "surrogatepass"))
        if kind == "keyword" and size > MAX_KEYWORD_BYTES:
            return f"{name} is {size} bytes; a keyword field takes at most {MAX_KEYWORD_BYTES}"
    return None


def field_problem(types: Mapping[str, str], payload: Mapping[str, Any]) -> str | None:
    """Why a row's payload would be refused by an index with these field ``types`` (None: it
    fits). Checked at embed, before any store is written: Qdrant takes any JSON payload, so a value
    only ES refuses would otherwise leave the row in one store. Fields the index does not map are
    not written to it and not checked."""
    for name, value in payload.items():
        kind = types.get(name)
        if value is not None and kind is not None:
            problem = _value_problem(name, kind, value)
            if problem:
                return problem
    return None
