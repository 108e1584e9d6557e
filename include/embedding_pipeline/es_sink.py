"""Elasticsearch sink: keyword documents from staged chunks, addressed by alias, with nothing lost.

The one module that talks to Elasticsearch. Three concerns, kept apart so the product index can
reuse them later:

* **Index management by alias.** Readers and writers name an alias (``keywords``); the physical
  index carries a generation suffix (``keywords-g1``) so a full reindex can build ``-g2`` beside it
  and swap the alias atomically. The mapping is explicit; ``_meta`` records which model the
  documents belong to, and an existing index that disagrees is refused with both sides named.
* **Bulk-load settings.** ``refresh_interval: -1`` and ``number_of_replicas: 0`` while loading,
  restored afterwards. Mapped tasks run concurrently and cannot know about each other, so the DAG
  calls :func:`begin_bulk_load` in a setup task and :func:`end_bulk_load` in a teardown task;
  :func:`bulk_load_settings` wraps both for single-process use.
* **Bulk indexing with item-level accounting.** Documents go through
  ``elasticsearch.helpers.streaming_bulk`` with ``_id`` = business key (re-running a chunk
  overwrites, never duplicates). Transient item failures (429/502/503/504,
  ``es_rejected_execution_exception``) and whole-request failures with those statuses are retried
  here with exponential backoff and jitter; permanent item failures go to the dead letter at once
  with ES's error type and reason. Connection failures are retried (bounded) and then raise: the
  Airflow task retry covers the process level. Every row read ends indexed or dead-lettered.

Client compatibility: elasticsearch-py 9 sends ``compatible-with=9`` media types, which a real ES 8
refuses (400 ``media_type_header_exception``); the target cluster is ES 9 (see the compose file).
The noida-db emulator reports 8.15.3 but accepts these headers. :func:`_raise_clear` turns the ES 8
refusal into an error saying what to do instead of a bare 400.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import json
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from elastic_transport import TlsError
from elasticsearch import ApiError, Elasticsearch
from elasticsearch import ConnectionError as EsConnectionError
from elasticsearch.helpers import streaming_bulk
from elasticsearch.serializer import JsonSerializer

from embedding_pipeline.errors import ConfigError, PipelineError
from embedding_pipeline.runs.accounting import StageResult
from embedding_pipeline.runs.dead_letter import DeadLetterWriter
from embedding_pipeline.runs.partitions import partition_version
from embedding_pipeline.runs.staging import iter_staged_rows, staged_metadata
from embedding_pipeline.runs.storage import as_path
from embedding_pipeline.settings import redact_url

log = logging.getLogger(__name__)

STAGE = "es_index"
DEFAULT_ANALYZER = "cjk"
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
RETRYABLE_ERROR_TYPES = frozenset({"es_rejected_execution_exception"})
# _meta keys that say which documents an index holds; a mismatch means "build a new generation".
IDENTITY_META_KEYS = ("kind", "model_name", "model_version", "dim")
KEYWORD_PAYLOAD_FIELDS = ("category", "lang", "updated_at", "dt")
MAX_ID_BYTES = 512  # ES refuses longer _ids (a real cluster fails the whole bulk request, not one item)
_BULK_LOAD_SETTINGS = ("refresh_interval", "number_of_replicas")


class EsError(PipelineError):
    """Elasticsearch refused an operation in a way an operator has to act on."""


class EsIndexError(EsError):
    """The index or alias is missing, malformed, or incompatible with what is being written."""


class EsUnavailableError(EsError):
    """The cluster cannot be reached (down, wrong address, TLS, or connection retries exhausted)."""


# --------------------------------------------------------------------------------------------------
# Settings and client
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EsSettings:
    """How to reach the cluster and how to bulk into it.

    Credentials in a URL (``https://user:pass@host``) are moved into ``username``/``password`` so
    that hosts can be logged as they are. ``repr`` shows whether a secret is set, never its value.
    """

    hosts: tuple[str, ...] = ("http://127.0.0.1:9200",)
    username: str | None = None
    password: str | None = None
    api_key: str | None = None
    ca_certs: str | None = None
    ssl_assert_fingerprint: str | None = None
    verify_certs: bool = True
    request_timeout: float = 30.0
    max_retries: int = 3
    bulk_chunk_docs: int = 1000
    bulk_max_bytes: int = 10 * 1024 * 1024
    keyword_alias: str = "keywords"
    product_alias: str = "products"

    def __post_init__(self) -> None:
        hosts = (self.hosts,) if isinstance(self.hosts, str) else tuple(self.hosts)
        cleaned: list[str] = []
        username, password = self.username, self.password
        for host in hosts:
            host = host.strip()
            if not host:
                continue
            if "://" not in host:
                raise ConfigError(
                    f"Elasticsearch host {redact_url(host)!r} needs a scheme (http:// or https://)"
                )
            parts = urlsplit(host)
            if parts.username is not None:
                username = username or parts.username
                password = password or parts.password
            cleaned.append(redact_url(host))
        if not cleaned:
            raise ConfigError("at least one Elasticsearch host is required (ES_URL)")
        object.__setattr__(self, "hosts", tuple(cleaned))
        object.__setattr__(self, "username", username)
        object.__setattr__(self, "password", password)
        if self.request_timeout <= 0 or self.max_retries < 0:
            raise ConfigError("request_timeout must be > 0 and max_retries >= 0")
        if self.bulk_chunk_docs < 1 or self.bulk_max_bytes < 1024:
            raise ConfigError("bulk_chunk_docs must be >= 1 and bulk_max_bytes >= 1024")

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("password", "api_key"):
                value = "<set>" if value else None
            shown.append(f"{f.name}={value!r}")
        return f"EsSettings({', '.join(shown)})"

    __str__ = __repr__

    @property
    def uses_tls(self) -> bool:
        return any(host.startswith("https://") for host in self.hosts)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EsSettings:
        """Defaults overridden by ``ES_URL`` (comma separated), ``ES_USERNAME``, ``ES_PASSWORD``,
        ``ES_API_KEY``, ``ES_CA_CERTS``, ``ES_FINGERPRINT`` and the non-secret knobs
        ``ES_VERIFY_CERTS``, ``ES_REQUEST_TIMEOUT``, ``ES_MAX_RETRIES``, ``ES_BULK_CHUNK_DOCS``,
        ``ES_BULK_MAX_BYTES``, ``ES_KEYWORD_ALIAS``, ``ES_PRODUCT_ALIAS``."""
        env = os.environ if environ is None else environ
        base = cls()
        overrides: dict[str, Any] = {}
        if env.get("ES_URL"):
            overrides["hosts"] = tuple(env["ES_URL"].split(","))
        for key, name in (
            ("ES_USERNAME", "username"),
            ("ES_PASSWORD", "password"),
            ("ES_API_KEY", "api_key"),
            ("ES_CA_CERTS", "ca_certs"),
            ("ES_FINGERPRINT", "ssl_assert_fingerprint"),
            ("ES_KEYWORD_ALIAS", "keyword_alias"),
            ("ES_PRODUCT_ALIAS", "product_alias"),
        ):
            if env.get(key):
                overrides[name] = env[key]
        if env.get("ES_VERIFY_CERTS"):
            overrides["verify_certs"] = env["ES_VERIFY_CERTS"].strip().lower() in ("1", "true", "yes")
        for key, name, kind in (
            ("ES_REQUEST_TIMEOUT", "request_timeout", float),
            ("ES_MAX_RETRIES", "max_retries", int),
            ("ES_BULK_CHUNK_DOCS", "bulk_chunk_docs", int),
            ("ES_BULK_MAX_BYTES", "bulk_max_bytes", int),
        ):
            if env.get(key):
                try:
                    overrides[name] = kind(env[key])
                except ValueError as exc:
                    raise ConfigError(f"{key}={env[key]!r} is not a valid {kind.__name__}") from exc
        return replace(base, **overrides)


def make_client(settings: EsSettings) -> Elasticsearch:
    """An ``Elasticsearch`` client for ``settings``; TLS options are passed only for https hosts.

    The transport retries whole requests on 429/502/503/504 and timeouts for ordinary calls; bulk
    calls switch that off and retry per item with backoff instead (see :func:`bulk_index`).
    """
    kwargs: dict[str, Any] = {
        "request_timeout": settings.request_timeout,
        "max_retries": settings.max_retries,
        "retry_on_timeout": True,
    }
    if settings.api_key:
        kwargs["api_key"] = settings.api_key
    elif settings.username:
        kwargs["basic_auth"] = (settings.username, settings.password or "")
    if settings.uses_tls:
        kwargs["verify_certs"] = settings.verify_certs
        if settings.ca_certs:
            kwargs["ca_certs"] = settings.ca_certs
        if settings.ssl_assert_fingerprint:
            kwargs["ssl_assert_fingerprint"] = settings.ssl_assert_fingerprint
    log.info("Elasticsearch client for %s", ", ".join(settings.hosts))
    return Elasticsearch(list(settings.hosts), **kwargs)


@contextmanager
def open_es(settings: EsSettings | None = None) -> Iterator[Elasticsearch]:
    """``make_client`` (default: settings from the environment) that always closes its connections."""
    es = make_client(settings or EsSettings.from_env())
    try:
        yield es
    finally:
        es.close()


# --------------------------------------------------------------------------------------------------
# Errors from the client, made readable
# --------------------------------------------------------------------------------------------------


def _error_type_reason(body: Any) -> tuple[str, str]:
    """(type, reason) of an ES error body (``{"error": {...}}``, the inner dict, or a string)."""
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        reason = str(error.get("reason", ""))
        caused = error.get("caused_by")
        if isinstance(caused, dict) and caused.get("reason") and caused.get("reason") not in reason:
            reason = f"{reason} (caused by {caused.get('type')}: {caused.get('reason')})"
        return str(error.get("type", "unknown")), reason
    return "unknown", str(error)


def _raise_clear(exc: Exception, doing: str) -> NoReturn:
    """Re-raise a client exception as a PipelineError that says what failed and what to do."""
    if isinstance(exc, ApiError):
        kind, reason = _error_type_reason(exc.body)
        if kind == "media_type_header_exception":
            raise EsError(
                f"{doing}: the cluster refused elasticsearch-py 9's compatibility headers ({reason}); "
                "this pipeline needs Elasticsearch 9 (or pin elasticsearch<9 for an ES 8 cluster)"
            ) from None
        if exc.meta.status in (401, 403):
            raise EsError(
                f"{doing}: not authorised ({exc.meta.status} {kind}); check ES_USERNAME/ES_PASSWORD "
                "or ES_API_KEY and the user's index privileges"
            ) from None
        raise EsError(f"{doing}: {exc.meta.status} {kind}: {reason}") from None
    if isinstance(exc, TlsError):
        raise EsUnavailableError(f"{doing}: TLS failed ({exc}); check ES_CA_CERTS / ES_FINGERPRINT") from None
    if isinstance(exc, EsConnectionError):
        raise EsUnavailableError(f"{doing}: cannot reach Elasticsearch ({exc})") from None
    raise exc


# --------------------------------------------------------------------------------------------------
# Mappings and documents
# --------------------------------------------------------------------------------------------------


def keyword_mappings(
    *, model_name: str, model_version: int, dim: int, analyzer: str = DEFAULT_ANALYZER
) -> dict[str, Any]:
    """Explicit mapping of the keyword index.

    ``dynamic: strict`` rather than ``false``: :func:`keyword_document` is the only writer and
    picks known fields, so an unknown field can only be a code change that forgot the mapping.
    Strict makes that fail loudly on the first item (dead letter ``es_mapping_error``) instead of
    storing an unindexed field that searches silently miss, and keeps every generation's
    mapping identical to this function, which the alias swap of a full reindex relies on.

    ``dt`` is a ``keyword``: it is a partition label, filtered by equality, and ISO dates sort
    lexicographically so range filters still work. ``keyword.raw`` serves exact match and
    aggregations; ``ignore_above`` keeps an overlong keyword indexable as text.
    """
    return {
        "dynamic": "strict",
        "_meta": {
            "kind": "keyword",
            "model_name": model_name,
            "model_version": int(model_version),
            "dim": int(dim),
        },
        "properties": {
            "keyword_id": {"type": "keyword"},
            "keyword": {
                "type": "text",
                "analyzer": analyzer,
                "fields": {"raw": {"type": "keyword", "ignore_above": 512}},
            },
            "dt": {"type": "keyword"},
            "category": {"type": "keyword"},
            "lang": {"type": "keyword"},
            "updated_at": {"type": "date"},
            "model_name": {"type": "keyword"},
            "model_version": {"type": "integer"},
            "content_hash": {"type": "keyword"},
            "indexed_at": {"type": "date"},
        },
    }


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


def keyword_document(
    keyword_id: str,
    keyword: str,
    content_hash: str,
    payload: Mapping[str, Any],
    *,
    model_name: str,
    model_version: int,
    indexed_at: str,
) -> dict[str, Any]:
    """The ``_source`` of one keyword document. Payload fields that are missing or None are left out."""
    doc: dict[str, Any] = {
        "keyword_id": keyword_id,
        "keyword": keyword,
        "model_name": model_name,
        "model_version": int(model_version),
        "content_hash": content_hash,
        "indexed_at": indexed_at,
    }
    for name in KEYWORD_PAYLOAD_FIELDS:
        value = payload.get(name)
        if value is not None:
            doc[name] = normalise_date(value) if name == "updated_at" else value
    return doc


# --------------------------------------------------------------------------------------------------
# Index management by alias
# --------------------------------------------------------------------------------------------------


def physical_index_name(alias: str, generation: int) -> str:
    return f"{alias}-g{generation}"


@dataclass(frozen=True)
class IndexTarget:
    alias: str
    index: str
    created: bool


def write_index(es: Elasticsearch, alias: str) -> str | None:
    """The physical index the alias writes to, or None when the alias does not exist."""
    try:
        if not es.indices.exists_alias(name=alias):
            return None
        indices = es.indices.get_alias(name=alias).body
    except Exception as exc:
        _raise_clear(exc, f"resolving alias {alias!r}")
    writers = [name for name, spec in indices.items() if spec["aliases"][alias].get("is_write_index")]
    if len(writers) == 1:
        return writers[0]
    if not writers and len(indices) == 1:
        return next(iter(indices))
    raise EsIndexError(
        f"alias {alias!r} points at {sorted(indices)} with write index(es) {sorted(writers)}; "
        "exactly one write index is required"
    )


def _index_mapping(es: Elasticsearch, index: str) -> dict[str, Any]:
    try:
        return es.indices.get_mapping(index=index).body[index]["mappings"]
    except Exception as exc:
        _raise_clear(exc, f"reading the mapping of {index!r}")


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
    actual = _index_mapping(es, index)
    meta = _meta_problems(mappings.get("_meta", {}), actual.get("_meta", {}))
    missing = _missing_properties(mappings, actual)
    if not meta and missing and not _mapping_problems(mappings, _with_properties(actual, missing)):
        try:
            es.indices.put_mapping(index=index, properties=missing)
        except Exception as exc:
            _raise_clear(exc, f"adding fields {sorted(missing)} to the mapping of {index!r}")
        log.info("alias %s -> index %s: added fields %s to its mapping", alias, index, sorted(missing))
        actual = _index_mapping(es, index)
    problems = meta + _mapping_problems(mappings, actual)
    if problems:
        raise EsIndexError(
            f"alias {alias!r} -> index {index!r} is incompatible with what this run writes: "
            + "; ".join(problems)
            + ". Build a new generation and swap the alias, or point the run at another alias."
        )


MAX_GENERATION_PROBES = 100


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
        try:
            # HEAD /<alias> is true for an alias too: one created since the check above is not concrete.
            concrete = es.indices.exists(index=alias) and not es.indices.exists_alias(name=alias)
        except Exception as exc:
            _raise_clear(exc, f"checking for an index named {alias!r}")
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
            kind, reason = _error_type_reason(exc.body)
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
            _raise_clear(exc, f"creating index {index!r} for alias {alias!r}")
        except Exception as exc:
            _raise_clear(exc, f"creating index {index!r} for alias {alias!r}")
        log.info("created index %s behind alias %s", index, alias)
        return IndexTarget(alias, index, created=True)
    raise EsIndexError(
        f"alias {alias!r} is missing and {physical_index_name(alias, 1)!r}..."
        f"{physical_index_name(alias, MAX_GENERATION_PROBES)!r} all exist without it; "
        "clean up orphaned generations"
    )


def ensure_keyword_index(
    es: Elasticsearch,
    alias: str,
    *,
    model_name: str,
    model_version: int,
    dim: int,
    analyzer: str = DEFAULT_ANALYZER,
    settings: Mapping[str, Any] | None = None,
) -> IndexTarget:
    """The keyword index behind ``alias``, created if missing, refused if incompatible.

    Call it once per run in a setup task (mapped tasks may also call it: creation is race-safe).
    """
    mappings = keyword_mappings(
        model_name=model_name, model_version=model_version, dim=dim, analyzer=analyzer
    )
    return ensure_index(es, alias, mappings, settings=settings)


def count_docs(es: Elasticsearch, alias: str) -> int:
    """Documents visible through ``alias`` after a refresh (bulk loads turn refresh off)."""
    try:
        es.indices.refresh(index=alias)
        return int(es.count(index=alias)["count"])
    except Exception as exc:
        _raise_clear(exc, f"counting documents in {alias!r}")


# --------------------------------------------------------------------------------------------------
# Bulk-load settings
# --------------------------------------------------------------------------------------------------


def _put_meta(es: Elasticsearch, index: str, meta: dict[str, Any]) -> None:
    # The whole _meta is written every time: ES replaces _meta on update (the emulator merges).
    es.indices.put_mapping(index=index, meta=meta)


def begin_bulk_load(es: Elasticsearch, alias: str) -> dict[str, Any]:
    """Turn refresh off and replicas to 0 on the alias's write index; return what to restore.

    The result is small and JSON-able (XCom): ``{"index", "refresh_interval", "number_of_replicas"}``;
    ``None`` means "not set explicitly" and restores the cluster default.

    The previous values are also recorded in the index ``_meta`` (``bulk_load``) before anything is
    changed. A retried setup task, or a second run overlapping the first, then finds the load
    already begun and returns the *original* values instead of the bulk values it would read from
    the settings, so no teardown can leave an index with refresh switched off for good.
    """
    index = write_index(es, alias)
    if index is None:
        raise EsIndexError(f"alias {alias!r} does not exist; create it with ensure_keyword_index first")
    try:
        meta = dict(_index_mapping(es, index).get("_meta", {}))
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
    except PipelineError:
        raise
    except Exception as exc:
        _raise_clear(exc, f"switching {index!r} to bulk-load settings")
    return {"index": index, **previous}


def end_bulk_load(es: Elasticsearch, alias: str, previous: Mapping[str, Any] | None = None) -> None:
    """Restore the settings :func:`begin_bulk_load` replaced, clear the marker, refresh.

    ``previous`` is begin's return value; without it the values recorded in ``_meta`` are used
    (a teardown whose setup's XCom is lost still restores). Restoring twice is harmless.
    """
    index = (previous or {}).get("index") or write_index(es, alias)
    if index is None:
        raise EsIndexError(f"alias {alias!r} does not exist; nothing to restore")
    try:
        meta = dict(_index_mapping(es, index).get("_meta", {}))
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
    except Exception as exc:
        _raise_clear(exc, f"restoring settings of {index!r} after the bulk load")
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
    index = write_index(es, alias)
    if index is None:
        raise EsIndexError(f"alias {alias!r} does not exist")
    flat = es.indices.get_settings(index=index, flat_settings=True).body[index]["settings"]
    return {name: flat.get(f"index.{name}") for name in _BULK_LOAD_SETTINGS}


# --------------------------------------------------------------------------------------------------
# Bulk indexing
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BulkOptions:
    """Request sizes and retry policy of :func:`bulk_index`."""

    chunk_docs: int = 1000
    max_bytes: int = 10 * 1024 * 1024
    max_retries: int = 5
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    request_timeout: float | None = None
    # "external_gte" with a per-document version: a write older than the stored document is
    # refused by ES (409) and counted as superseded, not dead-lettered (see product_documents).
    version_type: str | None = None

    def backoff(self, round_no: int) -> float:
        """Exponential backoff with equal jitter: half fixed, half random (spreads retrying tasks)."""
        ceiling = min(self.backoff_max_s, self.backoff_initial_s * 2 ** max(round_no - 1, 0))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


@dataclass
class BulkCounts:
    rows_in: int = 0
    indexed: int = 0
    dead_lettered: int = 0
    created: int = 0
    updated: int = 0
    rounds: int = 0
    retried_items: int = 0
    connection_retries: int = 0
    superseded: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)


@dataclass
class _Pending:
    doc_id: str
    source: dict[str, Any]
    version: int | None = None
    rejections: int = 0


# (doc_id, source) or (doc_id, source, external version)
BulkDoc = tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], int]


RETRY = "retry"


def item_failure_reason(status: int, error: Any) -> str:
    """``"retry"`` for transient failures, else the dead-letter reason code of a failed bulk item."""
    kind, _ = _error_type_reason(error)
    if status in RETRYABLE_STATUSES or kind in RETRYABLE_ERROR_TYPES:
        return RETRY
    if "mapping" in kind or "parsing" in kind:
        return "es_mapping_error"
    if status == 409 or kind == "version_conflict_engine_exception":
        return "es_version_conflict"
    return "es_rejected"


def _describe(status: int, error: Any) -> str:
    kind, reason = _error_type_reason(error)
    return f"{status} {kind}: {reason}"


def bulk_index(
    es: Elasticsearch,
    alias: str,
    batches: Iterable[list[BulkDoc]],
    dead_letters: DeadLetterWriter,
    options: BulkOptions = BulkOptions(),
    sleep: Callable[[float], None] = time.sleep,
) -> BulkCounts:
    """Index ``(doc_id, source[, version])`` batches into ``alias``; every document ends indexed,
    superseded (only with ``options.version_type``) or dead-lettered.

    Each batch is sent with ``streaming_bulk`` (split by ``chunk_docs``/``max_bytes``), the
    helper's own retries off, and then re-sent for the items that failed transiently, until they
    succeed or ``max_retries`` is used up. ``require_alias`` makes ES refuse the write instead of
    auto-creating a concrete index with a dynamic mapping when the alias is missing.
    """
    overrides: dict[str, Any] = {"max_retries": 0, "retry_on_status": ()}
    if options.request_timeout is not None:  # None would mean "no timeout" to the client, not "default"
        overrides["request_timeout"] = options.request_timeout
    client = es.options(**overrides)
    counts = BulkCounts()
    for batch in batches:
        pending: list[_Pending] = []
        for doc_id, source, *version in batch:
            counts.rows_in += 1
            size = len(doc_id.encode("utf-8"))
            if not 0 < size <= MAX_ID_BYTES:
                _dead(
                    dead_letters,
                    counts,
                    doc_id,
                    "es_invalid_id",
                    f"_id is {size} bytes (1..{MAX_ID_BYTES})",
                    source,
                    1,
                )
                continue
            if options.version_type and not version:
                raise ValueError(f"version_type {options.version_type!r} needs a version for every document")
            pending.append(_Pending(doc_id, source, version[0] if version else None))
        _send_with_retries(client, alias, pending, dead_letters, options, counts, sleep)
    return counts


def _dead(
    dead: DeadLetterWriter, counts: BulkCounts, doc_id: str, reason: str, error: str, row: dict, attempt: int
) -> None:
    dead.add(doc_id, reason, error, row, attempt=attempt)
    counts.dead_lettered += 1
    counts.by_reason[reason] += 1


def _send_with_retries(
    client: Elasticsearch,
    alias: str,
    pending: list[_Pending],
    dead: DeadLetterWriter,
    options: BulkOptions,
    counts: BulkCounts,
    sleep: Callable[[float], None],
) -> None:
    connection_failures = 0
    round_no = 0
    while pending:
        round_no += 1
        retry: list[_Pending] = []
        answered = 0
        actions = (_action(alias, p, options.version_type) for p in pending)
        counts.rounds += 1
        try:
            results = streaming_bulk(
                client,
                actions,
                chunk_size=options.chunk_docs,
                max_chunk_bytes=options.max_bytes,
                raise_on_error=False,
                raise_on_exception=False,
                max_retries=0,
                require_alias=True,
            )
            for ok, item in results:
                doc = pending[answered]
                answered += 1
                info = next(iter(item.values()))
                status = int(info.get("status", 500))
                if ok:
                    counts.indexed += 1
                    if info.get("result") == "created":
                        counts.created += 1
                    else:
                        counts.updated += 1
                    continue
                error = info.get("error")
                if options.version_type and status == 409:
                    counts.superseded += 1  # a newer version of this document is already stored
                    continue
                if "exception" in info and item_failure_reason(status, error) != RETRY:
                    # The whole request failed (auth, a proxy, a malformed body): not about this item.
                    _raise_clear(info["exception"], f"bulk request to alias {alias!r}")
                if _is_missing_alias(error):
                    raise EsIndexError(
                        f"alias {alias!r} does not exist (bulk refused with {_describe(status, error)}); "
                        "create it with ensure_keyword_index first"
                    )
                reason = item_failure_reason(status, error)
                if reason == RETRY:
                    doc.rejections += 1
                    if doc.rejections > options.max_retries:
                        _dead(
                            dead,
                            counts,
                            doc.doc_id,
                            "es_retries_exhausted",
                            _describe(status, error),
                            doc.source,
                            doc.rejections,
                        )
                    else:
                        retry.append(doc)
                else:
                    _dead(
                        dead,
                        counts,
                        doc.doc_id,
                        reason,
                        _describe(status, error),
                        doc.source,
                        doc.rejections + 1,
                    )
        except TlsError as exc:
            _raise_clear(exc, f"bulk request to alias {alias!r}")
        except EsConnectionError as exc:
            connection_failures += 1
            counts.connection_retries += 1
            if connection_failures > options.max_retries:
                raise EsUnavailableError(
                    f"bulk to alias {alias!r}: cannot reach Elasticsearch after {connection_failures} "
                    f"attempts ({exc}); {len(pending) - answered} document(s) of this batch not sent"
                ) from None
            log.warning(
                "bulk to %s: connection failed (%s), retrying %d docs", alias, exc, len(pending) - answered
            )
            retry.extend(pending[answered:])
        if retry:
            counts.retried_items += len(retry)
            delay = options.backoff(round_no)
            log.warning("bulk to %s: retrying %d document(s) in %.2fs", alias, len(retry), delay)
            sleep(delay)
        pending = retry


# The client's own JSON options and fallbacks (dates, numpy, ...), but one encoder for every
# document: the client's json.dumps(..., default=...) builds a new encoder per call. The bulk
# helpers send a bytes ``_source`` as it is; ``pending.source`` stays a dict for the dead letter.
_encode_source = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), default=JsonSerializer().default
).encode


def _action(alias: str, pending: _Pending, version_type: str | None) -> dict[str, Any]:
    source = _encode_source(pending.source).encode("utf-8", "surrogatepass")
    action = {"_op_type": "index", "_index": alias, "_id": pending.doc_id, "_source": source}
    if version_type:
        action.update(version=pending.version, version_type=version_type)
    return action


def _is_missing_alias(error: Any) -> bool:
    kind, reason = _error_type_reason(error)
    return kind == "index_not_found_exception" or ("require_alias" in reason)


# --------------------------------------------------------------------------------------------------
# The mapped ES task
# --------------------------------------------------------------------------------------------------


def _check_chunk_matches_index(
    es: Elasticsearch, alias: str, metadata: Mapping[str, str], path: Path
) -> None:
    index = write_index(es, alias)
    if index is None:
        raise EsIndexError(f"alias {alias!r} does not exist; create it with ensure_keyword_index first")
    have = _index_mapping(es, index).get("_meta", {})
    problems = [
        f"{key}: chunk {metadata.get(key)!r}, index {have.get(key)!r}"
        for key in IDENTITY_META_KEYS
        if key in have and str(metadata.get(key)) != str(have[key])
    ]
    if problems:
        raise EsIndexError(
            f"staged chunk {path.name} was embedded for another index than {index!r} (alias {alias!r}): "
            + "; ".join(problems)
        )


def index_keyword_chunk(
    es: Elasticsearch,
    alias: str,
    staged_path: Path | str,
    dead_letters: DeadLetterWriter,
    *,
    chunk_docs: int = 1000,
    max_bytes: int = 10 * 1024 * 1024,
    max_retries: int = 5,
    backoff_initial_s: float = 0.5,
    backoff_max_s: float = 30.0,
    request_timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> StageResult:
    """Index one staged keyword chunk into ``alias``; flush the dead letters; return the accounting.

    The chunk's model (staged metadata) must match the index ``_meta``: documents of another model
    belong in another generation. ``_id`` is the keyword id, so a re-run overwrites; the version is
    the row's ``dt`` (:func:`partition_version`), so a keyword id found on several dates keeps its
    latest date's document whatever order chunks are written in (the older write counts as indexed,
    ``superseded``).
    """
    started = time.monotonic()
    path = as_path(str(staged_path))
    metadata = staged_metadata(path)
    _check_chunk_matches_index(es, alias, metadata, path)
    model_name, model_version = metadata["model_name"], int(metadata["model_version"])
    indexed_at = datetime.now(UTC).isoformat()

    version_of = functools.cache(partition_version)  # a chunk holds one dt: parse it once, not per row

    def batches() -> Iterator[list[BulkDoc]]:
        for staged in iter_staged_rows(path, chunk_docs):  # ES stores no vectors: not read
            yield [
                (
                    doc_id,
                    keyword_document(
                        doc_id,
                        text,
                        chash,
                        payload,
                        model_name=model_name,
                        model_version=model_version,
                        indexed_at=indexed_at,
                    ),
                    version_of(payload["dt"]),
                )
                for doc_id, text, chash, payload in zip(
                    staged.ids, staged.texts, staged.content_hashes, staged.payloads, strict=True
                )
            ]

    options = BulkOptions(
        chunk_docs,
        max_bytes,
        max_retries,
        backoff_initial_s,
        backoff_max_s,
        request_timeout,
        version_type="external_gte",
    )
    counts = bulk_index(es, alias, batches(), dead_letters, options, sleep)
    result = StageResult(
        stage=STAGE,
        chunk=path.stem,
        rows_in=counts.rows_in,
        indexed=counts.indexed + counts.superseded,
        dead_lettered=counts.dead_lettered,
        dead_letters_by_reason=dict(counts.by_reason),
        dead_letter_path=dead_letters.flush(),
        seconds=round(time.monotonic() - started, 3),
        extra={
            "created": counts.created,
            "updated": counts.updated,
            "superseded": counts.superseded,
            "bulk_rounds": counts.rounds,
            "retried_items": counts.retried_items,
            "connection_retries": counts.connection_retries,
        },
    )
    if not result.balanced:  # a bug here, never data: fail loudly rather than report a wrong count
        raise PipelineError(f"ES accounting does not add up for {path.name}: {result.to_xcom()}")
    log.info(
        "es_index %s: %d in, %d indexed (%d created), %d dead-lettered %s in %.1fs",
        path.stem,
        result.rows_in,
        result.indexed,
        counts.created,
        result.dead_lettered,
        result.dead_letters_by_reason,
        result.seconds,
    )
    return result


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------

MAX_RESULT_WINDOW = 10_000  # ES's default index.max_result_window: one search returns no more hits
# Ids per request when sampling: few large pages, because the noida-db emulator scans every document
# on each request (~0.5 s per request at 20k documents, ~2.7 s at 50k); ES serves doc values cheaply.
SAMPLE_PAGE_SIZE = MAX_RESULT_WINDOW


def _raise_read_error(exc: Exception, alias: str, doing: str) -> NoReturn:
    """``_raise_clear``, but a missing alias is named as such rather than as a bare 404."""
    if isinstance(exc, ApiError) and _error_type_reason(exc.body)[0] == "index_not_found_exception":
        raise EsIndexError(
            f"{doing}: alias {alias!r} does not exist on this cluster; check the name, or run the DAG "
            "that builds it first"
        ) from None
    _raise_clear(exc, doing)


def _check_size(name: str, value: int) -> None:
    if not 1 <= value <= MAX_RESULT_WINDOW:
        raise ConfigError(f"{name} must be between 1 and {MAX_RESULT_WINDOW}, got {value}")


def search_keywords(es: Elasticsearch, alias: str, text: str, size: int = 10) -> list[dict[str, Any]]:
    """Keyword documents matching ``text`` (a ``match`` query on the analysed ``keyword``), best first.

    Each result is the document's ``_source`` plus its ``_score``, so callers need no knowledge of
    the hit envelope. A match query (not ``keyword.raw``) because users type fragments: the ``cjk``
    analyzer's bigrams let ``ラーメン`` find ``東京 ラーメン 人気``.
    """
    _check_size("size", size)
    try:
        response = es.search(index=alias, query={"match": {"keyword": text}}, size=size)
    except Exception as exc:
        _raise_read_error(exc, alias, f"searching {alias!r} for {text!r}")
    return [{**hit["_source"], "_score": hit["_score"]} for hit in response["hits"]["hits"]]


def products_linked_to(
    es: Elasticsearch, alias: str, keyword_id: str, size: int = 10
) -> tuple[int, list[dict[str, Any]]]:
    """Products whose nested ``keywords`` hold ``keyword_id``, best link score first, and how many.

    The reverse of a product's list, and what the nested mapping is for: a ``nested`` query scores
    each product by its link's stored score (``function_score`` on ``keywords.score``, where a
    nested sort is not available everywhere) and ``inner_hits`` returns the matching link. Each
    result is the product's ``_source`` without its list, plus ``score`` and ``rank`` of the link.
    """
    _check_size("size", size)
    if not keyword_id:
        raise ConfigError("a keyword id is required")
    query = {
        "nested": {
            "path": "keywords",
            "score_mode": "max",
            "inner_hits": {"size": 1},
            "query": {
                "function_score": {
                    "query": {"term": {"keywords.keyword_id": keyword_id}},
                    "field_value_factor": {"field": "keywords.score"},
                    "boost_mode": "replace",
                }
            },
        }
    }
    try:
        response = es.search(
            index=alias, query=query, size=size, source_excludes=["keywords"], track_total_hits=True
        )
    except Exception as exc:
        _raise_read_error(exc, alias, f"searching {alias!r} for products linked to {keyword_id!r}")
    products = []
    for hit in response["hits"]["hits"]:
        link = hit["inner_hits"]["keywords"]["hits"]["hits"][0]["_source"]
        products.append({**hit["_source"], "score": link.get("score"), "rank": link.get("rank")})
    return int(response["hits"]["total"]["value"]), products


def get_document(es: Elasticsearch, alias: str, doc_id: str) -> dict[str, Any] | None:
    """The ``_source`` of document ``doc_id`` behind ``alias``, or None when there is no such document.

    A real-time GET, so a document is found right after it was written even while a bulk load has
    refresh switched off. "No such document" and "no such alias" are both 404s; only the first is
    None, the second raises :class:`EsIndexError`.
    """
    if not doc_id:
        raise ConfigError("a document id is required")
    try:
        return es.get(index=alias, id=doc_id)["_source"]
    except Exception as exc:
        if (
            isinstance(exc, ApiError)
            and exc.meta.status == 404
            and _error_type_reason(exc.body)[0] != "index_not_found_exception"
        ):
            return None
        _raise_read_error(exc, alias, f"reading document {doc_id!r} from {alias!r}")


def _sample_key(seed: int, value: str) -> bytes:
    return hashlib.blake2b(f"{seed}\x1f{value}".encode(), digest_size=8).digest()


def _iter_field_values(es: Elasticsearch, alias: str, field_name: str, page_size: int) -> Iterator[str]:
    """Every distinct value of a unique keyword field, in order, paged with ``search_after``.

    Sorting on the field itself makes each page start exactly after the previous one, without a
    point-in-time; documents written during the scan may or may not be seen.
    """
    after: list[Any] | None = None
    previous = None
    while True:
        try:
            response = es.search(
                index=alias,
                query={"exists": {"field": field_name}},
                sort=[{field_name: "asc"}],
                size=page_size,
                source=False,
                **({"search_after": after} if after is not None else {}),
            )
        except Exception as exc:
            _raise_read_error(exc, alias, f"listing {field_name!r} values of {alias!r}")
        hits = response["hits"]["hits"]
        for hit in hits:
            value = hit["sort"][0]
            if value != previous:  # an alias over two generations may hold a document twice
                yield value
            previous = value
        if len(hits) < page_size:
            return
        after = hits[-1]["sort"]


def sample_documents(
    es: Elasticsearch,
    alias: str,
    n: int,
    seed: int,
    *,
    id_field: str = "product_id",
    page_size: int = SAMPLE_PAGE_SIZE,
) -> list[dict[str, Any]]:
    """A reproducible random sample of ``n`` documents (all of them when there are fewer), as ``_source``.

    The sample is the ``n`` documents whose ``id_field`` value has the smallest hash with ``seed``:
    the same seed gives the same documents, in the same order, on any cluster and after any reindex,
    update or shard change. ``function_score``/``random_score`` was the first choice but cannot
    promise that: its scores mix in index name and shard id (a new generation reshuffles), with
    ``_seq_no`` every update reshuffles, and the noida-db emulator ignores seed and field (it scores
    documents by insertion order, so every seed gave the newest ``n``). The price is one pass over the
    field's doc values (ids only, ``page_size`` per request) with memory bounded by ``n``.
    """
    _check_size("sample size", n)
    chosen = heapq.nsmallest(
        n,
        _iter_field_values(es, alias, id_field, page_size),
        key=lambda value: _sample_key(seed, str(value)),
    )
    if not chosen:
        return []
    try:
        response = es.search(index=alias, query={"terms": {id_field: chosen}}, size=len(chosen))
    except Exception as exc:
        _raise_read_error(exc, alias, f"fetching {len(chosen)} sampled documents from {alias!r}")
    by_id = {hit["_source"].get(id_field): hit["_source"] for hit in response["hits"]["hits"]}
    return [by_id[value] for value in chosen if value in by_id]
