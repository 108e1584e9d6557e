"""Elasticsearch behind :class:`~embedding_pipeline.stores.protocol.GenerationStore`: an index per
generation, one alias (the write index), the model in the index ``_meta`` (``generations``,
``indices``), bulk load = refresh off and no replicas while a generation fills (``bulk_load``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from elasticsearch import Elasticsearch

from embedding_pipeline.stores.elasticsearch import bulk_load, generations, indices, read
from embedding_pipeline.stores.elasticsearch.settings import EsSettings


class EsStore:
    """The lifecycle's calls on one open Elasticsearch client. Document ids are the business ids."""

    system = "es"
    title = "Elasticsearch"

    def __init__(self, client: Elasticsearch) -> None:
        self.client = client

    def generations(self, alias: str) -> dict[int, str]:
        return generations.list_generations(self.client, alias)

    def live(self, alias: str) -> str | None:
        return indices.write_index(self.client, alias)

    def record(self, name: str) -> dict[str, Any]:
        return generations.generation_record(self.client, name)

    def count(self, name: str) -> int:
        return indices.count_docs(self.client, name)

    def vector_size(self, name: str) -> int | None:
        return None

    def create_generation(self, alias: str, number: int, schema: Any, identity: Mapping[str, Any]) -> str:
        return generations.create_generation(self.client, alias, number, schema)

    def begin_bulk_load(self, name: str) -> dict[str, Any]:
        return bulk_load.begin_bulk_load(self.client, name)

    def end_bulk_load(self, name: str, previous: Any) -> None:
        bulk_load.end_bulk_load(self.client, name, previous)

    def move(self, alias: str, name: str) -> str | None:
        return generations.swap_alias(self.client, alias, name)

    def remove_alias(self, alias: str, name: str) -> None:
        generations.remove_alias(self.client, alias, name)

    def mark_promoted(self, name: str, when: str) -> None:
        generations.mark_promoted(self.client, name, when)

    def drop(self, alias: str, name: str) -> None:
        generations.drop_index(self.client, alias, name)

    def present(self, name: str, kind: str, ids: Sequence[str]) -> set[str]:
        return read.present_ids(self.client, name, ids)

    def ids(self, name: str, id_field: str) -> Iterator[str]:
        return read.iter_field_values(self.client, name, id_field, read.SAMPLE_PAGE_SIZE)

    def canary_failures(self, name: str, kind: str, ids: Sequence[str]) -> list[str]:
        """Each canary's document comes back by id (a real-time get: no refresh needed)."""
        return [f"{name}: {i} absent" for i in ids if read.get_document(self.client, name, i) is None]


def default_settings() -> EsSettings:
    return EsSettings.from_env()


@contextmanager
def open_store(settings: EsSettings) -> Iterator[EsStore]:
    """An :class:`EsStore` over a client for ``settings``, closed after."""
    from embedding_pipeline.stores.elasticsearch.client import open_es

    with open_es(settings) as es:
        yield EsStore(es)
