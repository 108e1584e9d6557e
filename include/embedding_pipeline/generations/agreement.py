"""Do two stores (Qdrant and Elasticsearch, or any two adapters) hold the same ids? A row must be in
every store or in none: the linker returns keyword ids from Qdrant that the product documents
then name, so an id only one store holds is a link to nothing (or a keyword nobody can find by text).

Two scopes:

- :func:`check_written`: after a run, the ids its staged chunks wrote (upserts and deletes alike),
  looked up by id in both stores. Exact up to ``EXACT_LIMIT`` distinct ids, above that the
  ``EXACT_LIMIT`` ids with the smallest hash (the same sample on every re-run). ``finalize`` runs it
  before the state commit and fails the run on a difference, so a re-run writes those rows again.
- :func:`verify_pair`: a whole collection/index pair, on demand (``embedding-pipeline verify``).
  Memory stays at 8 bytes an id: each store's ids become sorted 64-bit hashes that are compared,
  and only differing hashes are mapped back to ids in a second pass. Two distinct ids share a hash
  with probability ~n²/2⁶⁵ (about 3e-4 at 100M ids): the price of not holding every id as text.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedding_pipeline.errors import PipelineError
from embedding_pipeline.runs.staging import STAGED
from embedding_pipeline.runs.storage import parquet_file
from embedding_pipeline.stores.protocol import GenerationStore
from embedding_pipeline.stores.registry import StoreSettings, open_stores

EXACT_LIMIT = 50_000
SHOWN = 20  # ids listed per store; the counts are always complete


class StoresDisagreeError(PipelineError):
    """Two stores hold different ids."""


@dataclass(frozen=True)
class Side:
    """One store of a comparison: what it is, what was compared, what only it holds."""

    system: str  # the adapter's system (qdrant, es, ...)
    title: str  # how messages name it
    name: str  # the collection / index compared (an alias or a physical name)
    only: int  # ids only this store holds
    examples: list[str]  # up to SHOWN of them


@dataclass(frozen=True)
class Agreement:
    """The outcome of one comparison of two stores, as reports and the ``verify`` command show it."""

    scope: str  # "written": the ids a run wrote; "whole": every id of the pair
    sides: tuple[Side, Side]
    compared: int  # distinct ids looked at
    sampled: bool  # True when the run wrote more than EXACT_LIMIT distinct ids

    @property
    def ok(self) -> bool:
        return not any(side.only for side in self.sides)

    def describe(self) -> str:
        names = " and ".join(side.name for side in self.sides)
        what = f"{self.compared} {'sampled ' if self.sampled else ''}ids in {names}"
        if self.ok:
            return f"{what}: the same"
        parts = [
            f"{side.only} only in {side.title} (e.g. {', '.join(side.examples)})"
            for side in self.sides
            if side.only
        ]
        return f"{what}: " + "; ".join(parts)

    def to_report(self) -> dict[str, Any]:
        """JSON for the run report: ``<system>`` (name compared), ``only_<system>`` and
        ``examples_<system>`` per side, with the totals."""
        report: dict[str, Any] = {"scope": self.scope, "compared": self.compared, "sampled": self.sampled}
        for side in self.sides:
            report |= {
                side.system: side.name,
                f"only_{side.system}": side.only,
                f"examples_{side.system}": side.examples,
            }
        return {**report, "ok": self.ok, "detail": self.describe()}


def _hash(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8).digest())


def staged_ids(staged_paths: Iterable[str]) -> Iterator[str]:
    """Every id the staged chunks hold (one narrow column read per chunk)."""
    for path in staged_paths:
        yield from parquet_file(path, STAGED).read(columns=["id"]).column(0).to_pylist()


def choose(ids: Iterable[str], limit: int = EXACT_LIMIT) -> tuple[list[str], bool]:
    """The distinct ``ids``, or the ``limit`` of them with the smallest hash when there are more
    (and True): memory bounded by ``limit`` whatever the run's size."""
    heap: list[tuple[int, str]] = []  # max-heap by negated hash of the chosen ids
    chosen: set[str] = set()
    sampled = False
    for value in ids:
        if value in chosen:
            continue
        key = -_hash(value)
        if len(heap) < limit:
            heapq.heappush(heap, (key, value))
            chosen.add(value)
        elif key > heap[0][0]:
            sampled = True
            chosen.discard(heapq.heapreplace(heap, (key, value))[1])
            chosen.add(value)
        else:
            sampled = True
    return sorted(chosen), sampled


