"""What every document builder needs, whatever the index: the default analyzer and date values ES
accepts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

# ES refuses longer _ids (a real cluster fails the whole bulk request, not one item). Rows are checked
# against it before any store is written, so a row is in every store or in none.
MAX_ID_BYTES = 512
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
