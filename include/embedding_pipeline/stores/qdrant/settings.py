"""Where Qdrant is and how hard to try. Light on purpose (no qdrant-client): Airflow hooks build it
at parse time and the DAGs derive task concurrency from it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from embedding_pipeline.errors import ConfigError
from embedding_pipeline.retry import RetrySettings
from embedding_pipeline.settings import redact_url, truthy, work_dir

MEMORY = ":memory:"
# Embedded engines: Qdrant's own (qdrant-edge, the default) or qdrant-client's Python local mode.
LOCAL_ENGINES = ("edge", "python")
# Mapped Qdrant tasks that may run at once against a server (local mode: one, the storage lock).
SERVER_TASK_CONCURRENCY = 16


@dataclass(frozen=True)
class QdrantSettings(RetrySettings):
    """Local mode unless ``url`` or ``host`` is set.

    ``path`` is the local storage folder (``":memory:"`` for a throwaway in-process store); left
    empty it is ``<work_dir()>/qdrant``, resolved when the client is made so that
    ``EMBEDDING_PIPELINE_HOME`` set later still counts. ``local_engine`` picks the embedded
    engine: ``edge`` (Qdrant's own, in-process; see ``stores/qdrant/edge/``) or ``python``
    (qdrant-client's local mode, which reads stores written before the switch). The two store
    different files: one cannot open the other's folder.
    """

    path: str | Path | None = None
    url: str | None = None
    host: str | None = None
    port: int = 6333
    grpc_port: int = 6334
    prefer_grpc: bool = False
    api_key: str | None = field(default=None, repr=False)
    https: bool | None = None
    timeout: int = 60
    upsert_batch: int = 256
    search_batch: int = 64
    lock_wait_s: float = 5.0
    local_engine: str = "edge"

    def __post_init__(self) -> None:
        if self.path is not None and (self.url or self.host):
            raise ConfigError("Qdrant: set either path (local mode) or url/host (server), not both")
        if self.url and self.host:
            raise ConfigError("Qdrant: set either url or host, not both")
        for name in ("port", "grpc_port"):
            port = getattr(self, name)
            if not isinstance(port, int) or not 0 < port < 65536:
                raise ConfigError(f"Qdrant {name} must be a TCP port, got {port!r}")
        for name in ("upsert_batch", "search_batch", "timeout"):
            if getattr(self, name) < 1:
                raise ConfigError(f"Qdrant {name} must be >= 1, got {getattr(self, name)}")
        if self.local_engine not in LOCAL_ENGINES:
            raise ConfigError(f"Qdrant local_engine must be one of {LOCAL_ENGINES}: {self.local_engine!r}")
        if self.max_retries < 0 or self.backoff_initial_s < 0 or self.lock_wait_s < 0:
            raise ConfigError("Qdrant max_retries, backoff_initial_s and lock_wait_s must be >= 0")

    @property
    def is_local(self) -> bool:
        """Embedded mode: one process at a time may open the storage."""
        return not (self.url or self.host)

    @property
    def task_concurrency(self) -> int:
        """How many mapped tasks may open Qdrant at once: 1 in local mode (the storage lock)."""
        return 1 if self.is_local else SERVER_TASK_CONCURRENCY

    @property
    def local_path(self) -> str:
        """The local storage folder (or ``:memory:``); only meaningful when ``is_local``."""
        if self.path is None:
            return str(work_dir() / "qdrant")
        return str(self.path)

    def __repr__(self) -> str:
        if self.is_local:
            where = f"path={self.local_path!r}, local_engine={self.local_engine!r}"
        else:
            endpoint = redact_url(self.url) if self.url else f"{self.host}:{self.port}"
            where = f"url={endpoint!r}, grpc_port={self.grpc_port}, prefer_grpc={self.prefer_grpc}"
            where += f", api_key={'***' if self.api_key else None}"
        return (
            f"QdrantSettings({where}, timeout={self.timeout}, upsert_batch={self.upsert_batch}, "
            f"max_retries={self.max_retries})"
        )

    __str__ = __repr__

    @classmethod
    def from_env(cls, **overrides: Any) -> QdrantSettings:
        """``QDRANT_URL`` / ``QDRANT_API_KEY`` / ``QDRANT_PATH`` / ``QDRANT_LOCAL_ENGINE`` /
        ``QDRANT_PREFER_GRPC``, then overrides.

        ``None`` overrides are ignored so a Param left empty keeps the environment's value.
        """
        env: dict[str, Any] = {
            "url": os.environ.get("QDRANT_URL") or None,
            "api_key": os.environ.get("QDRANT_API_KEY") or None,
            "path": os.environ.get("QDRANT_PATH") or None,
            "local_engine": os.environ.get("QDRANT_LOCAL_ENGINE") or None,
        }
        grpc_flag = os.environ.get("QDRANT_PREFER_GRPC")
        if grpc_flag:
            env["prefer_grpc"] = truthy(grpc_flag)
        values = {k: v for k, v in {**env, **overrides}.items() if v is not None}
        if values.get("url") or values.get("host"):
            values.pop("path", None)  # an explicit server wins over a leftover local path
        return replace(cls(), **values) if values else cls()
