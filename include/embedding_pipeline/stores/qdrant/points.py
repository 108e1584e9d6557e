"""Point-level reads and writes by id and by filter: what keeping derived data current needs
(retrieve stored vectors, find points whose payload lists an id, every point scoring above a
threshold, plain writes and deletes). Every call is retried on transient errors and then raised
as :class:`QdrantUnavailableError` naming the operation."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
from qdrant_client.client_base import QdrantBase
from qdrant_client.http import models

from embedding_pipeline.retry import RetriesExhausted, RetryPolicy
from embedding_pipeline.stores.qdrant.errors import QdrantUnavailableError, describe_error, is_transient

T = TypeVar("T")
Record = tuple[str, np.ndarray | None, dict[str, Any]]  # point id, vector (if asked for), payload


def call(retry: RetryPolicy, what: str, fn: Callable[[], T]) -> T:
    """``fn()`` with transient errors retried; exhausted retries raise ``QdrantUnavailableError``."""
    try:
        return retry.call(what, fn, is_transient)
    except RetriesExhausted as exc:
        raise QdrantUnavailableError(
            f"Qdrant {what} failed after {exc.attempts} attempts: {describe_error(exc.last)}"
        ) from exc.last


def retrieve(
    client: QdrantBase,
    collection: str,
    point_ids: Sequence[str],
    *,
    with_vectors: bool = True,
    retry: RetryPolicy = RetryPolicy(),
) -> dict[str, Record]:
    """Stored points by id (absent ids are left out), with their vectors and payloads."""
    records = call(
        retry,
        f"retrieve of {len(point_ids)} points from {collection}",
        lambda: client.retrieve(
            collection, ids=list(point_ids), with_payload=True, with_vectors=with_vectors
        ),
    )
    return {
        str(r.id): (
            str(r.id),
            np.asarray(r.vector, dtype=np.float32) if with_vectors else None,
            r.payload or {},
        )
        for r in records
    }


def present(
    client: QdrantBase,
    collection: str,
    point_ids: Sequence[str],
    *,
    batch: int = 1000,
    retry: RetryPolicy = RetryPolicy(),
) -> set[str]:
    """Which of ``point_ids`` are stored in ``collection`` (no payloads or vectors fetched)."""
    found: set[str] = set()
    for start in range(0, len(point_ids), batch):
        part = list(point_ids[start : start + batch])
        records = call(
            retry,
            f"lookup of {len(part)} points in {collection}",
            lambda part=part: client.retrieve(collection, ids=part, with_payload=False, with_vectors=False),
        )
        found.update(str(r.id) for r in records)
    return found


def scroll_matching(
    client: QdrantBase,
    collection: str,
    query_filter: models.Filter,
    *,
    fields: Sequence[str] | bool = True,
    page: int = 1024,
    retry: RetryPolicy = RetryPolicy(),
) -> Iterator[dict[str, Any]]:
    """Payloads of every point matching ``query_filter``, one page in memory at a time."""
    offset: models.ExtendedPointId | None = None
    selected = fields if isinstance(fields, bool) else list(fields)
    while True:
        records, offset = call(
            retry,
            f"scroll of {collection}",
            lambda offset=offset: client.scroll(
                collection, scroll_filter=query_filter, limit=page, offset=offset, with_payload=selected
            ),
        )
        for record in records:
            yield record.payload or {}
        if offset is None:
            return


def above(
    client: QdrantBase,
    collection: str,
    vector: np.ndarray,
    threshold: float,
    query_filter: models.Filter | None,
    *,
    page: int = 4096,
    retry: RetryPolicy = RetryPolicy(),
) -> Iterator[tuple[dict[str, Any], float]]:
    """Every point matching ``query_filter`` whose score against ``vector`` is at least
    ``threshold``, best first, paged (``exact``: on a server HNSW could miss some, and a miss here
    is a stale list)."""
    offset = 0
    while True:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Local mode performs exact", category=UserWarning)
            response = call(
                retry,
                f"threshold search in {collection}",
                lambda offset=offset: client.query_points(
                    collection,
                    query=vector.tolist(),
                    query_filter=query_filter,
                    score_threshold=threshold,
                    limit=page,
                    offset=offset,
                    with_payload=True,
                    search_params=models.SearchParams(exact=True),
                ),
            )
        for point in response.points:
            yield point.payload or {}, float(point.score)
        if len(response.points) < page:
            return
        offset += page


def not_newer_than(version: int | None) -> models.Filter | None:
    """Overwrite a stored point only if its ``dt_version`` is not newer than ``version`` (or it has
    none, written before the field existed); ids not stored yet are inserted. Atomic in the engine:
    the latest partition of an id wins whatever order chunks, retries and backfills write in."""
    if version is None:
        return None
    return models.Filter(
        should=[
            models.FieldCondition(key="dt_version", range=models.Range(lte=version)),
            models.IsEmptyCondition(is_empty=models.PayloadField(key="dt_version")),
        ]
    )


def write(
    client: QdrantBase,
    collection: str,
    points: Sequence[models.PointStruct],
    retry: RetryPolicy = RetryPolicy(),
) -> None:
    """Upsert ``points`` (derived points: no per-point dead letters), each group of one
    ``dt_version`` payload under :func:`not_newer_than`, so an older partition never overwrites
    a newer one."""
    groups: dict[Any, list[models.PointStruct]] = {}
    for point in points:
        groups.setdefault((point.payload or {}).get("dt_version"), []).append(point)
    for version, group in groups.items():
        call(
            retry,
            f"upsert of {len(group)} points into {collection}",
            lambda group=group, version=version: client.upsert(
                collection, points=group, wait=True, update_filter=not_newer_than(version)
            ),
        )


def delete(
    client: QdrantBase, collection: str, point_ids: Sequence[str], retry: RetryPolicy = RetryPolicy()
) -> None:
    """Delete points by id; absent ids are no error."""
    if point_ids:
        selector = models.PointIdsList(points=list(point_ids))
        call(
            retry,
            f"delete of {len(point_ids)} points from {collection}",
            lambda: client.delete(collection, points_selector=selector, wait=True),
        )
