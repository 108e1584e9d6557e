"""Indices by alias: readers and writers name an alias (``keywords``); the physical index carries a
generation suffix (``keywords-g1``) so a full reindex can build ``-g2`` beside it and swap the alias
atomically. Mappings are explicit and ``_meta`` records which model the documents belong to; an
existing index that disagrees is refused with both sides named."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from elasticsearch import ApiError, Elasticsearch

from embedding_pipeline.stores.elasticsearch.errors import (
    EsIndexError,
    error_type_reason,
    es_errors,
    raise_clear,
)

log = logging.getLogger(__name__)

# _meta keys that say which documents an index holds; a mismatch means "build a new generation".
IDENTITY_META_KEYS = ("kind", "model_name", "model_version", "dim")
MAX_GENERATION_PROBES = 100


def physical_index_name(alias: str, generation: int) -> str:
    return f"{alias}-g{generation}"


@dataclass(frozen=True)
class IndexTarget:
    alias: str
    index: str
    created: bool


def write_index(es: Elasticsearch, alias: str) -> str | None:
    """The physical index the alias writes to, or None when the alias does not exist."""
    with es_errors(f"resolving alias {alias!r}"):
        if not es.indices.exists_alias(name=alias):
            return None
        indices = es.indices.get_alias(name=alias).body
    writers = [name for name, spec in indices.items() if spec["aliases"][alias].get("is_write_index")]
    if len(writers) == 1:
        return writers[0]
    if not writers and len(indices) == 1:
        return next(iter(indices))
    raise EsIndexError(
        f"alias {alias!r} points at {sorted(indices)} with write index(es) {sorted(writers)}; "
        "exactly one write index is required"
    )


def write_target(es: Elasticsearch, name: str) -> str | None:
    """Where a write to ``name`` lands: the alias's write index, or ``name`` itself when it is a
    concrete index (a generation being built, addressed by its physical name); None if neither."""
    index = write_index(es, name)
    if index is not None:
        return index
    with es_errors(f"checking for index {name!r}"):
        return name if es.indices.exists(index=name) else None


def index_mapping(es: Elasticsearch, index: str) -> dict[str, Any]:
    with es_errors(f"reading the mapping of {index!r}"):
        return es.indices.get_mapping(index=index).body[index]["mappings"]


def _mapping_problems(expected: Mapping[str, Any], actual: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Differences that break writes or searches: field type, analyzer, missing (sub)fields."""
    problems = []
    actual_props = actual.get("properties", {})
    for name, spec in expected.get("properties", {}).items():
        path = f"{prefix}{name}"
        have = actual_props.get(name)
        if have is None:
            problems.append(f"field {path!r} is missing (expected {spec.get('type', 'object')})")
            continue
        want_type, have_type = spec.get("type", "object"), have.get("type", "object")
        if want_type != have_type:
            problems.append(f"field {path!r} is {have_type}, expected {want_type}")
            continue
        have_analyzer = have.get("analyzer", "default")
        if "analyzer" in spec and spec["analyzer"] != have_analyzer:
            problems.append(f"field {path!r} uses analyzer {have_analyzer!r}, expected {spec['analyzer']!r}")
        if "fields" in spec:
            problems += _mapping_problems(
                {"properties": spec["fields"]}, {"properties": have.get("fields", {})}, f"{path}."
            )
        if "properties" in spec:
            problems += _mapping_problems(spec, have, f"{path}.")
    return problems


