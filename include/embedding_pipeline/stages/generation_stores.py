"""The stores a stage's generations live in, behind one interface: the aliases a stage writes
(:class:`StoreAlias`) and, per store, list / resolve / count / move an alias / drop a generation
(:class:`Stores`, over ``stores.qdrant.generations`` and ``stores.elasticsearch.generations``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from embedding_pipeline.errors import ConfigError
from embedding_pipeline.retry import RetryPolicy

SYSTEMS = ("qdrant", "es")
IDENTITY = ("model_name", "model_version", "dim")


@dataclass(frozen=True)
class StoreAlias:
    """One alias of one store (``system``: qdrant or es)."""

    system: str
    alias: str

    def __post_init__(self) -> None:
        if self.system not in SYSTEMS:
            raise ConfigError(f"store system must be one of {SYSTEMS}, got {self.system!r}")

    @property
    def key(self) -> str:
        return f"{self.system}:{self.alias}"


class Stores:
    """The two clients, and the per-store operations this module needs, behind one interface."""

    def __init__(self, qdrant: Any, es: Any, retry: RetryPolicy = RetryPolicy()) -> None:
        self.qdrant, self.es, self.retry = qdrant, es, retry

    def _module(self, store: StoreAlias) -> Any:
        if store.system == "qdrant":
            from embedding_pipeline.stores.qdrant import generations as qdrant_generations

            return qdrant_generations
        from embedding_pipeline.stores.elasticsearch import generations as es_generations

        return es_generations

    def _client(self, store: StoreAlias) -> Any:
        return self.qdrant if store.system == "qdrant" else self.es

    def generations(self, store: StoreAlias) -> dict[int, str]:
        return self._module(store).list_generations(self._client(store), store.alias)

    def live(self, store: StoreAlias) -> str | None:
        if store.system == "qdrant":
            from embedding_pipeline.stores.qdrant.collections import resolve_alias

            return resolve_alias(self.qdrant, store.alias)
        from embedding_pipeline.stores.elasticsearch.indices import write_index

        return write_index(self.es, store.alias)

    def record(self, store: StoreAlias, name: str) -> dict[str, Any]:
        return self._module(store).generation_record(self._client(store), name)

    def identity(self, store: StoreAlias, name: str) -> tuple[str, str, str]:
        record = self.record(store, name)
        return tuple(str(record.get(key)) for key in IDENTITY)  # type: ignore[return-value]

    def count(self, store: StoreAlias, name: str) -> int:
        if store.system == "qdrant":
            from embedding_pipeline.stores.qdrant.collections import count_points

            return count_points(self.qdrant, name)
        from embedding_pipeline.stores.elasticsearch.indices import count_docs

        return count_docs(self.es, name)

    def move(self, store: StoreAlias, name: str) -> str | None:
        if store.system == "qdrant":
            return self._module(store).swap_alias(self.qdrant, store.alias, name, self.retry)
        return self._module(store).swap_alias(self.es, store.alias, name)

    def unmove(self, store: StoreAlias, previous: str | None, name: str) -> None:
        if previous is not None:
            self.move(store, previous)
        elif store.system == "qdrant":
            self._module(store).remove_alias(self.qdrant, store.alias, self.retry)
        else:
            self._module(store).remove_alias(self.es, store.alias, name)

    def mark_promoted(self, store: StoreAlias, name: str, when: str) -> None:
        self._module(store).mark_promoted(self._client(store), name, when)

    def drop(self, store: StoreAlias, name: str) -> None:
        if store.system == "qdrant":
            self._module(store).drop_collection(self.qdrant, store.alias, name)
        else:
            self._module(store).drop_index(self.es, store.alias, name)


@contextmanager
def open_stores(
    qdrant_settings: Any = None, es_settings: Any = None, *, qdrant: bool = True, es: bool = True
) -> Iterator[Stores]:
    """:class:`Stores` over the clients a stage uses (``qdrant``/``es`` False: that one is not
    opened, e.g. a keyword run that writes one store)."""
    with ExitStack() as stack:
        qdrant_client = es_client = None
        if qdrant:
            from embedding_pipeline.stores.qdrant.client import open_client
            from embedding_pipeline.stores.qdrant.settings import QdrantSettings

            qdrant_settings = qdrant_settings or QdrantSettings.from_env()
            qdrant_client = stack.enter_context(open_client(qdrant_settings))
        if es:
            from embedding_pipeline.stores.elasticsearch.client import open_es

            es_client = stack.enter_context(open_es(es_settings))
        retry = qdrant_settings.retry if qdrant else RetryPolicy()
        yield Stores(qdrant_client, es_client, retry)
