"""Where things live and how to reach the inference server, with embedded defaults.

Every host, port and path comes from here (environment variables, or an Airflow Connection through
the hooks in ``plugins/``), never from literals in task code: that is what lets a test or a fault
injecting proxy sit in front of any external system.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit, urlunsplit

from embedding_pipeline.errors import ConfigError
from embedding_pipeline.retry import Jitter, RetrySettings

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def model_repository_path() -> Path:
    """Triton model repository (``EMBEDDING_MODEL_REPOSITORY``, default ``<project>/model_repository``)."""
    return Path(os.environ.get("EMBEDDING_MODEL_REPOSITORY", PROJECT_ROOT / "model_repository"))


def work_dir() -> Path:
    """Scratch space for staging, dead letters and reports (``EMBEDDING_PIPELINE_HOME``)."""
    return Path(os.environ.get("EMBEDDING_PIPELINE_HOME", PROJECT_ROOT / "var"))


ServerProtocol = Literal["grpc", "http"]


@dataclass(frozen=True)
class ServerSettings(RetrySettings):
    """How the embedding client reaches a KServe v2 server (Triton or the local server).

    Full jitter on retries: one client against one server, where spreading them matters most."""

    JITTER: ClassVar[Jitter] = "full"

    # Transient errors are retried for up to two minutes, not a handful of attempts: a restarting
    # server (measured: ~1.5 s of retries before) then costs seconds in the task instead of an
    # Airflow retry that re-embeds the chunk from its first row. max_retries only caps the count.
    max_retries: int = 100
    retry_deadline_s: float | None = 120.0

    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int = 8000
    protocol: ServerProtocol = "grpc"
    model_name: str = "minilm"
    model_repository: Path = field(default_factory=model_repository_path)
    ssl: bool = False
    # PEM file of the CA (or the self-signed certificate) the server's TLS certificate is checked
    # against, over gRPC and HTTP; empty: the system's roots (certifi's bundle over HTTP). ``ssl``
    # must be on.
    ca_certs: str = ""
    timeout_s: float = 60.0
    # 1 on small CPU boxes: two concurrent requests oversubscribe a 2-core server (measured 0.8x,
    # bench/results). Raise it (Connection extra) for Triton on GPUs or several instances.
    max_in_flight: int = 1
    batch_size: int = 64
    ready_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.protocol not in ("grpc", "http"):
            raise ConfigError(f"protocol must be 'grpc' or 'http', got {self.protocol!r}")
        for name in ("grpc_port", "http_port"):
            port = getattr(self, name)
            if not isinstance(port, int) or not 0 < port < 65536:
                raise ConfigError(f"{name} must be a TCP port, got {port!r}")
        for name in ("max_in_flight", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_retries < 0 or self.timeout_s <= 0:
            raise ConfigError("max_retries must be >= 0 and timeout_s > 0")
        if self.retry_deadline_s is not None and self.retry_deadline_s <= 0:
            raise ConfigError(f"retry_deadline_s must be > 0, got {self.retry_deadline_s}")

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def url(self) -> str:
        return self.grpc_url if self.protocol == "grpc" else self.http_url

    def with_overrides(self, **overrides: Any) -> ServerSettings:
        """Copy with the non-None ``overrides`` applied (and coerced to the field's type)."""
        known = {f.name: f for f in fields(self)}
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ConfigError(f"unknown server setting(s): {', '.join(unknown)}")
        coerced: dict[str, Any] = {}
        for key, value in overrides.items():
            if value is None or value == "":
                continue
            current = getattr(self, key)
            try:
                if isinstance(current, bool):
                    coerced[key] = truthy(value)
                elif isinstance(current, Path):
                    coerced[key] = Path(value)
                else:
                    coerced[key] = type(current)(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"server setting {key}={value!r} is not a valid {type(current).__name__}"
                ) from exc
        return replace(self, **coerced)

    @classmethod
    def from_env(cls, **defaults: Any) -> ServerSettings:
        """Defaults (the class's, then the caller's ``defaults``) overridden by
        ``EMBEDDING_SERVER_<FIELD>`` environment variables."""
        prefix = "EMBEDDING_SERVER_"
        overrides = {
            key[len(prefix) :].lower(): value for key, value in os.environ.items() if key.startswith(prefix)
        }
        overrides = {key: value for key, value in overrides.items() if key in {f.name for f in fields(cls)}}
        return cls().with_overrides(**defaults).with_overrides(**overrides)


def data_root() -> Path:
    """Root of the partitioned input tables (``EMBEDDING_DATA_ROOT``, default ``<project>/data/sample``)."""
    return Path(os.environ.get("EMBEDDING_DATA_ROOT", PROJECT_ROOT / "data" / "sample"))


def truthy(value: object) -> bool:
    """A flag from an environment variable or a Connection extra: ``1``/``true``/``yes``/``on``
    (any case) or a real bool; anything else is False."""
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def redact_url(url: str) -> str:
    """The URL without ``user:password@``, for logs, reprs and messages."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