def _meta_problems(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    return [
        f"_meta.{key} is {actual.get(key)!r}, expected {expected[key]!r}"
        for key in IDENTITY_META_KEYS
        if key in expected and str(actual.get(key)) != str(expected[key])
    ]


def _missing_properties(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> dict[str, Any]:
    """The fields (and object sub-fields) of ``expected`` that ``actual`` lacks: a mapping ES can add."""
    missing: dict[str, Any] = {}
    actual_props = actual.get("properties", {})
    for name, spec in expected.get("properties", {}).items():
        have = actual_props.get(name)
        if have is None:
            missing[name] = spec
        elif "properties" in spec and spec.get("type", "object") == have.get("type", "object"):
            inner = _missing_properties(spec, have)
            if inner:
                missing[name] = {**({"type": spec["type"]} if "type" in spec else {}), "properties": inner}
    return missing


def _with_properties(actual: Mapping[str, Any], added: Mapping[str, Any]) -> dict[str, Any]:
    """``actual`` as it reads once ``added`` (from :func:`_missing_properties`) is put."""
    merged = {**actual, "properties": dict(actual.get("properties", {}))}
    for name, spec in added.items():
        have = merged["properties"].get(name)
        merged["properties"][name] = (
            spec if have is None else _with_properties(have, spec.get("properties", {}))
        )
    return merged


def check_index_compatible(es: Elasticsearch, alias: str, index: str, mappings: Mapping[str, Any]) -> None:
    """Raise :class:`EsIndexError` naming alias, index and every difference from ``mappings``.

    Fields this version writes that the index lacks (a newer release added them) are put into the
    index's mapping when that is the only difference: ES adds fields to a live mapping, and with
    ``dynamic: strict`` the writes would otherwise be refused. A changed type or analyzer is never
    patched in place (existing documents were indexed the old way): that needs a new generation.
    """
    actual = index_mapping(es, index)
    meta = _meta_problems(mappings.get("_meta", {}), actual.get("_meta", {}))
    missing = _missing_properties(mappings, actual)
    if not meta and missing and not _mapping_problems(mappings, _with_properties(actual, missing)):
        with es_errors(f"adding fields {sorted(missing)} to the mapping of {index!r}"):
            es.indices.put_mapping(index=index, properties=missing)
        log.info("alias %s -> index %s: added fields %s to its mapping", alias, index, sorted(missing))
        actual = index_mapping(es, index)
    problems = meta + _mapping_problems(mappings, actual)
    if problems:
        raise EsIndexError(
            f"alias {alias!r} -> index {index!r} is incompatible with what this run writes: "
            + "; ".join(problems)
            + ". Build a new generation and swap the alias, or point the run at another alias."
        )


def ensure_index(
    es: Elasticsearch, alias: str, mappings: Mapping[str, Any], *, settings: Mapping[str, Any] | None = None
) -> IndexTarget:
    """Make ``alias`` point (as write index) at a physical index with ``mappings``.

    Creates ``<alias>-g<N>`` with the alias in the same request, so the index never exists without
    it. Tasks racing to create the alias all try the same names in order (g1, g2, ...) instead of
    "one past the highest existing generation": a loser collides on the winner's name, finds the
    alias and validates it like any existing index. Picking "highest + 1" from a listing would let
    a task that lists just after the winner create a second generation, which ES refuses (two write
    indices) and the emulator silently accepts. A name taken by an index without the alias (an
    orphan, e.g. a reindex in progress) is skipped, not adopted.
    """
    for generation in range(1, MAX_GENERATION_PROBES + 1):
        current = write_index(es, alias)
        if current is not None:
            check_index_compatible(es, alias, current, mappings)
            return IndexTarget(alias, current, created=False)
        with es_errors(f"checking for an index named {alias!r}"):
            # HEAD /<alias> is true for an alias too: one created since the check above is not concrete.
            concrete = es.indices.exists(index=alias) and not es.indices.exists_alias(name=alias)
        if concrete:
            raise EsIndexError(
                f"{alias!r} is a concrete index, not an alias: readers must address an alias. Reindex it "
                f"into {physical_index_name(alias, 1)!r} with alias {alias!r}, then delete {alias!r}"
            )
        index = physical_index_name(alias, generation)
        try:
            es.indices.create(
                index=index,
                mappings=dict(mappings),
                settings=dict(settings or {}),
                aliases={alias: {"is_write_index": True}},
            )
        except ApiError as exc:
            kind, reason = error_type_reason(exc.body)
            if kind == "resource_already_exists_exception":
                continue  # the winner's index (the alias check above finds it) or an orphan
            if exc.meta.status == 400 and ("analyzer" in reason.lower() or "tokenizer" in reason.lower()):
                raise EsIndexError(
                    f"the cluster rejected the analysis settings of {index!r}: {kind}: {reason}. Stock "
                    "Elasticsearch ships 'cjk' and 'standard'; 'kuromoji' needs the analysis-kuromoji "
                    "plugin and 'icu_analyzer' the analysis-icu plugin"
                ) from None
            if write_index(es, alias) is not None:
                continue  # e.g. ES refusing a second write index: another task won; validate its index
            raise_clear(exc, f"creating index {index!r} for alias {alias!r}")
        except Exception as exc:
            raise_clear(exc, f"creating index {index!r} for alias {alias!r}")
        log.info("created index %s behind alias %s", index, alias)
        return IndexTarget(alias, index, created=True)
    raise EsIndexError(
        f"alias {alias!r} is missing and {physical_index_name(alias, 1)!r}..."
        f"{physical_index_name(alias, MAX_GENERATION_PROBES)!r} all exist without it; "
        "clean up orphaned generations"
    )


def refresh(es: Elasticsearch, alias: str) -> None:
    """Make every write so far visible to searches through ``alias`` (bulk loads turn refresh off)."""
    with es_errors(f"refreshing {alias!r}"):
        es.indices.refresh(index=alias)


def count_docs(es: Elasticsearch, alias: str) -> int:
    """Documents visible through ``alias`` after a refresh."""
    refresh(es, alias)
    with es_errors(f"counting documents in {alias!r}"):
        return int(es.count(index=alias)["count"])


def check_meta(es: Elasticsearch, alias: str, metadata: Mapping[str, Any], what: str) -> str:
    """The write index behind ``alias`` (or the index of that name), after checking that
    ``metadata`` (e.g. a staged chunk's) names the same model as the index's ``_meta``: documents
    of another model belong in another generation."""
    index = write_target(es, alias)
    if index is None:
        raise EsIndexError(f"alias {alias!r} does not exist; create its index first")
    have = index_mapping(es, index).get("_meta", {})
    problems = [
        f"{key}: chunk {metadata.get(key)!r}, index {have.get(key)!r}"
        for key in IDENTITY_META_KEYS
        if key in have and str(metadata.get(key)) != str(have[key])
    ]
    if problems:
        raise EsIndexError(
            f"{what} was embedded for another index than {index!r} (alias {alias!r}): " + "; ".join(problems)
        )
    return index
