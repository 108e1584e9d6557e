"""Qdrant behind :class:`~embedding_pipeline.stores.protocol.GenerationStore`: a collection per
generation, one alias, the model in the collection's metadata (``collections``, ``generations``),
bulk load = HNSW indexing deferred while a generation fills."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from qdrant_client.client_base import QdrantBase
from qdrant_client.http import models

from embedding_pipeline.retry import RetryPolicy
from embedding_pipeline.runs.staging import point_id
from embedding_pipeline.stores.qdrant import collections, generations, points
from embedding_pipeline.stores.qdrant.settings import QdrantSettings

CANARY_SEARCH_DEPTH = 50  # a canary's own vector must be among this many best hits (ties included)


class QdrantStore:
    """The lifecycle's calls on one open Qdrant client."""

    system = "qdrant"
    title = "Qdrant"

    def __init__(self, client: QdrantBase, retry: RetryPolicy = RetryPolicy()) -> None:
        self.client, self.retry = client, retry

    def generations(self, alias: str) -> dict[int, str]:
        return generations.list_generations(self.client, alias)

    def live(self, alias: str) -> str | None:
        return collections.resolve_alias(self.client, alias)

    def record(self, name: str) -> dict[str, Any]:
        return generations.generation_record(self.client, name)

    def count(self, name: str) -> int:
        return collections.count_points(self.client, name)

    def vector_size(self, name: str) -> int | None:
        return collections.collection_target(self.client, name).dim

    def create_generation(self, alias: str, number: int, schema: Any, identity: Mapping[str, Any]) -> str:
        return collections.create_generation(self.client, alias, number, **identity, schema=schema).name

    def begin_bulk_load(self, name: str) -> int | None:
        return generations.begin_bulk_load(self.client, name)

    def end_bulk_load(self, name: str, previous: Any) -> None:
        generations.end_bulk_load(self.client, name, previous)

    def move(self, alias: str, name: str) -> str | None:
        return generations.swap_alias(self.client, alias, name, self.retry)

    def remove_alias(self, alias: str, name: str) -> None:
        generations.remove_alias(self.client, alias, self.retry)

    def mark_promoted(self, name: str, when: str) -> None:
        generations.mark_promoted(self.client, name, when)

    def drop(self, alias: str, name: str) -> None:
        generations.drop_collection(self.client, alias, name)

    def present(self, name: str, kind: str, ids: Sequence[str]) -> set[str]:
        by_point = {point_id(kind, i): i for i in ids}
        return {by_point[p] for p in points.present(self.client, name, list(by_point), retry=self.retry)}

    def ids(self, name: str, id_field: str) -> Iterator[str]:
        for payload in points.scroll_matching(self.client, name, models.Filter(), fields=[id_field]):
            yield str(payload.get(id_field))

    def canary_failures(self, name: str, kind: str, ids: Sequence[str]) -> list[str]:
        """Each canary's point comes back by id, and a search with its own vector finds it among
        the best (ties within 1e-5 of the best score count: duplicates of one text share a vector)."""
        from embedding_pipeline.stores.qdrant.search import SearchOptions, search

        wanted = {point_id(kind, i): i for i in ids}
        stored = points.retrieve(self.client, name, list(wanted), retry=self.retry)
        failed = [f"{name}: {i} absent" for pid, i in wanted.items() if pid not in stored]
        found = [(pid, i) for pid, i in wanted.items() if pid in stored]
        if not found:
            return failed
        vectors = np.stack([stored[pid][1] for pid, _ in found])
        hits_per_id = search(self.client, name, vectors, SearchOptions(CANARY_SEARCH_DEPTH), retry=self.retry)
        for (_, business_id), hits in zip(found, hits_per_id, strict=True):
            best = hits[0].score if hits else np.inf
            if business_id not in {str(h.payload.get(f"{kind}_id")) for h in hits if h.score >= best - 1e-5}:
                failed.append(f"{name}: a search with {business_id}'s vector does not find it")
        return failed


def default_settings() -> QdrantSettings:
    return QdrantSettings.from_env()


@contextmanager
def open_store(settings: QdrantSettings) -> Iterator[QdrantStore]:
    """A :class:`QdrantStore` over a client for ``settings``, closed after."""
    from embedding_pipeline.stores.qdrant.client import open_client

    with open_client(settings) as client:
        yield QdrantStore(client, settings.retry)
