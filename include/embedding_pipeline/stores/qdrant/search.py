"""Reading Qdrant: batched k-NN queries (top-K per vector, filters, HNSW settings) and full scans
of a collection's vectors in bounded blocks."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from qdrant_client.client_base import QdrantBase
from qdrant_client.http import models

from embedding_pipeline.errors import InvalidInputError
from embedding_pipeline.retry import RetriesExhausted, RetryPolicy
from embedding_pipeline.stores.qdrant.collections import (
    check_model,
    collection_target,
    collection_target_retrying,
)
from embedding_pipeline.stores.qdrant.errors import QdrantUnavailableError, describe_error, is_transient

PayloadFilter = models.Filter | Mapping[str, Any] | None


class Hit(NamedTuple):
    """One search result: the point's payload and its similarity score."""

    payload: dict[str, Any]
    score: float


@dataclass(frozen=True)
class SearchOptions:
    """What one search asks for, the same for every query vector of the call.

    ``query_filter`` is a ``Filter`` or a mapping of payload field -> value(s). ``hnsw_ef``
    (candidates explored per query; the server's default is the collection's ``ef_construct``) and
    ``exact`` (skip the index) only matter on a server, whose HNSW index is approximate; local
    mode always searches exhaustively and ignores them. ``model_name``/``model_version``, when
    given, must be the collection's model (same dim does not mean same model). ``with_payload``
    names the payload fields each hit carries (True: all): a caller that reads two fields of a
    ten-field payload saves their transfer from a server and their conversion here.
    """

    top_k: int
    score_threshold: float | None = None
    query_filter: PayloadFilter = None
    hnsw_ef: int | None = None
    exact: bool = False
    batch_size: int = 64
    model_name: str | None = None
    model_version: int | str | None = None
    with_payload: bool | tuple[str, ...] = True

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise InvalidInputError(f"top_k must be >= 1, got {self.top_k}")
        if self.hnsw_ef is not None and self.hnsw_ef < 1:
            raise InvalidInputError(f"hnsw_ef must be >= 1, got {self.hnsw_ef}")
        if self.batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {self.batch_size}")

    def params(self) -> models.SearchParams | None:
        if self.hnsw_ef is None and not self.exact:
            return None
        return models.SearchParams(hnsw_ef=self.hnsw_ef, exact=self.exact)


def _as_filter(query_filter: PayloadFilter) -> models.Filter | None:
    """A ``Filter`` as is, or ``{"category": "food", "lang": ["ja", "en"]}`` as AND of matches."""
    if query_filter is None or isinstance(query_filter, models.Filter):
        return query_filter
    must: list[models.Condition] = []
    for key, value in query_filter.items():
        if isinstance(value, list | tuple | set):
            match: models.Match = models.MatchAny(any=list(value))
        else:
            match = models.MatchValue(value=value)
        must.append(models.FieldCondition(key=key, match=match))
    return models.Filter(must=must)


def _and(a: models.Filter | None, b: models.Filter | None) -> models.Filter | None:
    if a is None or b is None:
        return a or b
    return models.Filter(must=[a, b])


def _query_vectors(vectors: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    queries = np.asarray(vectors, dtype=np.float32)
    if queries.ndim != 2 or len(queries) == 0:
        raise InvalidInputError(
            f"search needs a non-empty 2-D array of query vectors, got shape {queries.shape}"
        )
    if not np.isfinite(queries).all():
        raise InvalidInputError("query vectors contain NaN or inf")
    return queries


def search(
    client: QdrantBase,
    alias: str,
    vectors: np.ndarray | Sequence[Sequence[float]],
    options: SearchOptions,
    *,
    query_filters: Sequence[PayloadFilter] | None = None,
    retry: RetryPolicy = RetryPolicy(),
) -> list[list[Hit]]:
    """Top-``options.top_k`` hits per query vector, best first, through batched ``query_batch_points``.

    The query vectors' dimension is always checked against the collection, and the model too when
    ``options`` names it. ``query_filters`` holds one more filter (or None) per query vector, ANDed
    with ``options.query_filter`` - the linker's "same category as this product".
    """
    queries = _query_vectors(vectors)
    if query_filters is not None and len(query_filters) != len(queries):
        raise InvalidInputError(
            f"query_filters has {len(query_filters)} entries for {len(queries)} query vectors"
        )
    target = collection_target(client, alias)
    check_model(
        target,
        dim=queries.shape[1],
        model_name=options.model_name,
        model_version=options.model_version,
        distance=None,
        what="the query vectors' model",
    )
    shared = _as_filter(options.query_filter)
    per_query = query_filters if query_filters is not None else [None] * len(queries)
    filters = [_and(shared, _as_filter(f)) for f in per_query]
    params = options.params()
    fields = options.with_payload
    with_payload = fields if isinstance(fields, bool) else list(fields)
    retrier = retry.retrier(is_transient)
    results: list[list[Hit]] = []
    for start in range(0, len(queries), options.batch_size):
        stop = start + options.batch_size
        requests = [
            models.QueryRequest(
                query=q.tolist(),
                limit=options.top_k,
                score_threshold=options.score_threshold,
                filter=f,
                params=params,
                with_payload=with_payload,
            )
            for q, f in zip(queries[start:stop], filters[start:stop], strict=True)
        ]
        try:
            with warnings.catch_warnings():
                # Local mode says, per request, that it ignores HNSW parameters (meant for a server).
                warnings.filterwarnings("ignore", message="Local mode performs exact", category=UserWarning)
                responses = retrier.call(
                    f"search of {len(requests)} queries in {target.name}",
                    lambda requests=requests: client.query_batch_points(target.name, requests=requests),
                )
        except RetriesExhausted as exc:
            raise QdrantUnavailableError(
                f"Qdrant search in {target.name!r} failed after {exc.attempts} attempts: "
                f"{describe_error(exc.last)}"
            ) from exc.last
        results.extend([Hit(p.payload or {}, float(p.score)) for p in r.points] for r in responses)
    return results


def iter_vectors(
    client: QdrantBase,
    alias: str,
    batch_size: int = 1024,
    with_payload: Sequence[str] | bool = True,
    retry: RetryPolicy = RetryPolicy(),
) -> Iterator[tuple[np.ndarray, list[dict[str, Any]]]]:
    """Every point behind ``alias`` as ``(vectors float32 [n, dim], payloads)`` blocks of <= ``batch_size``.

    Memory is one block, whatever the collection size: pages come from ``scroll`` (point-id order,
    continued from the offset Qdrant returns), in local and server mode alike. The alias is
    resolved once, so an alias swap during a long scan cannot mix two generations. A cosine
    collection stores its vectors L2-normalised, so that is what comes back. ``with_payload``
    names the payload fields to fetch (fewer fields, less transfer), or True/False for all/none.
    """
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
    target = collection_target_retrying(client, alias, retry)
    fields = with_payload if isinstance(with_payload, bool) else list(with_payload)
    retrier = retry.retrier(is_transient)
    offset: models.ExtendedPointId | None = None
    while True:
        try:
            records, offset = retrier.call(
                f"scroll of {target.name}",
                lambda offset=offset: client.scroll(
                    target.name, limit=batch_size, offset=offset, with_payload=fields, with_vectors=True
                ),
            )
        except RetriesExhausted as exc:
            raise QdrantUnavailableError(
                f"Qdrant scroll of {target.name!r} failed after {exc.attempts} attempts: "
                f"{describe_error(exc.last)}"
            ) from exc.last
        if records:
            vectors = np.asarray([record.vector for record in records], dtype=np.float32)
            yield vectors, [record.payload or {} for record in records]
        if offset is None:
            return
