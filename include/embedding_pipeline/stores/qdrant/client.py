"""Opening Qdrant for :class:`QdrantSettings` (a server, or the embedded engine), and closing it.

What comes back is a ``QdrantBase``: qdrant-client's ``QdrantClient`` for a server and for local
mode, :class:`~embedding_pipeline.stores.qdrant.edge.client.EdgeClient` for the embedded engine. The
store's functions use the same calls on all three."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from qdrant_client import QdrantClient
from qdrant_client.client_base import QdrantBase

from embedding_pipeline.stores.qdrant.errors import QdrantLockedError
from embedding_pipeline.stores.qdrant.settings import MEMORY, QdrantSettings

LOCKED_MARKER = "already accessed by another instance"


def make_client(settings: QdrantSettings | None = None) -> QdrantBase:
    """A client for ``settings`` (default: from the environment). Close it when done.

    Embedded (local) mode waits up to ``lock_wait_s`` for the storage lock (the previous task's process may
    still be exiting), then raises :class:`QdrantLockedError` with what to do about it.
    """
    s = settings or QdrantSettings.from_env()
    if not s.is_local:
        return QdrantClient(
            url=s.url,
            host=s.host,
            port=s.port,
            grpc_port=s.grpc_port,
            prefer_grpc=s.prefer_grpc,
            https=s.https,
            api_key=s.api_key,
            timeout=s.timeout,
        )
    if s.local_engine == "python" and s.local_path == MEMORY:
        return QdrantClient(location=MEMORY)
    deadline = time.monotonic() + s.lock_wait_s
    while True:
        try:
            if s.local_engine == "edge":
                from embedding_pipeline.stores.qdrant.edge.client import EdgeClient  # loads the engine

                return EdgeClient(s.local_path)
            return QdrantClient(path=s.local_path)
        except RuntimeError as exc:
            if LOCKED_MARKER not in str(exc):
                raise
            if time.monotonic() >= deadline:
                raise QdrantLockedError(
                    f"Qdrant local storage {s.local_path} is locked by another process ({exc}). "
                    "Local mode allows one process at a time: run every Qdrant task one at a "
                    "time, stop the other process, or set QDRANT_URL to use a Qdrant server, which "
                    "takes parallel writers."
                ) from None
            time.sleep(0.2)


@contextmanager
def open_client(settings: QdrantSettings | None = None) -> Iterator[QdrantBase]:
    """``make_client`` that always closes: in local mode closing is what releases the lock."""
    client = make_client(settings)
    try:
        yield client
    finally:
        client.close()
