"""qdrant-client's models to qdrant-edge's and back: distances, payload index types, point ids,
records, payload selectors, nearest-vector queries and filters. What the engine cannot express is
refused with ``NotImplementedError`` naming it, never approximated."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import qdrant_edge as edge
from qdrant_client.http import models

DISTANCES = {
    models.Distance.COSINE: edge.Distance.Cosine,
    models.Distance.DOT: edge.Distance.Dot,
    models.Distance.EUCLID: edge.Distance.Euclid,
    models.Distance.MANHATTAN: edge.Distance.Manhattan,
}
# qdrant-client payload index types -> the engine's (its enums are not iterable).
SCHEMA_TYPES = {
    models.PayloadSchemaType.KEYWORD: edge.PayloadSchemaType.Keyword,
    models.PayloadSchemaType.INTEGER: edge.PayloadSchemaType.Integer,
    models.PayloadSchemaType.FLOAT: edge.PayloadSchemaType.Float,
    models.PayloadSchemaType.BOOL: edge.PayloadSchemaType.Bool,
    models.PayloadSchemaType.TEXT: edge.PayloadSchemaType.Text,
    models.PayloadSchemaType.DATETIME: edge.PayloadSchemaType.Datetime,
    models.PayloadSchemaType.UUID: edge.PayloadSchemaType.Uuid,
    models.PayloadSchemaType.GEO: edge.PayloadSchemaType.Geo,
}


def schema_out(kind: Any) -> models.PayloadSchemaType:
    return next(ours for ours, theirs in SCHEMA_TYPES.items() if theirs == kind)


def point_id(point_id: models.ExtendedPointId) -> int | str:
    """As the engine takes it: an unsigned integer or a UUID string, which the engine parses (and
    refuses with ``ValueError`` when malformed)."""
    return point_id if isinstance(point_id, int | str) else str(point_id)


def is_point_id(point_id: int | str) -> bool:
    if isinstance(point_id, int):
        return point_id >= 0
    try:
        uuid.UUID(point_id)
    except ValueError:
        return False
    return True


def id_out(point_id: Any) -> models.ExtendedPointId:
    return str(point_id) if isinstance(point_id, uuid.UUID) else point_id


def record(record: Any) -> models.Record:
    # model_construct: the engine's records are well formed; validating each costs more than reading it
    return models.Record.model_construct(
        id=id_out(record.id), payload=record.payload, vector=record.vector, shard_key=None, order_value=None
    )


def payload_selector(with_payload: Any) -> bool | list[str]:
    if isinstance(with_payload, bool):
        return with_payload
    if isinstance(with_payload, Sequence) and not isinstance(with_payload, str):
        return list(with_payload)
    raise NotImplementedError(f"the embedded Qdrant selects payload by a bool or names, not {with_payload!r}")


def query(request: models.QueryRequest) -> edge.QueryRequest:
    query = request.query
    if isinstance(query, models.NearestQuery):
        query = query.nearest
    if not isinstance(query, list) or not all(isinstance(v, float | int) for v in query):
        raise NotImplementedError("the embedded Qdrant answers nearest-vector queries only")
    params = request.params
    search = None if params is None else edge.SearchParams(hnsw_ef=params.hnsw_ef, exact=bool(params.exact))
    return edge.QueryRequest(
        query=edge.Query.Nearest([float(v) for v in query]),
        limit=request.limit or 10,
        offset=request.offset,
        filter=None if request.filter is None else filter_in(request.filter),
        score_threshold=request.score_threshold,
        params=search,
        with_payload=payload_selector(True if request.with_payload is None else request.with_payload),
        with_vector=bool(request.with_vector),
    )


def conditions_in(conditions: Any) -> list[Any] | None:
    if conditions is None:
        return None
    listed = conditions if isinstance(conditions, list) else [conditions]
    return [condition_in(c) for c in listed]


def filter_in(query_filter: models.Filter) -> edge.Filter:
    if query_filter.min_should is not None:
        raise NotImplementedError("the embedded Qdrant does not take min_should filters")
    return edge.Filter(
        must=conditions_in(query_filter.must),
        should=conditions_in(query_filter.should),
        must_not=conditions_in(query_filter.must_not),
    )


def condition_in(condition: Any) -> Any:
    if isinstance(condition, models.Filter):
        return filter_in(condition)
    if isinstance(condition, models.IsEmptyCondition):
        return edge.IsEmptyCondition(key=condition.is_empty.key)
    if isinstance(condition, models.IsNullCondition):
        return edge.IsNullCondition(key=condition.is_null.key)
    if isinstance(condition, models.HasIdCondition):
        return edge.HasIdCondition({point_id(i) for i in condition.has_id})
    if isinstance(condition, models.FieldCondition):
        match, bounds = condition.match, condition.range
        if isinstance(match, models.MatchValue):
            return edge.FieldCondition(key=condition.key, match=edge.MatchValue(match.value))
        if isinstance(match, models.MatchAny):
            return edge.FieldCondition(key=condition.key, match=edge.MatchAny(list(match.any)))
        if isinstance(match, models.MatchExcept):
            return edge.FieldCondition(key=condition.key, match=edge.MatchExcept(list(match.except_)))
        if match is None and isinstance(bounds, models.Range):
            limits = {"gt": bounds.gt, "gte": bounds.gte, "lt": bounds.lt, "lte": bounds.lte}
            return edge.FieldCondition(key=condition.key, range=edge.RangeFloat(**limits))
    raise NotImplementedError(f"the embedded Qdrant does not take the filter condition {condition!r}")
