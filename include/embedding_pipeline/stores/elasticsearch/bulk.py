"""Bulk indexing with item-level accounting.

Documents go through ``elasticsearch.helpers.streaming_bulk`` with ``_id`` = business key
(re-running a chunk overwrites, never duplicates). Transient item failures (429/502/503/504,
``es_rejected_execution_exception``) and whole-request failures with those statuses are retried
here with exponential backoff and jitter; permanent item failures go to the dead letter at once
with ES's error type and reason. Connection failures are retried (bounded) and then raise: the
Airflow task retry covers the process level. Every document ends indexed, superseded or
dead-lettered.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from elastic_transport import TlsError
from elasticsearch import ConnectionError as EsConnectionError
from elasticsearch import Elasticsearch
from elasticsearch.helpers import streaming_bulk
from elasticsearch.serializer import JsonSerializer

from embedding_pipeline.retry import RetryPolicy
from embedding_pipeline.runs.dead_letter import DeadLetterWriter
from embedding_pipeline.stores.elasticsearch.documents import MAX_ID_BYTES
from embedding_pipeline.stores.elasticsearch.errors import (
    EsIndexError,
    EsUnavailableError,
    error_type_reason,
    es_errors,
    raise_clear,
)

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
RETRYABLE_ERROR_TYPES = frozenset({"es_rejected_execution_exception"})


@dataclass(frozen=True)
class BulkOptions:
    """Request sizes and retry policy of :func:`bulk_index`."""

    chunk_docs: int = 1000
    max_bytes: int = 10 * 1024 * 1024
    # Per item: a document refused transiently more than max_retries times is dead-lettered; per
    # request: more than max_retries connection failures in a row fail the task.
    retry: RetryPolicy = RetryPolicy(max_retries=5, backoff_initial_s=0.5, backoff_max_s=30.0)
    request_timeout: float | None = None
    # "external_gte" with a per-document version: a write older than the stored document is
    # refused by ES (409) and counted as superseded, not dead-lettered (see stages/products/documents.py).
    version_type: str | None = None


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
    deleted: int = 0  # delete actions done; ``absent`` of them found no document
    absent: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)


@dataclass
class _Pending:
    doc_id: str
    source: dict[str, Any] | None  # None: delete the document
    version: int | None = None
    rejections: int = 0


# (doc_id, source) or (doc_id, source, external version); a None source deletes the document
BulkDoc = tuple[str, dict[str, Any] | None] | tuple[str, dict[str, Any] | None, int]


RETRY = "retry"


def item_failure_reason(status: int, error: Any) -> str:
    """``"retry"`` for transient failures, else the dead-letter reason code of a failed bulk item."""
    kind, _ = error_type_reason(error)
    if status in RETRYABLE_STATUSES or kind in RETRYABLE_ERROR_TYPES:
        return RETRY
    if "mapping" in kind or "parsing" in kind:
        return "es_mapping_error"
    if status == 409 or kind == "version_conflict_engine_exception":
        return "es_version_conflict"
    return "es_rejected"


def _describe(status: int, error: Any) -> str:
    kind, reason = error_type_reason(error)
    return f"{status} {kind}: {reason}"


def bulk_index(
    es: Elasticsearch,
    alias: str,
    batches: Iterable[list[BulkDoc]],
    dead_letters: DeadLetterWriter,
    options: BulkOptions = BulkOptions(),
) -> BulkCounts:
    """Index ``(doc_id, source[, version])`` batches into ``alias``; every document ends indexed,
    superseded (only with ``options.version_type``), deleted (a None ``source``; a document
    already absent counts as deleted) or dead-lettered.

    Each batch is sent with ``streaming_bulk`` (split by ``chunk_docs``/``max_bytes``), the
    helper's own retries off, and then re-sent for the items that failed transiently, until they
    succeed or ``max_retries`` is used up. ``require_alias`` makes ES refuse the write instead of
    auto-creating a concrete index with a dynamic mapping when the alias is missing. ``alias`` may
    also name a concrete index (a generation being built): it must exist when the load starts.
    """
    require_alias = _require_alias(es, alias)
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
        _send_with_retries(client, alias, pending, dead_letters, options, counts, require_alias)
    return counts


def _require_alias(es: Elasticsearch, name: str) -> bool:
    """True for an alias (or a missing name: ES then refuses the write); False for an existing
    concrete index, which ``require_alias`` would refuse."""
    with es_errors(f"resolving {name!r} before a bulk load"):
        return es.indices.exists_alias(name=name) or not es.indices.exists(index=name)


def _dead(
    dead: DeadLetterWriter, counts: BulkCounts, doc_id: str, reason: str, error: str, row: dict, attempt: int
) -> None:
    dead.add(doc_id, reason, error, row, attempt=attempt)
    counts.dead_lettered += 1
    counts.by_reason[reason] += 1


def _settle(
    ok: bool,
    info: dict[str, Any],
    doc: _Pending,
    alias: str,
    options: BulkOptions,
    counts: BulkCounts,
    dead: DeadLetterWriter,
) -> bool:
    """Count one bulk item's outcome (indexed, superseded or dead-lettered); True: send it again."""
    status = int(info.get("status", 500))
    if doc.source is None and (ok or (status == 404 and info.get("result") == "not_found")):
        counts.deleted += 1
        counts.absent += not ok
        return False
    if ok:
        counts.indexed += 1
        if info.get("result") == "created":
            counts.created += 1
        else:
            counts.updated += 1
        return False
    error = info.get("error")
    if options.version_type and status == 409:
        counts.superseded += 1  # a newer version of this document is already stored
        return False
    reason = item_failure_reason(status, error)
    if "exception" in info and reason != RETRY:
        # The whole request failed (auth, a proxy, a malformed body): not about this item.
        raise_clear(info["exception"], f"bulk request to alias {alias!r}")
    if _is_missing_alias(error):
        raise EsIndexError(
            f"alias {alias!r} does not exist (bulk refused with {_describe(status, error)}); "
            "create its index first"
        )
    if reason == RETRY:
        doc.rejections += 1
        if doc.rejections <= options.retry.max_retries:
            return True
        reason = "es_retries_exhausted"
    attempts = doc.rejections if reason == "es_retries_exhausted" else doc.rejections + 1
    _dead(
        dead, counts, doc.doc_id, reason, _describe(status, error), doc.source or {"deleted": True}, attempts
    )
    return False


