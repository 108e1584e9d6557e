"""The gate of a full rebuild: what a new generation must show before any alias moves.

Generic checks, each reported with its numbers: ``counts`` (every store holds exactly the ids the
run left live), ``shrink`` (not fewer than the live generation by more than ``max_delete_ratio``: a
truncated input), ``model`` (name, version and dimension recorded in every store, and a vector
store's configured vector size, are the run's) and ``canaries`` (a few ids from the input answer
from every store: by id, and by a search with their own vector where a store holds vectors).

A stage hands in what only it knows (:class:`StageChecks`): more canary conditions (keywords: a
text search finds each canary) and whole checks (products: ``link_quality``). Rules:
``generations.rules``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from embedding_pipeline.generations.rules import GateRules
from embedding_pipeline.runs.state import IndexState
from embedding_pipeline.stores.protocol import IDENTITY, StoreAlias, Stores


@dataclass(frozen=True)
class Check:
    """One gate check, as the report shows it."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Candidate:
    """The generation a gate measures: per alias, the new physical name and the live one it would
    replace (None: the alias does not exist yet)."""

    new: Mapping[StoreAlias, str]
    live: Mapping[StoreAlias, str | None]

    def new_in(self, system: str) -> dict[str, str]:
        """Alias -> new name, of one store system."""
        return {store.alias: name for store, name in self.new.items() if store.system == system}

    def live_in(self, system: str) -> str | None:
        """The live name of the (first) alias of one store system."""
        return next((name for store, name in self.live.items() if store.system == system), None)


CanaryCondition = Callable[[Stores, Candidate, list[str]], list[str]]  # -> failures, one line each
StageCheck = Callable[[Stores, Candidate], Check]


@dataclass(frozen=True)
class StageChecks:
    """What a stage adds to the generic gate: conditions every canary must also meet, and checks
    of its own (run after the generic ones, in order)."""

    canaries: Sequence[CanaryCondition] = ()
    checks: Sequence[StageCheck] = ()


NO_STAGE_CHECKS = StageChecks()


def canary_ids(state: IndexState, n: int) -> list[str]:
    """``n`` live ids, the same ones for the same state: the smallest by a hash of the id."""
    return state.smallest_by_hash(n)


def _count_check(stores: Stores, new: Mapping[StoreAlias, str], expected: int) -> Check:
    counts = {store.key: stores.count(store, name) for store, name in new.items()}
    ok = all(count == expected for count in counts.values())
    shown = ", ".join(f"{key} {count}" for key, count in counts.items())
    return Check("counts", ok, f"expected {expected} (live ids after the run); {shown}")


def _shrink_check(
    stores: Stores, live: Mapping[StoreAlias, str | None], expected: int, max_shrink: float
) -> Check:
    """A new generation much smaller than the live one is a truncated input far more often than a
    real purge: the same guard as ``max_delete_ratio`` on incremental runs."""
    counts = {store.key: stores.count(store, name) for store, name in live.items() if name}
    if not counts:
        return Check("shrink", True, "no live generation to compare with")
    largest = max(counts.values())
    lost = largest - expected
    ok = lost <= max_shrink * largest
    return Check(
        "shrink",
        ok,
        f"{expected} ids against {largest} live ({lost / largest:.1%} fewer; max_delete_ratio "
        f"{max_shrink:.1%})"
        if largest
        else f"{expected} ids; the live generation is empty",
    )


def _model_check(stores: Stores, new: Mapping[StoreAlias, str], model: Mapping[str, Any]) -> Check:
    wanted = tuple(str(model[key]) for key in IDENTITY)
    found = {store.key: stores.identity(store, name) for store, name in new.items()}
    for store, name in new.items():
        size = stores[store.system].vector_size(name)
        if size is not None:
            found[f"{store.key} vector size"] = (wanted[0], wanted[1], str(size))
    bad = {key: value for key, value in found.items() if value != wanted}
    detail = f"{wanted[0]} v{wanted[1]} dim {wanted[2]} in " + ", ".join(found)
    if bad:
        detail += "; differs: " + ", ".join(f"{k} has {v[0]} v{v[1]} dim {v[2]}" for k, v in bad.items())
    return Check("model", not bad, detail)


def _canary_check(
    stores: Stores,
    candidate: Candidate,
    canaries: list[str],
    kind: str,
    conditions: Sequence[CanaryCondition],
) -> Check:
    """Every canary id answers from every store (the adapters' own conditions), and meets the
    stage's conditions."""
    missing: list[str] = []
    for store, name in candidate.new.items():
        missing += stores[store.system].canary_failures(name, kind, canaries)
    for condition in conditions:
        missing += condition(stores, candidate, canaries)
    detail = f"{len(canaries)} canary ids ({', '.join(canaries)})"
    return Check(
        "canaries", bool(canaries) and not missing, detail + (f"; failed: {missing}" if missing else "")
    )


def gate(
    stores: Stores,
    candidate: Candidate,
    state: IndexState,
    model: Mapping[str, Any],
    kind: str,
    rules: GateRules,
    stage: StageChecks = NO_STAGE_CHECKS,
) -> list[Check]:
    """The checks a new generation must pass before the aliases move (module docstring)."""
    expected = state.live_count()
    checks = [
        _count_check(stores, candidate.new, expected),
        _shrink_check(stores, candidate.live, expected, rules.max_shrink),
        _model_check(stores, candidate.new, model),
        _canary_check(stores, candidate, canary_ids(state, rules.canaries), kind, stage.canaries),
    ]
    return checks + [check(stores, candidate) for check in stage.checks]
