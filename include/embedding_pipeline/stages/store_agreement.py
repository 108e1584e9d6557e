"""Do Qdrant and Elasticsearch hold the same ids? A row must be in every store or in none: the
linker returns keyword ids from Qdrant that the product documents then name, so an id only one
store holds is a link to nothing (or a keyword nobody can find by text).

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
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from embedding_pipeline.errors import PipelineError
from embedding_pipeline.runs.staging import STAGED, point_id
from embedding_pipeline.runs.storage import parquet_file

EXACT_LIMIT = 50_000
SHOWN = 20  # ids listed per store; the counts are always complete


class StoresDisagreeError(PipelineError):
    """Qdrant and Elasticsearch hold different ids."""


@dataclass(frozen=True)
class Agreement:
    """The outcome of one comparison, as reports and the ``verify`` command show it."""

    scope: str  # "written": the ids a run wrote; "whole": every id of the pair
    qdrant: str  # collection compared
    es: str  # index compared
    compared: int  # distinct ids looked at
    sampled: bool  # True when the run wrote more than EXACT_LIMIT distinct ids
    only_qdrant: int
    only_es: int
    examples_qdrant: list[str]  # up to SHOWN ids only Qdrant holds
    examples_es: list[str]

    @property
    def ok(self) -> bool:
        return not (self.only_qdrant or self.only_es)

    def describe(self) -> str:
        what = f"{self.compared} {'sampled ' if self.sampled else ''}ids in {self.qdrant} and {self.es}"
        if self.ok:
            return f"{what}: the same"
        parts = []
        for store, count, examples in (
            ("Qdrant", self.only_qdrant, self.examples_qdrant),
            ("Elasticsearch", self.only_es, self.examples_es),
        ):
            if count:
                parts.append(f"{count} only in {store} (e.g. {', '.join(examples)})")
        return f"{what}: " + "; ".join(parts)

    def to_report(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "detail": self.describe()}


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


def check_written(
    qdrant: Any, es: Any, collection: str, index: str, kind: str, staged_paths: Iterable[str]
) -> Agreement:
    """Are the ids the run's staged chunks wrote held by both stores, or by neither?"""
    from embedding_pipeline.stores.elasticsearch.read import present_ids
    from embedding_pipeline.stores.qdrant.points import present

    ids, sampled = choose(staged_ids(staged_paths))
    by_point = {point_id(kind, i): i for i in ids}
    in_qdrant = {by_point[p] for p in present(qdrant, collection, list(by_point))}
    in_es = present_ids(es, index, ids)
    only_qdrant, only_es = sorted(in_qdrant - in_es), sorted(in_es - in_qdrant)
    return Agreement(
        "written",
        collection,
        index,
        len(ids),
        sampled,
        len(only_qdrant),
        len(only_es),
        only_qdrant[:SHOWN],
        only_es[:SHOWN],
    )


def verify_pair(qdrant: Any, es: Any, collection: str, index: str, id_field: str) -> Agreement:
    """Every id of a Qdrant collection against every id of an ES index (aliases or physical
    names); ``id_field`` is the payload / document field holding the business id."""

    def qdrant_ids() -> Iterator[str]:
        from qdrant_client.http import models

        from embedding_pipeline.stores.qdrant.points import scroll_matching

        for payload in scroll_matching(qdrant, collection, models.Filter(), fields=[id_field]):
            yield str(payload.get(id_field))

    def es_ids() -> Iterator[str]:
        from embedding_pipeline.stores.elasticsearch.read import SAMPLE_PAGE_SIZE, iter_field_values

        return iter_field_values(es, index, id_field, SAMPLE_PAGE_SIZE)

    def hashes(values: Iterator[str]) -> np.ndarray:
        return np.unique(np.fromiter((_hash(v) for v in values), dtype=np.uint64))

    in_qdrant, in_es = hashes(qdrant_ids()), hashes(es_ids())
    only_qdrant = np.setdiff1d(in_qdrant, in_es, assume_unique=True)
    only_es = np.setdiff1d(in_es, in_qdrant, assume_unique=True)

    def examples(values: Iterator[str], wanted: np.ndarray) -> list[str]:
        if not len(wanted):
            return []
        lookup = set(wanted.tolist())
        found = (v for v in values if _hash(v) in lookup)
        return sorted(v for _, v in zip(range(SHOWN), found, strict=False))

    return Agreement(
        "whole",
        collection,
        index,
        len(np.union1d(in_qdrant, in_es)),
        False,
        len(only_qdrant),
        len(only_es),
        examples(qdrant_ids(), only_qdrant),
        examples(es_ids(), only_es),
    )


def check_run(
    report: dict[str, Any],
    run_dir: str,
    embedded: list[dict[str, Any]],
    names: tuple[str | None, str | None],
    kind: str,
    settings: tuple[Any, Any] = (None, None),
) -> dict[str, Any]:
    """The finalize step between the report and the state commit: when the run wrote both stores
    (``names``: its Qdrant collection and ES index), :func:`check_written`; the report gains an
    ``agreement`` section, and a difference fails the run (:class:`StoresDisagreeError`) before
    the state commit, so a re-run of the same dates writes those rows again."""
    collection, index = names
    if not (collection and index):
        return report
    from embedding_pipeline.runs.report import write_report
    from embedding_pipeline.stages.generation_stores import open_stores

    staged = [e["staged"] for e in embedded if e.get("staged")]
    agreement = Agreement("written", collection, index, 0, False, 0, 0, [], [])  # nothing written
    if staged:
        with open_stores(*settings) as stores:
            agreement = check_written(stores.qdrant, stores.es, collection, index, kind, staged)
    report = {**report, "agreement": agreement.to_report()}
    if not agreement.ok:
        report["status"] = "failed"
        report["problems"] = [*report["problems"], f"stores disagree: {agreement.describe()}"]
    write_report(run_dir, report)
    if not agreement.ok:
        raise StoresDisagreeError(
            f"Qdrant and Elasticsearch disagree on the ids this run wrote: {agreement.describe()}. "
            "Nothing was committed to the state: re-run these dates to write the rows again (their "
            "dead letters say why a store refused them)."
        )
    return report
