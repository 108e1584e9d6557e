"""Opening an ``Elasticsearch`` client for :class:`EsSettings` (TLS, API key or basic auth)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from elasticsearch import Elasticsearch

from embedding_pipeline.stores.elasticsearch.settings import EsSettings

log = logging.getLogger(__name__)


def make_client(settings: EsSettings) -> Elasticsearch:
    """An ``Elasticsearch`` client for ``settings``; TLS options are passed only for https hosts.

    The transport retries whole requests on 429/502/503/504 and timeouts for ordinary calls; bulk
    calls switch that off and retry per item with backoff instead (see
    :func:`~embedding_pipeline.stores.elasticsearch.bulk.bulk_index`).
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
