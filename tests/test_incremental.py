"""Incremental runs through the stage functions: real inference server (tiny BERT), Qdrant local
mode and the ES emulator (a real cluster with ``ES_URL``). Skips, field-only updates, deletes by
tombstone and by snapshot, the delete guard, late backfills and model changes."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import pytest
from embedding_pipeline.errors import SetupError
from embedding_pipeline.local.inline_runner import run_keywords, run_products
from embedding_pipeline.runs.changes import DeleteGuardError
from embedding_pipeline.runs.input_kinds import InputSpec
from embedding_pipeline.runs.state import IndexState, ModelChangedError, delta_table
from embedding_pipeline.runs.state_db import StateSettings
from embedding_pipeline.stages.products.options import LinkOptions
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from store_data import exact_lists, row, stored_keywords, stored_lists, write_keywords, write_products

MODEL = "tiny_bert"
_runs = itertools.count()


@pytest.fixture
def kw(pipeline_services) -> dict[str, Any]:
    tmp_path = pipeline_services
    return {"root": tmp_path / "data", "alias": f"kw_{tmp_path.name.lower()[-30:]}", "tmp": tmp_path}


def run(kw: dict[str, Any], dts: list[str], **spec: Any) -> dict[str, Any]:
    run_dir = kw["tmp"] / "runs" / f"r{next(_runs)}"
    return run_keywords(kw["root"], dts, run_dir, MODEL, InputSpec(**spec), kw["alias"])


def test_unchanged_rows_are_skipped_fields_update_without_embedding_and_tombstones_delete(kw):
    write_keywords(kw["root"], "2024-01-01", [row(i) for i in range(10)])
    first = run(kw, ["2024-01-01"], tombstone_column="deleted", max_delete_ratio=0.2)
    assert first["embed"]["extra"]["embedded"] == 10 and first["sinks"]["qdrant"]["indexed"] == 10

    write_keywords(
        kw["root"],
        "2024-01-02",
        [
            *[row(i) for i in range(5)],  # unchanged
            row(5, "a new text for five"),  # text changed: re-embedded
            row(6, category="toys"),  # field changed: no embedding
            row(7, deleted=True),  # tombstone
            row(42, deleted=True),  # tombstone for an id nobody stored
            row(10, "brand new keyword"),  # new
        ],
    )
    second = run(kw, ["2024-01-02"], tombstone_column="deleted", max_delete_ratio=0.2)
    embed = second["embed"]
    assert embed["extra"]["embedded"] == 2 and embed["extra"]["fields_updated"] == 1
    assert embed["unchanged"] == 6 and embed["deleted"] == 1 and embed["extra"]["unknown_deletes"] == 1
    for store in ("qdrant", "es"):
        sink = second["sinks"][store]
        assert (sink["indexed"], sink["deleted"], sink["dead_lettered"]) == (3, 1, 0), store
        assert second["rows_read"] == sink["indexed"] + embed["unchanged"] + sink["deleted"]
    expected = {str(i): (f"keyword number {i}", "food") for i in (0, 1, 2, 3, 4, 8, 9)}
    expected |= {"5": ("a new text for five", "food"), "6": ("keyword number 6", "toys")}
    expected["10"] = ("brand new keyword", "food")
    assert stored_keywords(kw["alias"]) == (expected, expected)

    again = run(
        kw, ["2024-01-02"], tombstone_column="deleted", max_delete_ratio=0.2
    )  # a re-run changes nothing
    assert again["embed"]["extra"]["embedded"] == 0 and again["embed"]["indexed"] == 0
    assert stored_keywords(kw["alias"]) == (expected, expected)


def test_snapshots_delete_absent_ids_behind_the_guard_and_late_backfills_change_nothing(kw):
    write_keywords(kw["root"], "2024-02-01", [row(i) for i in range(40)])
    run(kw, ["2024-02-01"], kind="snapshot")
    write_keywords(kw["root"], "2024-02-03", [row(i) for i in range(40) if i != 3] + [row(50)])
    second = run(kw, ["2024-02-03"], kind="snapshot")
    assert second["embed"]["deleted"] == 1 and second["embed"]["extra"]["embedded"] == 1
    expected = {str(i): (f"keyword number {i}", "food") for i in [*range(40), 50] if i != 3}
    assert stored_keywords(kw["alias"]) == (expected, expected)

    # A late snapshot of an older date: every id was seen later, nothing changes (3 stays deleted).
    write_keywords(kw["root"], "2024-02-02", [row(i, "old text") for i in range(40)])
    late = run(kw, ["2024-02-02"], kind="snapshot")
    assert late["embed"]["indexed"] == 0 and late["embed"]["deleted"] == 0
    assert stored_keywords(kw["alias"]) == (expected, expected)

    # A truncated export: 31 of 40 stored ids missing is far over 5% -> refused before any write.
    write_keywords(kw["root"], "2024-02-04", [row(i) for i in range(10)])
    with pytest.raises(DeleteGuardError, match=r"delete 31 of 40 stored ids .*max_delete_ratio=5\.0%"):
        run(kw, ["2024-02-04"], kind="snapshot")
    assert stored_keywords(kw["alias"]) == (expected, expected)
    # An empty snapshot file says "the table is empty": guarded the same way. A missing partition
    # says nothing (skipped, nothing deleted).
    write_keywords(kw["root"], "2024-02-05", [])
    with pytest.raises(DeleteGuardError, match=r"delete 40 of 40 stored ids \(100\.0%\)"):
        run(kw, ["2024-02-05"], kind="snapshot")
    assert run(kw, ["2024-02-06"], kind="snapshot")["status"] == "no_data"
    assert stored_keywords(kw["alias"]) == (expected, expected)
    forced = run(kw, ["2024-02-04"], kind="snapshot", max_delete_ratio=0.8)
    assert forced["embed"]["deleted"] == 31
    assert set(stored_keywords(kw["alias"])[0]) == {str(i) for i in range(10)}


def test_latest_date_wins_within_a_run_and_a_tombstone_wins_within_a_partition(kw):
    write_keywords(kw["root"], "2024-03-01", [row(1, "first"), row(2, "two")])
    write_keywords(kw["root"], "2024-03-02", [row(1, "second"), row(2, "two again"), row(2, deleted=True)])
    report = run(kw, ["2024-03-01", "2024-03-02"], tombstone_column="deleted")
    assert report["embed"]["dead_letters_by_reason"] == {"duplicate_id": 1}
    assert stored_keywords(kw["alias"])[0] == {"1": ("second", "food")}


def test_a_run_over_several_dates_embeds_only_each_ids_latest_row(kw):
    """A replay costs the live ids, not the sum of rows; and a later row that restores the stored
    text leaves the stores as they were (an earlier row of the run must not linger there)."""
    write_keywords(kw["root"], "2024-06-01", [row(1, "a"), row(2, "b"), row(3, "c")])
    run(kw, ["2024-06-01"])
    write_keywords(kw["root"], "2024-06-02", [row(1, "a changed"), row(2, "b changed")])
    write_keywords(kw["root"], "2024-06-03", [row(1, "a"), row(2, "b again")])
    report = run(kw, ["2024-06-02", "2024-06-03"])
    assert report["embed"]["extra"]["embedded"] == 1  # 2's latest text; 1 is back to what is stored
    assert report["embed"]["extra"]["superseded"] == 2
    expected = {"1": ("a", "food"), "2": ("b again", "food"), "3": ("c", "food")}
    assert stored_keywords(kw["alias"]) == (expected, expected)


def test_an_incremental_run_with_another_model_is_refused_naming_both(kw):
    write_keywords(kw["root"], "2024-04-01", [row(i) for i in range(3)])
    run(kw, ["2024-04-01"])
    run_dir = kw["tmp"] / "runs" / "other-model"
    with pytest.raises(SetupError, match=r"tiny_bert v1 .* tiny_xlm_roberta v1"):
        run_keywords(kw["root"], ["2024-04-01"], run_dir, "tiny_xlm_roberta", InputSpec(), kw["alias"])


def test_an_unreachable_state_database_fails_the_run_before_any_store_is_touched(kw, monkeypatch):
    from embedding_pipeline.runs.state_db import StateUnavailableError
    from embedding_pipeline.serving.process import free_port
    from embedding_pipeline.stores.protocol import StoreAlias
    from embedding_pipeline.stores.registry import open_stores

    write_keywords(kw["root"], "2024-05-01", [row(i) for i in range(3)])
    url = f"postgresql+psycopg://pipeline:secret@127.0.0.1:{free_port()}/state"
    monkeypatch.setenv("EMBEDDING_STATE_DB", url)
    with pytest.raises(StateUnavailableError, match=r"127\.0\.0\.1.*EMBEDDING_STATE_DB.*cannot connect"):
        run(kw, ["2024-05-01"])
    with open_stores() as stores:
        assert stores.live(StoreAlias("qdrant", kw["alias"])) is None
        assert stores.live(StoreAlias("es", kw["alias"])) is None


def test_the_state_refuses_another_model_or_role_and_says_what_to_do(tmp_path):
    """The stores record the model but not the role a text was embedded with: the state does."""
    state = IndexState.of(StateSettings(f"sqlite:///{tmp_path / 'state.db'}"), "products", {"qdrant": "p-g1"})
    identity = {"model_name": "m", "model_version": 1, "role": "query"}
    state.check_identity(identity, "the product generation")  # no state yet: anything goes
    state.commit(delta_table([("a", 20240101, 1, 2, False, "upsert")]), identity)
    state.check_identity(identity, "the product generation")
    with pytest.raises(
        ModelChangedError, match=r"m v1 \(role query\) .* m v1 \(role passage\).*full rebuild"
    ):
        state.check_identity({**identity, "role": "passage"}, "the product generation")


# --- product links ---------------------------------------------------------------------------


@pytest.fixture
def links(kw) -> dict[str, Any]:
    options = LinkOptions(
        keyword_alias=kw["alias"], product_alias=f"p{kw['alias']}", top_k=3, match_fields=("category",)
    )
    return {**kw, "options": options}


def run_links(env: dict[str, Any], dts: list[str], relink_all: bool = False, **spec: Any) -> dict[str, Any]:
    run_dir = env["tmp"] / "runs" / f"p{next(_runs)}"
    spec = {"max_delete_ratio": 1.0, **spec}
    return run_products(env["root"], dts, run_dir, MODEL, InputSpec(**spec), env["options"], relink_all)


def test_keyword_changes_relink_exactly_the_affected_products(links):
    """Keywords deleted, changed and added after products were linked: every product's list equals
    a from-scratch exact relink, and only affected products were relinked."""
    words = ["red apple", "green apple", "apple pie", "banana bread", "cherry jam", "plum cake"]
    write_keywords(
        links["root"],
        "2024-05-01",
        [row(i, w, "food" if i < 6 else "toys") for i, w in enumerate(words * 2)],
    )
    run(links, ["2024-05-01"], max_delete_ratio=1.0)
    products = [
        {"product_id": p, "product_name": name, "category": category}
        for p, (name, category) in enumerate(
            [
                ("fresh apple", "food"),
                ("apple cake", "food"),
                ("banana", "food"),
                ("toy apple", "toys"),
                ("jam jar", "food"),
                ("no category", None),
            ]
        )
    ]
    write_products(links["root"], "2024-05-01", products)
    first = run_links(links, ["2024-05-01"])
    assert first["sinks"]["link"]["indexed"] == 6 and first.get("relink") is None
    options = links["options"]
    before = stored_lists(options.product_alias)
    assert before == exact_lists(options.keyword_alias, options.product_alias, options, like=before)
    assert sorted(len(ids) for ids in before.values()) == [3] * 6

    # Keywords: delete one that is in lists, change a text, change a category, add new ones.
    write_keywords(
        links["root"],
        "2024-05-02",
        [
            row(0, deleted=True),
            row(1, "apple cake slice"),
            row(4, "cherry jam", "toys"),
            row(20, "apple"),
        ],
    )
    run(links, ["2024-05-02"], tombstone_column="deleted", max_delete_ratio=1.0)
    second = run_links(links, ["2024-05-02"])  # no product partition that night
    assert second["status"] == "no_data" and second["relink"]["indexed"] > 0
    relinked = second["relink"]["extra"]
    # The random tiny model decides whether keyword 0 made any list; every list that held it drops it.
    assert relinked["dropped_deleted_keywords"] == sum("0" in ids for ids in before.values())
    stored = stored_lists(options.product_alias)
    assert stored == exact_lists(options.keyword_alias, options.product_alias, options, like=stored)
    assert all("0" not in ids for ids in stored.values())
    changed_lists = sum(stored[p] != before[p] for p in before)
    assert second["relink"]["indexed"] - relinked["unchanged_lists"] == changed_lists > 0

    # Products change too: one deleted, one renamed, one new; keywords unchanged.
    write_products(
        links["root"],
        "2024-05-03",
        [
            {"product_id": 2, "deleted": True},
            {"product_id": 4, "product_name": "apple jam", "category": "food"},
            {"product_id": 9, "product_name": "plum", "category": "food"},
        ],
    )
    third = run_links(links, ["2024-05-03"], tombstone_column="deleted")
    assert third["embed"]["deleted"] == 1 and third["embed"]["extra"]["embedded"] == 2
    assert third.get("relink") is None  # no keyword changed since
    stored = stored_lists(options.product_alias)
    assert set(stored) == {"0", "1", "3", "4", "5", "9"}
    assert stored == exact_lists(options.keyword_alias, options.product_alias, options, like=stored)

    # relink=all: the same lists (nothing was stale), every one counted unchanged.
    everything = run_links(links, ["2024-05-03"], relink_all=True, tombstone_column="deleted")
    assert everything["relink"]["indexed"] == 6 == everything["relink"]["extra"]["unchanged_lists"]
    assert stored_lists(options.product_alias) == stored


CRASHING_NIGHT = """
import os, signal, sys
from pathlib import Path
from embedding_pipeline.local.inline_runner import run_keywords
from embedding_pipeline.runs import state
from embedding_pipeline.runs.input_kinds import InputSpec

