"""Elasticsearch's error types, and client exceptions turned into messages that say what failed
and what to do about it.

Client compatibility: elasticsearch-py 9 sends ``compatible-with=9`` media types, which a real ES 8
refuses (400 ``media_type_header_exception``); the target cluster is ES 9 (see the compose file).
The noida-db emulator reports 8.15.3 but accepts these headers. :func:`raise_clear` turns the ES 8
refusal into an error saying what to do instead of a bare 400; client calls are wrapped with
:func:`es_errors`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from elastic_transport import TlsError
from elasticsearch import ApiError
from elasticsearch import ConnectionError as EsConnectionError

from embedding_pipeline.errors import PipelineError, SetupError


class EsError(PipelineError):
    """Elasticsearch refused an operation in a way an operator has to act on."""


class EsIndexError(EsError, SetupError):
    """The index or alias is missing, malformed, or incompatible with what is being written."""


class EsUnavailableError(EsError):
    """The cluster cannot be reached (down, wrong address, TLS, or connection retries exhausted)."""


def error_type_reason(body: Any) -> tuple[str, str]:
    """(type, reason) of an ES error body (``{"error": {...}}``, the inner dict, or a string)."""
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        reason = str(error.get("reason", ""))
        caused = error.get("caused_by")
        if isinstance(caused, dict) and caused.get("reason") and caused.get("reason") not in reason:
            reason = f"{reason} (caused by {caused.get('type')}: {caused.get('reason')})"
        return str(error.get("type", "unknown")), reason
    return "unknown", str(error)


def raise_clear(exc: Exception, doing: str) -> NoReturn:
    """Re-raise a client exception as a PipelineError that says what failed and what to do."""
    if isinstance(exc, ApiError):
        kind, reason = error_type_reason(exc.body)
        if kind == "media_type_header_exception":
            raise EsError(
                f"{doing}: the cluster refused elasticsearch-py 9's compatibility headers ({reason}); "
                "this pipeline needs Elasticsearch 9 (or pin elasticsearch<9 for an ES 8 cluster)"
            ) from None
        if exc.meta.status in (401, 403):
            what = "wrong or missing credentials" if exc.meta.status == 401 else "missing privileges"
            said = f": {reason}" if reason else ""
            raise EsError(
                f"{doing}: not authorised, {what} ({exc.meta.status} {kind}{said}); check the "
                "elasticsearch_default Connection's login/password or extra.api_key (ES_USERNAME/"
                "ES_PASSWORD or ES_API_KEY without one) and the user's index privileges"
            ) from None
        raise EsError(f"{doing}: {exc.meta.status} {kind}: {reason}") from None
    if isinstance(exc, TlsError):
        raise EsUnavailableError(
            f"{doing}: TLS failed ({exc}); check the Connection's extra.ca_certs / "
            "extra.ssl_assert_fingerprint (ES_CA_CERTS / ES_FINGERPRINT without one)"
        ) from None
    if isinstance(exc, EsConnectionError):
        raise EsUnavailableError(f"{doing}: cannot reach Elasticsearch ({exc})") from None
    raise exc


def raise_read_error(exc: Exception, alias: str, doing: str) -> NoReturn:
    """``_raise_clear``, but a missing alias is named as such rather than as a bare 404."""
    if isinstance(exc, ApiError) and error_type_reason(exc.body)[0] == "index_not_found_exception":
        raise EsIndexError(
            f"{doing}: alias {alias!r} does not exist on this cluster; check the name, or run the DAG "
            "that builds it first"
        ) from None
    raise_clear(exc, doing)


@contextmanager
def es_errors(doing: str, *, alias: str | None = None) -> Iterator[None]:
    """The one way this package wraps a client call: a client exception inside becomes a
    PipelineError saying what was being done (:func:`raise_clear`; with ``alias``, a missing alias
    is named as such, :func:`raise_read_error`). Errors that are already ours pass unchanged."""
    try:
        yield
    except PipelineError:
        raise
    except Exception as exc:
        if alias is None:
            raise_clear(exc, doing)
        raise_read_error(exc, alias, doing)
