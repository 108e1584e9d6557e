"""The blue/green lifecycle on every store adapter, through the store protocol only.

The same scenarios - swap, the swap's move-back, retention, rollback and the whole-pair agreement
check - run on Qdrant (the embedded engine), Elasticsearch (the emulator, or ``ES_URL``) and
``tests/memory_store.MemoryStore``, a test-only third adapter: a new store passes these tests
without any change to ``embedding_pipeline.generations``. Writes into a generation are the one
store-specific part (a stage's sink does them), so each store brings a small ``put`` of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from embedding_pipeline.generations.agreement import verify_pair
from embedding_pipeline.generations.lifecycle import (
    RollbackError,
    SwapError,
    describe,
    retain,
    rollback,
    swap,
)
from embedding_pipeline.stores.protocol import GenerationStore, StoreAlias, Stores
from memory_store import MemoryStore

DIM = 8
MODEL = {"model_name": "tiny", "model_version": 1, "dim": DIM}
OTHER_MODEL = {"model_name": "other", "model_version": 2, "dim": DIM}
KIND = "keyword"
ID_FIELD = "keyword_id"


@dataclass
class Subject:
    """One store under test: its adapter, what it creates generations with, and how to write."""

    store: GenerationStore
    put: Callable[[str, list[str]], None]

    def schema(self, identity: dict[str, Any]) -> Any:
        if self.store.system == "es":  # the mapping carries the model in _meta
            return {"_meta": dict(identity), "properties": {ID_FIELD: {"type": "keyword"}}}
        return None

    def create(self, alias: str, number: int, identity: dict[str, Any] = MODEL) -> str:
        return self.store.create_generation(alias, number, self.schema(identity), identity)


def _qdrant(stack: ExitStack, tmp_path: Any) -> Subject:
    from embedding_pipeline.runs.staging import point_id
    from embedding_pipeline.stores.qdrant.adapter import open_store
    from embedding_pipeline.stores.qdrant.settings import QdrantSettings
    from qdrant_client.http import models

    store = stack.enter_context(open_store(QdrantSettings(path=tmp_path / "qdrant")))
    rng = np.random.default_rng(0)

    def put(name: str, ids: list[str]) -> None:
        points = [
            models.PointStruct(
                id=point_id(KIND, i), vector=rng.normal(size=DIM).tolist(), payload={ID_FIELD: i}
            )
            for i in ids
        ]
        store.client.upsert(name, points)

    return Subject(store, put)


def _es(stack: ExitStack, es_url: str) -> Subject:
    from embedding_pipeline.stores.elasticsearch.adapter import open_store
    from embedding_pipeline.stores.elasticsearch.settings import EsSettings

    store = stack.enter_context(open_store(EsSettings(hosts=(es_url,))))

    def put(name: str, ids: list[str]) -> None:
        for i in ids:
            store.client.index(index=name, id=i, document={ID_FIELD: i})
        store.client.indices.refresh(index=name)

    return Subject(store, put)


def _memory() -> Subject:
    store = MemoryStore()
    return Subject(store, lambda name, ids: store.put(name, ids, ID_FIELD))


@pytest.fixture(params=["qdrant", "es", "memory"])
def subject(request, tmp_path, monkeypatch) -> Iterator[Subject]:
    monkeypatch.setenv("EMBEDDING_PIPELINE_HOME", str(tmp_path / "home"))  # retention forgets state here
    with ExitStack() as stack:
        if request.param == "qdrant":
            yield _qdrant(stack, tmp_path)
        elif request.param == "es":
            yield _es(stack, request.getfixturevalue("es_url"))
        else:
            yield _memory()


@pytest.fixture
def alias() -> str:
    return f"life{uuid.uuid4().hex[:8]}"  # the ES emulator is shared by the module's tests


def _partner() -> MemoryStore:
    """A second store beside the one under test (a memory store under another system name)."""
    partner = MemoryStore()
    partner.system = "partner"
    return partner


def test_a_swap_moves_the_alias_and_records_which_generations_served(subject, alias):
    store = StoreAlias(subject.store.system, alias)
    stores = Stores({store.system: subject.store})
    g1, g2 = subject.create(alias, 1), subject.create(alias, 2)
    assert subject.create(alias, 2) == g2  # a retried prepare reuses its generation
    previous = subject.store.begin_bulk_load(g2)
    subject.put(g1, ["a", "b"])
    subject.put(g2, ["a", "b", "c"])
    subject.store.end_bulk_load(g2, previous)
    assert stores.generations(store) == {1: g1, 2: g2} and stores.live(store) is None

    assert swap(stores, [(store, g1)]) == [{"store": store.key, "from": None, "to": g1}]
    assert swap(stores, [(store, g2)]) == [{"store": store.key, "from": g1, "to": g2}]
    assert stores.live(store) == g2 and stores.count(store, g2) == 3
    assert all(stores.record(store, name).get("promoted_at") for name in (g1, g2))
    assert stores.identity(store, g2) == ("tiny", "1", str(DIM))
    rows = describe(stores, [store])
    assert [(r["name"], r["live"], r["count"]) for r in rows] == [(g1, False, 2), (g2, True, 3)]


def test_a_failed_swap_moves_the_stores_already_moved_back(subject, alias):
    partner = _partner()
    stores = Stores({subject.store.system: subject.store, partner.system: partner})
    mine, theirs = StoreAlias(subject.store.system, alias), StoreAlias(partner.system, alias)
    g1, g2 = subject.create(alias, 1), subject.create(alias, 2)
    p1, p2 = (partner.create_generation(alias, n, None, MODEL) for n in (1, 2))
    swap(stores, [(mine, g1), (theirs, p1)])

    partner.fail_moves = True
    with pytest.raises(SwapError, match=f"{mine.key} moved back to {g1}"):
        swap(stores, [(mine, g2), (theirs, p2)])
    assert stores.live(mine) == g1 and stores.live(theirs) == p1

    fresh = f"{alias}x"  # no alias before: undoing the move removes it
    subject.create(fresh, 1)
    partner.create_generation(fresh, 1, None, MODEL)
    with pytest.raises(SwapError):
        swap(
            stores,
            [
                (StoreAlias(mine.system, fresh), f"{fresh}-g1"),
                (StoreAlias(partner.system, fresh), f"{fresh}-g1"),
            ],
        )
    assert stores.live(StoreAlias(mine.system, fresh)) is None


def test_retention_keeps_the_live_generation_the_newest_that_served_and_newer_builds(subject, alias):
    store = StoreAlias(subject.store.system, alias)
    stores = Stores({store.system: subject.store})
    names = {n: subject.create(alias, n) for n in range(1, 6)}
    for n in (2, 3, 4):  # g1 never served (a failed gate); g5 is a newer build
        swap(stores, [(store, names[n])])

    dropped = retain(stores, [store], keep=2)
    assert dropped == [f"{store.key}/{names[1]}", f"{store.key}/{names[2]}"]
    assert stores.generations(store) == {3: names[3], 4: names[4], 5: names[5]}
    assert retain(stores, [store], keep=1) == [f"{store.key}/{names[3]}"]
    with pytest.raises(Exception, match="points at it"):
        subject.store.drop(alias, names[4])


def test_rollback_returns_to_the_previous_generation_and_refuses_a_model_mismatch(subject, alias):
    partner = _partner()
    stores = Stores({subject.store.system: subject.store, partner.system: partner})
    mine, theirs = StoreAlias(subject.store.system, alias), StoreAlias(partner.system, alias)
    with pytest.raises(RollbackError, match="no live generation"):
        rollback(stores, [mine])
    g1, g2 = subject.create(alias, 1), subject.create(alias, 2)
    swap(stores, [(mine, g1)])
    with pytest.raises(RollbackError, match="no earlier generation that served"):
        rollback(stores, [mine])
    swap(stores, [(mine, g2)])

    p1 = partner.create_generation(alias, 1, None, OTHER_MODEL)  # the other stage's live model
    swap(stores, [(theirs, p1)])
    with pytest.raises(RollbackError, match="do not share one model"):
        rollback(stores, [mine], others=[theirs])
    assert stores.live(mine) == g2

    assert rollback(stores, [mine]) == [{"store": mine.key, "from": g2, "to": g1}]
    assert stores.live(mine) == g1


def test_agreement_finds_the_ids_only_one_store_holds(subject, alias):
    partner = _partner()
    mine = subject.create(alias, 1)
    theirs = partner.create_generation(alias, 1, None, MODEL)
    subject.put(mine, ["1", "2", "3", "4", "5"])
    partner.put(theirs, ["1", "2", "3", "4", "9"], ID_FIELD)

    assert subject.store.present(mine, KIND, ["1", "5", "9"]) == {"1", "5"}
    assert subject.store.canary_failures(mine, KIND, ["2", "9"]) == [f"{mine}: 9 absent"]
    result = verify_pair((subject.store, partner), (mine, theirs), ID_FIELD)
    report = result.to_report()
    assert not result.ok and result.compared == 6
    assert report[f"only_{subject.store.system}"] == 1 and report[f"examples_{subject.store.system}"] == ["5"]
    assert report["only_partner"] == 1 and report["examples_partner"] == ["9"]
    assert f"1 only in {subject.store.title} (e.g. 5)" in result.describe()
