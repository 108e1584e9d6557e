"""What every document builder needs, whatever the index: the default analyzer and date values ES
accepts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

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