merge = state._merge_rows


def merge_then_die(*args, **kwargs):
    merge(*args, **kwargs)  # the night's rows are written; the log entry is next
    os.kill(os.getpid(), signal.SIGKILL)


state._merge_rows = merge_then_die
spec = InputSpec(tombstone_column="deleted", max_delete_ratio=1.0)
run_keywords(Path(sys.argv[1]), [sys.argv[2]], Path(sys.argv[3]), sys.argv[4], spec, sys.argv[5])
"""


def test_a_keyword_night_killed_inside_its_commit_is_redone_and_products_relink_exactly(links, tmp_path):
    """SIGKILL between the state rows and the change-log entry of a keyword commit (a fault
    injected into a child process running the night; both are one transaction now): afterwards
    the state and the change log both say the night never committed, and running the night again
    and then the product stage leaves every list equal to a from-scratch relink."""
    import subprocess
    import sys

    from embedding_pipeline.runs.state import ChangeLog, IndexState, known_states
    from embedding_pipeline.runs.state_db import StateSettings

    words = ["red apple", "green apple", "apple pie", "banana bread", "cherry jam", "plum cake"]
    write_keywords(links["root"], "2024-07-01", [row(i, w) for i, w in enumerate(words)])
    run(links, ["2024-07-01"])
    names = [("fresh apple", "food"), ("apple cake", "food"), ("banana", "food"), ("jam jar", "food")]
    write_products(
        links["root"],
        "2024-07-01",
        [{"product_id": p, "product_name": n, "category": c} for p, (n, c) in enumerate(names)],
    )
    run_links(links, ["2024-07-01"])
    night = [row(0, deleted=True), row(1, "apple cake slice"), row(20, "apple"), row(21, "jam")]
    write_keywords(links["root"], "2024-07-02", night)
    settings = StateSettings.from_env()
    (key,) = [
        s["key"] for s in known_states(settings) if s["key"].startswith(f"keywords/es={links['alias']}-")
    ]
    state, log = IndexState(settings, key), ChangeLog(settings, f"{links['alias']}-g1")
    before = (state.lookup(["0", "1", "20"]), log.latest(), state.live_count())

    script = tmp_path / "crashing_night.py"
    script.write_text(CRASHING_NIGHT)
    args = [str(links["root"]), "2024-07-02", str(tmp_path / "crashed"), MODEL, links["alias"]]
    crashed = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=300
    )
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    assert (state.lookup(["0", "1", "20"]), log.latest(), state.live_count()) == before

    again = run(links, ["2024-07-02"], tombstone_column="deleted", max_delete_ratio=1.0)
    assert again["embed"]["deleted"] == 1 and again["embed"]["extra"]["embedded"] == 3
    assert log.latest() == before[1] + 1 and state.live_count() == before[2] + 1
    run_links(links, ["2024-07-02"])
    options = links["options"]
    stored = stored_lists(options.product_alias)
    assert stored == exact_lists(options.keyword_alias, options.product_alias, options, like=stored)
    assert all("0" not in ids for ids in stored.values())


# --- property: any sequence of nights ends equal to a from-scratch build ------------------------

WORDS = [
    "cheap",
    "flights",
    "tokyo",
    "seoul",
    "best",
    "running",
    "shoes",
    "flat",
    "feet",
    "organic",
    "cotton",
    "shirt",
    "steel",
    "water",
    "bottle",
    "drinks",
    "cold",
    "quick",
    "brown",
    "fox",
    "lazy",
    "dog",
]
_texts = st.tuples(st.sampled_from(WORDS), st.sampled_from(WORDS)).map(" ".join)
_ops = st.one_of(
    st.tuples(st.just("upsert"), st.integers(0, 11), _texts, st.sampled_from(["a", "b"])),
    st.tuples(st.just("delete"), st.integers(0, 11), st.just(""), st.just("")),
)
_night = st.fixed_dictionaries(
    {
        "day": st.integers(1, 9),
        "keyword_kind": st.sampled_from(["delta", "snapshot"]),
        "keywords": st.lists(_ops, max_size=8),
        "product_kind": st.sampled_from(["delta", "snapshot"]),
        "products": st.lists(_ops, max_size=5),
    }
)


class Table:
    """The expected current rows of a table under the pipeline's rules: per id the latest date that
    spoke about it wins (deletes included); a snapshot deletes what it lacks (if not seen later)."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[str, str]] = {}
        self.last: dict[int, str] = {}

    def apply(self, dt: str, kind: str, ops: list[tuple[str, int, str, str]]) -> list[dict[str, Any]]:
        """Apply one partition; return its file rows (the first op of an id wins, as the test
        writes one row per id; a snapshot holds only upserts)."""
        partition: dict[int, tuple[str, str, str]] = {}
        for op, key, text, category in ops:
            if kind == "snapshot" and op == "delete":
                continue
            partition.setdefault(key, (op, text, category))
        if kind == "snapshot":
            for key in list(self.rows):
                if key not in partition and self.last[key] <= dt:
                    del self.rows[key]
                    self.last[key] = dt
        for key, (op, text, category) in partition.items():
            if self.last.get(key, "") > dt:
                continue
            self.last[key] = dt
            if op == "delete":
                self.rows.pop(key, None)
            else:
                self.rows[key] = (text, category)
        return [
            {"id": key, "text": text or None, "category": category or None, "deleted": op == "delete"}
            for key, (op, text, category) in partition.items()
        ]


