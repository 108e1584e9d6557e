"""Qdrant's error types, and how to read qdrant-client's exceptions: transient (retry), a bad point
(dead letter), or neither (fail)."""

from __future__ import annotations

import grpc
import httpx
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from embedding_pipeline.errors import PipelineError, SetupError

_TRANSIENT_HTTP = {429, 502, 503, 504}
_TRANSIENT_GRPC = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


class QdrantSinkError(PipelineError):
    """Qdrant refused or failed an operation for a reason that is not one bad point."""


class QdrantLockedError(QdrantSinkError):
    """The local-mode storage folder is held by another process."""


class QdrantUnavailableError(QdrantSinkError):
    """Qdrant keeps failing transiently: the service, not the data, is the problem."""


class CollectionNotFoundError(QdrantSinkError):
    """No collection or alias with this name."""


class StorageFormatError(QdrantSinkError, SetupError):
    """The local storage folder was written by the other embedded engine."""


class CollectionMismatchError(QdrantSinkError, SetupError):
    """The collection holds vectors of another model, dimension or distance than the caller's."""


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: timeouts, connection errors, HTTP 429/502/503/504, gRPC UNAVAILABLE & co."""
    if isinstance(exc, ResponseHandlingException):
        return exc.source is None or is_transient(exc.source)
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code in _TRANSIENT_HTTP
    if isinstance(exc, grpc.RpcError):
        code = getattr(exc, "code", None)
        return callable(code) and code() in _TRANSIENT_GRPC
    return isinstance(exc, httpx.TimeoutException | httpx.NetworkError | ConnectionError | TimeoutError)


def describe_error(exc: BaseException) -> str:
    """``Type: message``, looking through qdrant-client's wrapper to the network error inside."""
    if isinstance(exc, ResponseHandlingException) and exc.source is not None:
        return f"{type(exc.source).__name__}: {exc.source}"
    if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
        details = exc.details() if callable(getattr(exc, "details", None)) else ""
        return f"gRPC {exc.code()}: {details}"
    return f"{type(exc).__name__}: {exc}"


def is_point_error(exc: BaseException) -> bool:
    """The engine rejected the request's content (a bad point), not the request itself.

    Local mode raises ``ValueError`` (``Wrong input``, NaN, invalid id); a server answers 400/422
    or gRPC INVALID_ARGUMENT. "Collection ... not found" is a ValueError in local mode too, but
    it is no point's fault.
    """
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code in (400, 422) and b"not found" not in (exc.content or b"").lower()
    if isinstance(exc, grpc.RpcError):
        code = getattr(exc, "code", None)
        return callable(code) and code() == grpc.StatusCode.INVALID_ARGUMENT
    return isinstance(exc, ValueError) and "not found" not in str(exc).lower()