def _agreement(
    scope: str,
    stores: tuple[GenerationStore, GenerationStore],
    names: tuple[str, str],
    compared: int,
    sampled: bool,
    only: tuple[Sequence[str], Sequence[str]],
) -> Agreement:
    sides = tuple(
        Side(store.system, store.title, name, len(ids), sorted(ids)[:SHOWN])
        for store, name, ids in zip(stores, names, only, strict=True)
    )
    return Agreement(scope, sides, compared, sampled)  # type: ignore[arg-type]


def check_written(
    stores: tuple[GenerationStore, GenerationStore],
    names: tuple[str, str],
    kind: str,
    staged_paths: Iterable[str],
) -> Agreement:
    """Are the ids the run's staged chunks wrote held by both stores, or by neither?"""
    ids, sampled = choose(staged_ids(staged_paths))
    first, second = (store.present(name, kind, ids) for store, name in zip(stores, names, strict=True))
    return _agreement("written", stores, names, len(ids), sampled, (first - second, second - first))


def verify_pair(
    stores: tuple[GenerationStore, GenerationStore], names: tuple[str, str], id_field: str
) -> Agreement:
    """Every id of one store's collection/index against every id of another's (aliases or physical
    names); ``id_field`` is the payload / document field holding the business id."""

    def hashes(values: Iterator[str]) -> np.ndarray:
        return np.unique(np.fromiter((_hash(v) for v in values), dtype=np.uint64))

    first, second = (hashes(store.ids(name, id_field)) for store, name in zip(stores, names, strict=True))
    only = (np.setdiff1d(first, second, assume_unique=True), np.setdiff1d(second, first, assume_unique=True))

    def examples(store: GenerationStore, name: str, wanted: np.ndarray) -> list[str]:
        if not len(wanted):
            return []
        lookup = set(wanted.tolist())
        found = (v for v in store.ids(name, id_field) if _hash(v) in lookup)
        return [v for _, v in zip(range(SHOWN), found, strict=False)]

    sides = tuple(
        Side(store.system, store.title, name, len(ids), sorted(examples(store, name, ids)))
        for store, name, ids in zip(stores, names, only, strict=True)
    )
    return Agreement("whole", sides, len(np.union1d(first, second)), False)  # type: ignore[arg-type]


def check_run(
    report: dict[str, Any],
    run_dir: str,
    embedded: list[dict[str, Any]],
    names: Mapping[str, str | None],
    kind: str,
    settings: StoreSettings | None = None,
) -> dict[str, Any]:
    """The finalize step between the report and the state commit: when the run wrote two stores
    (``names``: store system -> the collection / index it wrote), :func:`check_written`; the report
    gains an ``agreement`` section, and a difference fails the run (:class:`StoresDisagreeError`)
    before the state commit, so a re-run of the same dates writes those rows again."""
    written = {system: name for system, name in names.items() if name}
    if len(written) != 2:
        return report
    from embedding_pipeline.runs.report import write_report

    staged = [e["staged"] for e in embedded if e.get("staged")]
    pair = tuple(written.values())
    with open_stores(settings, written) as stores:
        adapters = tuple(stores[system] for system in written)
        if staged:
            agreement = check_written(adapters, pair, kind, staged)  # type: ignore[arg-type]
        else:  # nothing written
            agreement = _agreement("written", adapters, pair, 0, False, ((), ()))  # type: ignore[arg-type]
    report = {**report, "agreement": agreement.to_report()}
    if not agreement.ok:
        report["status"] = "failed"
        report["problems"] = [*report["problems"], f"stores disagree: {agreement.describe()}"]
    write_report(run_dir, report)
    if not agreement.ok:
        raise StoresDisagreeError(
            f"{' and '.join(side.title for side in agreement.sides)} disagree on the ids this run "
            f"wrote: {agreement.describe()}. "
            "Nothing was committed to the state: re-run these dates to write the rows again (their "
            "dead letters say why a store refused them)."
        )
    return report