def _named(rows: list[dict[str, Any]], id_key: str, text_key: str) -> list[dict[str, Any]]:
    return [
        {id_key: r["id"], text_key: r["text"], "category": r["category"], "deleted": r["deleted"]}
        for r in rows
    ]


@pytest.mark.parametrize("entrants", ["scan", "bands"])
@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(nights=st.lists(_night, min_size=2, max_size=4, unique_by=lambda n: n["day"]))
def test_any_sequence_of_nights_matches_a_from_scratch_build(links, nights, entrants, monkeypatch):
    """Random keyword/product deltas and snapshots over several dates, run in any order (late
    backfills included): after each night the stored keyword sets equal the expected current set
    in Qdrant and ES, the stored products are the expected ones, and every product's list equals a
    from-scratch exact relink of all current products against all current keywords.

    Both ways of finding the products a changed keyword enters run here: the block scan local mode
    uses, and the entry-score band searches a Qdrant server uses (on local mode's engine)."""
    from embedding_pipeline.stages.products import maintenance as link_maintenance

    if entrants == "bands":
        monkeypatch.setattr(link_maintenance, "entrants_by_scan", link_maintenance.entrants)
    example = next(_runs)
    env = {**links, "root": links["tmp"] / f"ex{example}", "alias": f"{links['alias']}x{example}"}
    options = replace(links["options"], keyword_alias=env["alias"], product_alias=f"p{env['alias']}")
    env["options"] = options
    monkeypatch.setenv("QDRANT_PATH", str(env["root"] / "qdrant"))  # local mode opens every collection
    keywords, products = Table(), Table()
    for night in nights:
        dt = f"2024-06-{night['day']:02d}"
        rows = keywords.apply(dt, night["keyword_kind"], night["keywords"])
        write_keywords(
            env["root"],
            dt,
            [
                {
                    "keyword_id": r["id"],
                    "keyword": r["text"],
                    "category": r["category"],
                    "deleted": r["deleted"],
                }
                for r in rows
            ],
        )
        kind = night["keyword_kind"]
        run(env, [dt], kind=kind, tombstone_column="deleted", max_delete_ratio=1.0)
        expected = {str(k): v for k, v in keywords.rows.items()}
        assert stored_keywords(env["alias"]) == (expected, expected), dt
        if not keywords.rows:
            continue  # linking refuses an empty keyword collection (tested in test_product_link_dag)
        rows = products.apply(dt, night["product_kind"], night["products"])
        write_products(
            env["root"],
            dt,
            [
                {
                    "product_id": r["id"],
                    "product_name": r["text"],
                    "category": r["category"],
                    "deleted": r["deleted"],
                }
                for r in rows
            ],
        )
        run_links(env, [dt], kind=night["product_kind"], tombstone_column="deleted")
        stored = stored_lists(options.product_alias)
        assert set(stored) == {str(p) for p in products.rows}, dt
        assert stored == exact_lists(options.keyword_alias, options.product_alias, options, like=stored), dt
