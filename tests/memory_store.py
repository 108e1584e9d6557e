"""A test-only third store: :class:`MemoryStore` implements
:class:`~embedding_pipeline.stores.protocol.GenerationStore` over plain dicts.

It exists to show that the generations lifecycle is store-agnostic: the lifecycle tests run the
same swap / rollback / retain / agreement scenarios on Qdrant, Elasticsearch and this adapter, and
nothing in ``embedding_pipeline.generations`` knows it. It is a fake by design (no engine to run),
so it is never used to test a real store's behaviour. ``fail_moves`` makes every alias move fail,
for the swap's move-back path.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from embedding_pipeline.errors import PipelineError


@dataclass
class _Generation:
    meta: dict[str, Any]
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    bulk_loading: bool = False


class MemoryStore:
    """Generations as dicts, aliases as a dict; ``system`` is ``memory``."""

    system = "memory"
    title = "Memory"

    def __init__(self) -> None:
        self.client = self  # nothing store-specific to hand to stage code
        self.collections: dict[str, _Generation] = {}
        self.aliases: dict[str, str] = {}
        self.fail_moves = False

    def put(self, name: str, ids: Sequence[str], id_field: str) -> None:
        """Write records (what a stage's sink would do)."""
        for i in ids:
            self.collections[name].records[i] = {id_field: i}

    def generations(self, alias: str) -> dict[int, str]:
        pattern = re.compile(rf"^{re.escape(alias)}-g(\d+)$")
        found = {int(m.group(1)): name for name in self.collections if (m := pattern.match(name))}
        return dict(sorted(found.items()))

    def live(self, alias: str) -> str | None:
        return self.aliases.get(alias)

    def record(self, name: str) -> dict[str, Any]:
        return dict(self._get(name).meta)

    def count(self, name: str) -> int:
        return len(self._get(name).records)

    def vector_size(self, name: str) -> int | None:
        return int(self._get(name).meta["dim"])

    def create_generation(self, alias: str, number: int, schema: Any, identity: Mapping[str, Any]) -> str:
        name = f"{alias}-g{number}"
        existing = self.collections.get(name)
        if existing is not None and any(existing.meta.get(k) != v for k, v in identity.items()):
            raise PipelineError(f"{name} exists with another model: {existing.meta}")
        self.collections.setdefault(name, _Generation(dict(identity)))
        return name

    def begin_bulk_load(self, name: str) -> bool:
        previous = self._get(name).bulk_loading
        self._get(name).bulk_loading = True
        return previous

    def end_bulk_load(self, name: str, previous: Any) -> None:
        self._get(name).bulk_loading = bool(previous)

    def move(self, alias: str, name: str) -> str | None:
        if self.fail_moves:
            raise PipelineError(f"memory store refuses to move {alias!r}")
        self._get(name)
        previous = self.aliases.get(alias)
        self.aliases[alias] = name
        return previous

    def remove_alias(self, alias: str, name: str) -> None:
        self.aliases.pop(alias, None)

    def mark_promoted(self, name: str, when: str) -> None:
        self._get(name).meta.setdefault("promoted_at", when)

    def drop(self, alias: str, name: str) -> None:
        if self.aliases.get(alias) == name:
            raise PipelineError(f"refusing to drop {name!r}: alias {alias!r} points at it")
        del self.collections[name]

    def present(self, name: str, kind: str, ids: Sequence[str]) -> set[str]:
        return set(ids) & set(self._get(name).records)

    def ids(self, name: str, id_field: str) -> Iterator[str]:
        return (str(r[id_field]) for r in self._get(name).records.values())

    def canary_failures(self, name: str, kind: str, ids: Sequence[str]) -> list[str]:
        return [f"{name}: {i} absent" for i in ids if i not in self._get(name).records]

    def _get(self, name: str) -> _Generation:
        target = self.aliases.get(name, name)
        if target not in self.collections:
            raise PipelineError(f"memory store has no {name!r}")
        return self.collections[target]
