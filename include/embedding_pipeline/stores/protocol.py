"""What the generations lifecycle needs from a store, as one :class:`GenerationStore` protocol, and
:class:`Stores`, the stores a task opened, addressed by :class:`StoreAlias`.

Each store implements the protocol in one adapter module (``stores/qdrant/adapter.py``,
``stores/elasticsearch/adapter.py``) over its own client functions; :mod:`stores.registry` names
the adapters. The lifecycle (``embedding_pipeline.generations``) calls nothing else, so a third
store (pgvector, OpenSearch) is a new adapter plus its settings - the test suite shows it with an
in-memory adapter that passes the same lifecycle tests as Qdrant and Elasticsearch.

Names: an *alias* is what readers address (``keywords``); a *generation* is the physical
collection or index behind it (``keywords-g3``); a store's *record* of a generation is what the
pipeline wrote into it (model name, version, dim, ``promoted_at`` once an alias pointed at it).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from embedding_pipeline.errors import ConfigError

IDENTITY = ("model_name", "model_version", "dim")
Identity = tuple[str, str, str]  # (model name, version, dim) as text: comparable across stores


@dataclass(frozen=True)
class StoreAlias:
    """One alias of one store; ``system`` names the adapter (``qdrant``, ``es``, ...)."""

    system: str
    alias: str

    @property
    def key(self) -> str:
        return f"{self.system}:{self.alias}"

    @classmethod
    def from_key(cls, key: str) -> StoreAlias:
        system, _, alias = key.partition(":")
        return cls(system, alias)


class GenerationStore(Protocol):
    """One store's side of the blue/green lifecycle. Every call is by physical name except those
    that resolve or move an alias; each raises a ``PipelineError`` with a readable message."""

    system: str  # the key in :class:`Stores` and in ``StoreAlias.system``
    title: str  # how messages name the store ("Qdrant")
    client: Any  # the store's own client, for stage code that knows the store

    def generations(self, alias: str) -> dict[int, str]:
        """Generation number -> physical name, for every ``<alias>-g<N>`` that exists, ascending."""
        ...

    def live(self, alias: str) -> str | None:
        """The physical name ``alias`` points at (None: no such alias)."""
        ...

    def record(self, name: str) -> dict[str, Any]:
        """What the pipeline recorded in a generation (model, dim, ``promoted_at``)."""
        ...

    def count(self, name: str) -> int:
        """Exact number of records (points, documents) in a generation."""
        ...

    def vector_size(self, name: str) -> int | None:
        """The vector size a generation is configured with (None: the store holds no vectors)."""
        ...

    def create_generation(self, alias: str, number: int, schema: Any, identity: Mapping[str, Any]) -> str:
        """Create ``<alias>-g<number>`` without the alias, recording ``identity``; an existing one
        of that name (a retried task) is checked against ``schema`` and reused. Its physical name."""
        ...

    def begin_bulk_load(self, name: str) -> Any:
        """Switch a generation no reader uses to bulk-load settings; what
        :meth:`end_bulk_load` restores (small and JSON-able: it travels through XCom)."""
        ...

    def end_bulk_load(self, name: str, previous: Any) -> None: ...

    def move(self, alias: str, name: str) -> str | None:
        """Point ``alias`` at ``name`` alone, in one atomic request; what it pointed at before."""
        ...

    def remove_alias(self, alias: str, name: str) -> None:
        """Take ``alias`` off ``name`` (undoing a move that created the alias)."""
        ...

    def mark_promoted(self, name: str, when: str) -> None:
        """Record that an alias pointed at ``name`` (kept from the first time)."""
        ...

    def drop(self, alias: str, name: str) -> None:
        """Delete a generation; refused while ``alias`` points at it."""
        ...

    def present(self, name: str, kind: str, ids: Sequence[str]) -> set[str]:
        """Which business ids (of entity ``kind``) a generation holds, looked up by id."""
        ...

    def ids(self, name: str, id_field: str) -> Iterator[str]:
        """Every business id a generation holds (``id_field``), streamed."""
        ...

    def canary_failures(self, name: str, kind: str, ids: Sequence[str]) -> list[str]:
        """What is wrong with a few known ids in a new generation: each must come back by id (and,
        where the store holds vectors, be found by a search with its own vector); one line per
        failure, empty when all answer."""
        ...


class Stores:
    """The stores a task opened, by system, with the lifecycle's per-alias operations."""

    def __init__(self, adapters: Mapping[str, GenerationStore]) -> None:
        self._adapters = dict(adapters)

    def __getitem__(self, system: str) -> GenerationStore:
        try:
            return self._adapters[system]
        except KeyError:
            raise ConfigError(
                f"store {system!r} is not open here (open: {', '.join(self._adapters) or 'none'})"
            ) from None

    def __contains__(self, system: object) -> bool:
        return system in self._adapters

    def client(self, system: str) -> Any:
        return self[system].client

    def generations(self, store: StoreAlias) -> dict[int, str]:
        return self[store.system].generations(store.alias)

    def live(self, store: StoreAlias) -> str | None:
        return self[store.system].live(store.alias)

    def record(self, store: StoreAlias, name: str) -> dict[str, Any]:
        return self[store.system].record(name)

    def identity(self, store: StoreAlias, name: str) -> Identity:
        record = self.record(store, name)
        model_name, version, dim = (str(record.get(key)) for key in IDENTITY)
        return model_name, version, dim

    def count(self, store: StoreAlias, name: str) -> int:
        return self[store.system].count(name)

    def move(self, store: StoreAlias, name: str) -> str | None:
        return self[store.system].move(store.alias, name)

    def unmove(self, store: StoreAlias, previous: str | None, name: str) -> None:
        """Undo :meth:`move`: back to ``previous``, or no alias at all when there was none."""
        if previous is not None:
            self.move(store, previous)
        else:
            self[store.system].remove_alias(store.alias, name)

    def mark_promoted(self, store: StoreAlias, name: str, when: str) -> None:
        self[store.system].mark_promoted(name, when)

    def drop(self, store: StoreAlias, name: str) -> None:
        self[store.system].drop(store.alias, name)