def _send_with_retries(
    client: Elasticsearch,
    alias: str,
    pending: list[_Pending],
    dead: DeadLetterWriter,
    options: BulkOptions,
    counts: BulkCounts,
    require_alias: bool,
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
                require_alias=require_alias,
            )
            for ok, item in results:
                doc = pending[answered]
                answered += 1
                if _settle(ok, next(iter(item.values())), doc, alias, options, counts, dead):
                    retry.append(doc)
        except TlsError as exc:
            raise_clear(exc, f"bulk request to alias {alias!r}")
        except EsConnectionError as exc:
            connection_failures += 1
            counts.connection_retries += 1
            if connection_failures > options.retry.max_retries:
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
            delay = options.retry.delay(round_no - 1)
            log.warning("bulk to %s: retrying %d document(s) in %.2fs", alias, len(retry), delay)
            options.retry.sleep(delay)
        pending = retry


# The client's own JSON options and fallbacks (dates, numpy, ...), but one encoder for every
# document: the client's json.dumps(..., default=...) builds a new encoder per call. The bulk
# helpers send a bytes ``_source`` as it is; ``pending.source`` stays a dict for the dead letter.
_encode_source = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), default=JsonSerializer().default
).encode


def _action(alias: str, pending: _Pending, version_type: str | None) -> dict[str, Any]:
    if pending.source is None:  # the state (runs.state) already decided no newer write exists
        return {"_op_type": "delete", "_index": alias, "_id": pending.doc_id}
    source = _encode_source(pending.source).encode("utf-8", "surrogatepass")
    action = {"_op_type": "index", "_index": alias, "_id": pending.doc_id, "_source": source}
    if version_type:
        action.update(version=pending.version, version_type=version_type)
    return action


def _is_missing_alias(error: Any) -> bool:
    kind, reason = error_type_reason(error)
    return kind == "index_not_found_exception" or ("require_alias" in reason)
