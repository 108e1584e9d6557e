"""Generations of an index: ``<alias>-g<N>`` beside each other, the alias moved between them in one
``_aliases`` request (remove + add: ES applies the actions of one request atomically), and dropping
one no alias points at. Creating the live generation when none exists is ``indices.ensure_index``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from elasticsearch import ApiError, Elasticsearch

from embedding_pipeline.stores.elasticsearch.errors import (
    EsIndexError,
    error_type_reason,
    es_errors,
    raise_clear,
)
from embedding_pipeline.stores.elasticsearch.indices import (
    check_index_compatible,
    index_mapping,
    physical_index_name,
    write_index,
)

log = logging.getLogger(__name__)


def list_generations(es: Elasticsearch, alias: str) -> dict[int, str]:
    """Generation number -> physical index, for every ``<alias>-g<N>`` that exists."""
    pattern = re.compile(rf"^{re.escape(alias)}-g(\d+)$")
    with es_errors(f"listing the generations of {alias!r}"):
        names = es.indices.get(index=f"{alias}-g*", allow_no_indices=True, ignore_unavailable=True).body
    found = {int(m.group(1)): name for name in names if (m := pattern.match(name))}
    return dict(sorted(found.items()))


def create_generation(
    es: Elasticsearch,
    alias: str,
    generation: int,
    mappings: Mapping[str, Any],
    settings: Mapping[str, Any] | None = None,
) -> str:
    """Create ``<alias>-g<generation>`` without the alias (a full rebuild fills it before the swap).
    An existing index of that name (a retried task) is checked against ``mappings`` and reused."""
    index = physical_index_name(alias, generation)
    try:
        es.indices.create(index=index, mappings=dict(mappings), settings=dict(settings or {}))
        log.info("created index %s (generation %d of %s, not aliased yet)", index, generation, alias)
    except ApiError as exc:
        kind, _ = error_type_reason(exc.body)
        if kind != "resource_already_exists_exception":
            raise_clear(exc, f"creating index {index!r}")
        check_index_compatible(es, alias, index, mappings)
    except Exception as exc:
        raise_clear(exc, f"creating index {index!r}")
    return index


def swap_alias(es: Elasticsearch, alias: str, index: str) -> str | None:
    """Point ``alias`` (as write index) at ``index`` alone, in one request; the index it pointed at
    before (None when the alias did not exist). A request ES refused changed nothing."""
    with es_errors(f"resolving alias {alias!r}"):
        holders = sorted(es.indices.get_alias(name=alias).body) if es.indices.exists_alias(name=alias) else []
        concrete = not holders and es.indices.exists(index=alias)
    if concrete:
        raise EsIndexError(f"{alias!r} is a concrete index, not an alias: it cannot be swapped")
    previous = write_index(es, alias) if holders else None
    if holders == [index]:
        return previous
    actions: list[dict[str, Any]] = [{"remove": {"index": name, "alias": alias}} for name in holders]
    actions.append({"add": {"index": index, "alias": alias, "is_write_index": True}})
    with es_errors(f"moving alias {alias!r} from {previous} to {index!r}"):
        es.indices.update_aliases(actions=actions)
    log.info("Elasticsearch alias %s: %s -> %s", alias, previous, index)
    return previous


def remove_alias(es: Elasticsearch, alias: str, index: str) -> None:
    """Take ``alias`` off ``index`` (undoing a swap that created the alias)."""
    with es_errors(f"removing alias {alias!r} from {index!r}"):
        es.indices.delete_alias(index=index, name=alias)


def drop_index(es: Elasticsearch, alias: str, index: str) -> None:
    """Delete an old generation; refused while ``alias`` points at it."""
    with es_errors(f"checking alias {alias!r} on {index!r}"):
        aliased = es.indices.exists_alias(name=alias, index=index)
    if aliased:
        raise EsIndexError(f"refusing to drop {index!r}: alias {alias!r} points at it")
    with es_errors(f"dropping index {index!r}"):
        es.indices.delete(index=index)
    log.info("dropped index %s", index)


def generation_record(es: Elasticsearch, index: str) -> dict[str, Any]:
    """The index ``_meta``: model, dim, and ``promoted_at`` once an alias has pointed at it."""
    return dict(index_mapping(es, index).get("_meta", {}))


def mark_promoted(es: Elasticsearch, index: str, when: str) -> None:
    """Record that an alias pointed at ``index`` (kept from the first time). ES replaces the whole
    ``_meta`` on update, so the full record is written."""
    meta = generation_record(es, index)
    if not meta.get("promoted_at"):
        with es_errors(f"recording the promotion of {index!r}"):
            es.indices.put_mapping(index=index, meta={**meta, "promoted_at": when})
