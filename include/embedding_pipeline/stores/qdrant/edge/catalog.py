"""The part of an embedded store that qdrant-edge lacks: which collections and aliases exist and
their settings (``<path>/catalog.json``, rewritten whole and renamed into place, so an alias swap
of several operations is one atomic change), and the folder's lock (``<path>/.lock``, an exclusive
``flock``: one process at a time, like qdrant-client's local mode)."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from embedding_pipeline.errors import PipelineError
from embedding_pipeline.stores.qdrant.errors import StorageFormatError

CATALOG = "catalog.json"
LOCK = ".lock"


class EdgeStorageLocked(PipelineError, RuntimeError):
    """The storage folder is open in another process (same message as qdrant-client's local mode)."""


class Catalog:
    """Collections (name -> vector size, distance, metadata, optimizer threshold) and aliases
    (alias -> collection) of the store in ``root``, held under the folder's lock until :meth:`close`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        if (root / "meta.json").exists() and not (root / CATALOG).exists():
            raise StorageFormatError(
                f"{root} holds qdrant-client local-mode data, which the embedded engine cannot "
                "read: set QDRANT_LOCAL_ENGINE=python to keep using it, or point QDRANT_PATH at a new "
                "folder and run a full rebuild (mode=full) to fill it"
            )
        self._lock = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            raise EdgeStorageLocked(
                f"Storage folder {root} is already accessed by another instance of the embedded Qdrant"
            ) from None
        path = root / CATALOG
        data = json.loads(path.read_text()) if path.exists() else {"collections": {}, "aliases": {}}
        self.collections: dict[str, dict[str, Any]] = data["collections"]
        self.aliases: dict[str, str] = data["aliases"]

    @property
    def closed(self) -> bool:
        return self._lock < 0

    def save(self) -> None:
        temporary = self.root / f"{CATALOG}.tmp"
        with open(temporary, "w") as out:
            json.dump(
                {"aliases": self.aliases, "collections": self.collections}, out, indent=1, sort_keys=True
            )
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.root / CATALOG)

    def resolve(self, name: str) -> str:
        """The collection ``name`` is, or that the alias ``name`` points at (as a server does)."""
        name = self.aliases.get(name, name)
        if name not in self.collections:
            raise ValueError(f"Collection {name} not found")
        return name

    def entry(self, name: str) -> dict[str, Any]:
        return self.collections[self.resolve(name)]

    def close(self) -> None:
        """Release the folder's lock."""
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1
