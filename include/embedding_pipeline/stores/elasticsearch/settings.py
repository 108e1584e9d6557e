"""How to reach the Elasticsearch cluster and how to bulk into it. Light on purpose (no client
library): Airflow hooks build it from a Connection at parse time."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import urlsplit

from embedding_pipeline.errors import ConfigError
from embedding_pipeline.settings import redact_url, truthy


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
        ``ES_BULK_MAX_BYTES``."""
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
        ):
            if env.get(key):
                overrides[name] = env[key]
        if env.get("ES_VERIFY_CERTS"):
            overrides["verify_certs"] = truthy(env["ES_VERIFY_CERTS"])
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
