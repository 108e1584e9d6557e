"""Bulk-load settings: ``refresh_interval: -1`` and ``number_of_replicas: 0`` while loading,
restored afterwards. Mapped tasks run concurrently and cannot know about each other, so the DAG
calls :func:`begin_bulk_load` in a setup task and :func:`end_bulk_load` in a teardown task;
:func:`bulk_load_settings` wraps both for single-process use."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from elasticsearch import Elasticsearch

from embedding_pipeline.stores.elasticsearch.errors import EsIndexError, es_errors
from embedding_pipeline.stores.elasticsearch.indices import index_mapping, write_target

log = logging.getLogger(__name__)

_BULK_LOAD_SETTINGS = ("refresh_interval", "number_of_replicas")


def _put_meta(es: Elasticsearch, index: str, meta: dict[str, Any]) -> None:
    # The whole _meta is written every time: ES replaces _meta on update (the emulator merges).
    es.indices.put_mapping(index=index, meta=meta)


def begin_bulk_load(es: Elasticsearch, alias: str) -> dict[str, Any]:
    """Turn refresh off and replicas to 0 on the alias's write index (or the index ``alias`` names);
    return what to restore.

    The result is small and JSON-able (XCom): ``{"index", "refresh_interval", "number_of_replicas"}``;
    ``None`` means "not set explicitly" and restores the cluster default.

    The previous values are also recorded in the index ``_meta`` (``bulk_load``) before anything is
    changed. A retried setup task, or a second run overlapping the first, then finds the load
    already begun and returns the *original* values instead of the bulk values it would read from
    the settings, so no teardown can leave an index with refresh switched off for good.
    """
    index = write_target(es, alias)
    if index is None:
        raise EsIndexError(f"alias {alias!r} does not exist; create its index first")
    with es_errors(f"switching {index!r} to bulk-load settings"):
        meta = dict(index_mapping(es, index).get("_meta", {}))
        marker = meta.get("bulk_load") or {}
        if marker.get("active"):
            previous = {name: marker.get(name) for name in _BULK_LOAD_SETTINGS}
            log.info("bulk load on %s already begun; keeping recorded settings %s", index, previous)
        else:
            flat = es.indices.get_settings(
                index=index, flat_settings=True, name=[f"index.{n}" for n in _BULK_LOAD_SETTINGS]
            ).body
            current = flat.get(index, {}).get("settings", {})
            previous = {name: current.get(f"index.{name}") for name in _BULK_LOAD_SETTINGS}
            meta["bulk_load"] = {"active": True, **previous, "since": datetime.now(UTC).isoformat()}
            _put_meta(es, index, meta)
        es.indices.put_settings(
            index=index, settings={"index": {"refresh_interval": "-1", "number_of_replicas": 0}}
        )
    return {"index": index, **previous}


def end_bulk_load(es: Elasticsearch, alias: str, previous: Mapping[str, Any] | None = None) -> None:
    """Restore the settings :func:`begin_bulk_load` replaced, clear the marker, refresh.

    ``previous`` is begin's return value; without it the values recorded in ``_meta`` are used
    (a teardown whose setup's XCom is lost still restores). Restoring twice is harmless.
    """
    index = (previous or {}).get("index") or write_target(es, alias)
    if index is None:
        raise EsIndexError(f"alias {alias!r} does not exist; nothing to restore")
    with es_errors(f"restoring settings of {index!r} after the bulk load"):
        meta = dict(index_mapping(es, index).get("_meta", {}))
        marker = meta.get("bulk_load") or {}
        if previous is None:
            if not marker.get("active"):
                log.info("no bulk load recorded on %s; nothing to restore", index)
                es.indices.refresh(index=index)
                return
            previous = marker
        restore = {name: previous.get(name) for name in _BULK_LOAD_SETTINGS}
        es.indices.put_settings(index=index, settings={"index": restore})
        meta["bulk_load"] = {"active": False, **restore, "since": None}
        _put_meta(es, index, meta)
        es.indices.refresh(index=index)
    log.info("restored %s on %s", restore, index)


@contextmanager
def bulk_load_settings(es: Elasticsearch, alias: str) -> Iterator[dict[str, Any]]:
    """Bulk-load settings for one process; restored (and refreshed) also when the body raises.

    Not for concurrent mapped tasks: use begin/end in setup/teardown tasks there.
    """
    previous = begin_bulk_load(es, alias)
    try:
        yield previous
    finally:
        end_bulk_load(es, alias, previous)


def get_bulk_settings(es: Elasticsearch, alias: str) -> dict[str, str | None]:
    """Current explicit ``refresh_interval`` / ``number_of_replicas`` of the write index (None = default)."""
    index = write_target(es, alias)
    if index is None:
        raise EsIndexError(f"alias {alias!r} does not exist")
    flat = es.indices.get_settings(index=index, flat_settings=True).body[index]["settings"]
    return {name: flat.get(f"index.{name}") for name in _BULK_LOAD_SETTINGS}
