"""Upserting staged chunks: idempotent (point ids are uuid5 of the business key, computed at
staging), batched, retried with backoff on transient errors, latest ``dt`` wins.

A batch the engine rejects, or that keeps failing, is bisected so only the offending points reach
the dead letter. Staged field-only updates replace the payload and keep the stored vector; staged
deletes remove points. Every staged row ends indexed, deleted or dead-lettered (``rows_in ==
indexed + deleted + dead_lettered``).
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client.client_base import QdrantBase
from qdrant_client.http import models

from embedding_pipeline.errors import ConfigError
from embedding_pipeline.retry import Retrier, RetriesExhausted, RetryPolicy
from embedding_pipeline.runs.accounting import StageResult
from embedding_pipeline.runs.dead_letter import DeadLetterWriter
from embedding_pipeline.runs.partitions import partition_version
from embedding_pipeline.runs.progress import Progress
from embedding_pipeline.runs.staging import DELETE, UPDATE, StagedBatch, iter_staged, staged_row_count
from embedding_pipeline.runs.storage import as_path
from embedding_pipeline.stores.qdrant.collections import (
    PointSchema,
    check_model,
    collection_target,
    staged_model,
)
from embedding_pipeline.stores.qdrant.errors import (
    QdrantSinkError,
    QdrantUnavailableError,
    describe_error,
    is_point_error,
    is_transient,
)
from embedding_pipeline.stores.qdrant.points import delete as delete_points
from embedding_pipeline.stores.qdrant.points import not_newer_than

log = logging.getLogger(__name__)

STAGE = "qdrant_upsert"
REASON_INVALID = "qdrant_invalid_point"
REASON_EXHAUSTED = "qdrant_retries_exhausted"


@dataclass
class _Upserter:
    """Writes point batches; bisects failing ones so only the bad points are dead-lettered.

    ``max_consecutive_exhausted`` single points in a row that exhaust their retries (with no write
    succeeding in between) mean Qdrant is down, not that the points are bad: the task then fails
    with :class:`QdrantUnavailableError` (nothing dead-lettered) and Airflow's retry re-runs the
    chunk idempotently.
    """

    client: QdrantBase
    collection: str
    retry: Retrier
    dead: DeadLetterWriter
    max_consecutive_exhausted: int
    indexed: int = 0
    requests: int = 0
    bisections: int = 0
    _exhausted_in_row: int = 0

    def write(
        self,
        points: list[models.PointStruct],
        rows: list[dict[str, Any]],
        update_filter: models.Filter | None = None,
        payload_only: bool = False,
    ) -> None:
        """Upsert ``points``; with ``update_filter``, existing points are only overwritten if they
        match. ``payload_only``: replace the stored points' payloads, keep their vectors (a
        field-only change, not re-embedded)."""
        self.requests += 1

        def send() -> Any:
            if payload_only:
                operations = [
                    models.OverwritePayloadOperation(
                        overwrite_payload=models.SetPayload(payload=point.payload, points=[point.id])
                    )
                    for point in points
                ]
                return self.client.batch_update_points(self.collection, operations, wait=True)
            return self.client.upsert(self.collection, points=points, wait=True, update_filter=update_filter)

        try:
            self.retry.call(f"write of {len(points)} points into {self.collection}", send)
        except RetriesExhausted as exc:
            failure: Exception = exc
        except Exception as exc:
            if not is_point_error(exc):
                raise QdrantSinkError(
                    f"Qdrant upsert into {self.collection!r} failed (not retryable, not a bad point): "
                    f"{describe_error(exc)}"
                ) from exc
            failure = exc
        else:
            self.indexed += len(points)
            self._exhausted_in_row = 0
            return
        if len(points) > 1:
            self.bisections += 1
            half = len(points) // 2
            self.write(points[:half], rows[:half], update_filter, payload_only)
            self.write(points[half:], rows[half:], update_filter, payload_only)
        elif isinstance(failure, RetriesExhausted):
            self._exhausted(rows[0], failure)
        else:
            self.dead.add(rows[0]["id"], REASON_INVALID, f"Qdrant rejected the point: {failure}", rows[0])

    def _exhausted(self, row: dict[str, Any], exc: RetriesExhausted) -> None:
        self._exhausted_in_row += 1
        if self._exhausted_in_row >= self.max_consecutive_exhausted:
            raise QdrantUnavailableError(
                f"Qdrant collection {self.collection!r} kept failing transiently for "
                f"{self._exhausted_in_row} points in a row, each after {exc.attempts} attempts "
                f"(last error: {describe_error(exc.last)}); failing the task so Airflow retries the chunk"
            ) from exc.last
        self.dead.add(row["id"], REASON_EXHAUSTED, describe_error(exc.last), row, attempt=exc.attempts)


def _model_version_value(version: str) -> int | str:
    """Integer when it is one (the payload index on model_version is an integer index)."""
    try:
        return int(version)
    except ValueError:
        return version


def upsert_chunk(
    client: QdrantBase,
    alias: str,
    staged_path: str | Path,
    dead_letters: DeadLetterWriter,
    *,
    schema: PointSchema,
    batch_size: int = 256,
    retry: RetryPolicy = RetryPolicy(),
    max_consecutive_exhausted: int = 3,
) -> StageResult:
    """Upsert one staged chunk into the collection behind ``alias``; every row indexed or dead-lettered.

    The alias is resolved once and points go to that physical collection, so an alias swap during
    the task cannot split a chunk across generations. A chunk embedded with another model or
    dimension than the collection's is refused before anything is written. Vectors with NaN/inf
    are dead-lettered up front (a server over gRPC, and local mode for inf, would store them and
    poison every score); anything else the engine rejects is isolated by bisection. The
    writer's part file is flushed and its path returned in the result.
    """
    path = as_path(str(staged_path))
    started = time.monotonic()
    model = staged_model(path)
    target = collection_target(client, alias)
    check_model(target, **model, distance=None, what=f"staged chunk {path.name}")
    model_version = _model_version_value(model["model_version"])
    first_letter, reasons_before = len(dead_letters), Counter(dead_letters.by_reason())
    upserter = _Upserter(
        client, target.name, retry.retrier(is_transient), dead_letters, max_consecutive_exhausted
    )
    rows_in = superseded = deleted = 0
    progress = Progress(f"qdrant_upsert {path.stem}", staged_row_count(path))
    for batch in progress.track(iter_staged(path, batch_size), lambda b: len(b.ids)):
        rows_in += len(batch.ids)
        removed = [batch.point_ids[i] for i, op in enumerate(batch.ops) if op == DELETE]
        if removed:  # deletes cannot be bad data: a failure after the retries fails the task
            delete_points(client, target.name, removed, retry)
            upserter.requests += 1
            deleted += len(removed)
        points, rows = _points(batch, path, model["model_name"], model_version, schema, dead_letters)
        updates = [i for i, row in enumerate(rows) if row["op"] == UPDATE]
        if updates:
            upserter.write([points[i] for i in updates], [rows[i] for i in updates], payload_only=True)
            points, rows = _without(points, updates), _without(rows, updates)
        if points:
            points, rows, newer = _drop_superseded(client, target.name, upserter.retry, points, rows)
            superseded += newer
        for version, group in _by_dt_version(points, rows).items():
            upserter.write(*group, update_filter=not_newer_than(version))
    by_reason = dict(Counter(dead_letters.by_reason()) - reasons_before)
    seconds = time.monotonic() - started
    result = StageResult(
        stage=STAGE,
        chunk=path.stem,
        rows_in=rows_in,
        indexed=upserter.indexed + superseded,
        dead_lettered=len(dead_letters) - first_letter,
        deleted=deleted,
        dead_letters_by_reason=by_reason,
        dead_letter_path=dead_letters.flush(),
        seconds=round(seconds, 3),
        extra={
            "collection": target.name,
            "requests": upserter.requests,
            "retries": upserter.retry.retries,
            "bisections": upserter.bisections,
            "superseded": superseded,
            "points_per_s": round(upserter.indexed / seconds, 1) if seconds > 0 else 0.0,
        },
    )
    if not result.balanced:  # a bug here, never data: fail loudly rather than lose rows silently
        raise QdrantSinkError(f"Qdrant accounting does not balance for {path}: {result.to_xcom()}")
    log.info(
        "qdrant_upsert %s: %d in, %d indexed (%d superseded), %d deleted, %d dead-lettered %s in %.1fs",
        path.stem,
        rows_in,
        result.indexed,
        superseded,
        deleted,
        result.dead_lettered,
        by_reason,
        result.seconds,
    )
    return result


def _drop_superseded(
    client: QdrantBase,
    collection: str,
    retry: Retrier,
    points: list[models.PointStruct],
    rows: list[dict[str, Any]],
) -> tuple[list[models.PointStruct], list[dict[str, Any]], int]:
    """Leave out (and count as superseded) points whose stored version is from a later ``dt``.

    The latest partition of an id wins, as in Elasticsearch (external versions), whatever order
    chunks, retries and backfills write in. This read only saves writes and counts; what enforces
    the rule is the conditional upsert (:func:`not_newer_than`): on a server, a chunk of a newer
    date may write the same id between this read and our write, and then the engine, not this
    read, keeps the newer point (counted as indexed: the identity holds either way).
    """
    try:
        stored = retry.call(
            f"reading dt of {len(points)} points in {collection}",
            lambda: client.retrieve(
                collection, ids=[p.id for p in points], with_payload=["dt"], with_vectors=False
            ),
        )
    except RetriesExhausted as exc:
        raise QdrantUnavailableError(
            f"Qdrant collection {collection!r}: reading stored points failed after {exc.attempts} "
            f"attempts: {describe_error(exc.last)}"
        ) from exc.last
    stored_dt = {str(record.id): str((record.payload or {}).get("dt") or "") for record in stored}
    keep = [
        i
        for i, point in enumerate(points)
        if stored_dt.get(str(point.id), "") <= str(point.payload.get("dt") or "")
    ]
    return [points[i] for i in keep], [rows[i] for i in keep], len(points) - len(keep)


def _without(items: list[Any], positions: list[int]) -> list[Any]:
    skip = set(positions)
    return [item for i, item in enumerate(items) if i not in skip]


def _by_dt_version(
    points: list[models.PointStruct], rows: list[dict[str, Any]]
) -> dict[int | None, tuple[list[models.PointStruct], list[dict[str, Any]]]]:
    """Points grouped by their ``dt_version`` (a chunk holds one partition: usually one group)."""
    groups: dict[int | None, tuple[list[models.PointStruct], list[dict[str, Any]]]] = {}
    for point, row in zip(points, rows, strict=True):
        group = groups.setdefault((point.payload or {}).get("dt_version"), ([], []))
        group[0].append(point)
        group[1].append(row)
    return groups


def _points(
    batch: StagedBatch,
    path: Path,
    model_name: str,
    model_version: int | str,
    schema: PointSchema,
    dead: DeadLetterWriter,
) -> tuple[list[models.PointStruct], list[dict[str, Any]]]:
    """Points of one staged batch's upserts and updates, plus the replayable row of each (for its
    dead letter, and its ``op``).

    Points are built with ``model_construct``: every field comes from the staged file, whose
    writer typed it (a string id, a float vector, a JSON object payload), so pydantic's check of
    each 384-float vector would cost as much as reading the row (~15 us a point) and find nothing.
    What staging cannot promise - a missing id, a ``dt`` that is no date - is checked here and
    dead-lettered; a malformed id is refused by the engine and isolated by bisection.
    """
    finite = np.isfinite(batch.vectors).all(axis=1)
    # float64 first: one C loop, and tolist() then wraps doubles instead of widening each float32
    vectors = batch.vectors.astype(np.float64).tolist()
    version_of = functools.cache(partition_version)  # a chunk holds one dt: parse it once
    points: list[models.PointStruct] = []
    rows: list[dict[str, Any]] = []
    for i, business_id in enumerate(batch.ids):
        if batch.ops[i] == DELETE:
            continue
        row = {
            "id": business_id,
            "point_id": batch.point_ids[i],
            schema.text_field: batch.texts[i],
            "content_hash": batch.content_hashes[i],
            "payload": batch.payloads[i],
            "staged_path": str(path),
            "op": batch.ops[i],
        }
        if not finite[i]:
            dead.add(business_id, REASON_INVALID, "vector has non-finite values (NaN or inf)", row)
            continue
        if not isinstance(batch.point_ids[i], str | int):
            dead.add(business_id, REASON_INVALID, "cannot build a Qdrant point: it has no point id", row)
            continue
        payload = {
            **batch.payloads[i],
            schema.id_field: business_id,
            schema.text_field: batch.texts[i],
            "content_hash": batch.content_hashes[i],
            "model_name": model_name,
            "model_version": model_version,
        }
        if payload.get("dt"):
            try:
                payload["dt_version"] = version_of(str(payload["dt"]))
            except ConfigError as exc:
                dead.add(business_id, REASON_INVALID, f"cannot build a Qdrant point: {exc}", row)
                continue
        points.append(
            models.PointStruct.model_construct(id=batch.point_ids[i], vector=vectors[i], payload=payload)
        )
        rows.append(row)
    return points, rows
