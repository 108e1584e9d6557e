"""Full rebuilds into a new generation: gate, atomic swap of both stores' aliases, move-back when
the second swap fails, retention, rollback, model migration, and readers that never see a partial
generation. Real stores: Qdrant local mode and the ES emulator (a real cluster with ``ES_URL``),
the stage functions run in-process (``local.inline_runner``) against the real inference server.
Faults come from a real extra writer or the loopback HTTP proxy in front of ES, never a mock."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import pytest
from embedding_pipeline.errors import SetupError
from embedding_pipeline.generations.lifecycle import GateError, RollbackError, SwapError, describe, rollback
from embedding_pipeline.generations.rules import GateRules, Publish
from embedding_pipeline.local.inline_runner import run_keywords, run_products
from embedding_pipeline.runs.input_kinds import InputSpec
from embedding_pipeline.runs.state import known_states
from embedding_pipeline.runs.state_db import StateSettings
from embedding_pipeline.stages.products.options import LinkOptions
from embedding_pipeline.stores.protocol import StoreAlias
from embedding_pipeline.stores.registry import open_stores
from es_emulator import BulkFaultProxy, always
from store_data import exact_lists, row, stored_keywords, stored_lists, write_keywords, write_products

MODEL = "tiny_bert"
_runs = itertools.count()


@pytest.fixture
def env(pipeline_services) -> dict[str, Any]:
    tmp_path = pipeline_services
    alias = f"gk_{tmp_path.name.lower()[-30:]}"
    options = LinkOptions(keyword_alias=alias, product_alias=f"p{alias}", top_k=3)
    return {"root": tmp_path / "data", "alias": alias, "tmp": tmp_path, "options": options}


def keywords(env: dict[str, Any], dts: list[str], publish: Publish | None = None, **kwargs: Any) -> dict:
    run_dir = env["tmp"] / "runs" / f"k{next(_runs)}"
    model = kwargs.pop("model", MODEL)
    spec = InputSpec(**{"max_delete_ratio": 1.0, **kwargs.pop("spec", {})})
    return run_keywords(env["root"], dts, run_dir, model, spec, env["alias"], publish, **kwargs)


def products(env: dict[str, Any], dts: list[str], publish: Publish | None = None, model: str = MODEL) -> dict:
    run_dir = env["tmp"] / "runs" / f"p{next(_runs)}"
    spec = InputSpec(max_delete_ratio=1.0)
    return run_products(env["root"], dts, run_dir, model, spec, env["options"], publish=publish)


def aliases_of(env: dict[str, Any]) -> dict[str, str | None]:
    """What every alias of both stages points at now."""
    stores = [StoreAlias(system, env["alias"]) for system in ("qdrant", "es")]
    stores += [StoreAlias(system, env["options"].product_alias) for system in ("qdrant", "es")]
    with open_stores() as opened:
        return {store.key: opened.live(store) for store in stores}


def keyword_aliases(env: dict[str, Any]) -> list[StoreAlias]:
    return [StoreAlias("qdrant", env["alias"]), StoreAlias("es", env["alias"])]


def generations(env: dict[str, Any]) -> dict[str, list[int]]:
    with open_stores() as opened:
        rows = describe(opened, keyword_aliases(env))
    found: dict[str, list[int]] = {}
    for entry in rows:
        found.setdefault(entry["store"], []).append(entry["generation"])
    return found


def _nights(env: dict[str, Any]) -> None:
    write_keywords(env["root"], "2024-01-01", [row(i, f"keyword {i}") for i in range(12)])
    write_keywords(
        env["root"],
        "2024-01-02",
        [row(3, "keyword three, renamed"), row(20, "a new keyword"), row(5, deleted=True)],
    )


def test_a_full_rebuild_replays_every_partition_gates_then_swaps_both_stores(env):
    _nights(env)
    keywords(env, ["2024-01-01"])
    keywords(env, ["2024-01-02"], spec={"tombstone_column": "deleted"})
    live_before = stored_keywords(env["alias"])
    assert aliases_of(env)[f"qdrant:{env['alias']}"] == f"{env['alias']}-g1"

    report = keywords(env, ["2024-01-02"], Publish(), spec={"tombstone_column": "deleted"})
    section = report["generation"]
    assert section["status"] == "swapped" and section["generation"] == 2
    assert {c["name"]: c["ok"] for c in section["checks"]} == dict.fromkeys(
        ("counts", "shrink", "model", "canaries"), True
    )
    counts = next(c for c in section["checks"] if c["name"] == "counts")["detail"]
    assert counts.startswith("expected 12 (live ids after the run)"), counts
    moved = {m["store"]: (m["from"], m["to"]) for m in section["swapped"]}
    g1, g2 = f"{env['alias']}-g1", f"{env['alias']}-g2"
    assert moved == {f"qdrant:{env['alias']}": (g1, g2), f"es:{env['alias']}": (g1, g2)}
    # Replayed oldest first, latest dt wins, the tombstone deletes: the same content as the nights built.
    assert stored_keywords(env["alias"]) == live_before
    assert report["partitions"] == ["2024-01-01", "2024-01-02"]
    rendered = [p.read_text() for p in (env["tmp"] / "runs").glob("*/report.md")]
    shown = [text for text in rendered if "Full rebuild: generation 2" in text]
    assert len(shown) == 1 and "| counts | yes | expected 12" in shown[0] and f"-> {g2}" in shown[0]
    # Both generations kept (keep_generations=2), g1 is a rollback target now.
    assert generations(env) == {f"qdrant:{env['alias']}": [1, 2], f"es:{env['alias']}": [1, 2]}
    # An incremental night after the swap goes to the new generation.
    write_keywords(env["root"], "2024-01-03", [row(30, "after the swap")])
    keywords(env, ["2024-01-03"])
    assert "30" in stored_keywords(env["alias"])[0]
    with open_stores() as opened:
        assert opened.count(StoreAlias("qdrant", env["alias"]), g2) == 13
        assert opened.count(StoreAlias("qdrant", env["alias"]), g1) == 12


def test_a_failed_gate_moves_no_alias_and_keeps_the_generation_for_inspection(env):
    _nights(env)
    keywords(env, ["2024-01-01", "2024-01-02"], spec={"tombstone_column": "deleted"})
    before = stored_keywords(env["alias"])

    def rogue_point(prepared: dict[str, Any]) -> None:
        """Another writer puts a point into the new generation: the counts no longer match."""
        from embedding_pipeline.stores.qdrant.client import open_client
        from qdrant_client.http import models

        with open_client() as qdrant:
            vector = [0.1] * qdrant.get_collection(prepared["qdrant_collection"]).config.params.vectors.size
            point = models.PointStruct(id=1, vector=vector, payload={"keyword_id": "rogue"})
            qdrant.upsert(prepared["qdrant_collection"], [point])

    with pytest.raises(GateError, match=r"no alias moved .*counts: expected 12 .* 13") as failed:
        keywords(
            env, ["2024-01-02"], Publish(), spec={"tombstone_column": "deleted"}, before_finalize=rogue_point
        )
    assert failed.value.section["status"] == "gate_failed"
    assert aliases_of(env)[f"qdrant:{env['alias']}"] == f"{env['alias']}-g1"
    assert aliases_of(env)[f"es:{env['alias']}"] == f"{env['alias']}-g1"
    assert stored_keywords(env["alias"]) == before
    assert generations(env)[f"qdrant:{env['alias']}"] == [1, 2]  # kept for inspection

    # A truncated input fails the shrink check the same way (the delete guard of full rebuilds).
    write_keywords(env["root"], "2024-01-05", [row(i) for i in range(3)])
    with pytest.raises(GateError, match=r"shrink: 3 ids against 12 live"):
        keywords(env, ["2024-01-05"], Publish(GateRules(max_shrink=0.05)), spec={"kind": "snapshot"})
    assert aliases_of(env)[f"es:{env['alias']}"] == f"{env['alias']}-g1"

    # The next good rebuild goes live and drops the generations that never served.
    report = keywords(env, ["2024-01-02"], Publish(), spec={"tombstone_column": "deleted"})
    assert report["generation"]["generation"] == 4
    assert sorted(report["generation"]["dropped"]) == sorted(
        f"{s}:{env['alias']}/{env['alias']}-g{n}" for s in ("qdrant", "es") for n in (2, 3)
    )
    assert generations(env)[f"es:{env['alias']}"] == [1, 4]
    # What the ledger kept about the dropped generations went with them; g1's and g4's stay.
    state = StateSettings.from_env()
    kept = [s["key"] for s in known_states(state) if env["alias"] in s["key"]]
    assert sorted(kept) == sorted(
        f"keywords/es={env['alias']}-g{n},qdrant={env['alias']}-g{n}" for n in (1, 4)
    ), kept
    # (Their change logs go too: a full rebuild's first fill logs nothing, so tests/test_state_store.py
    # checks that part on logs with entries.)


def test_when_the_second_swap_fails_the_first_is_moved_back(env, es_url, monkeypatch):
    _nights(env)
    keywords(env, ["2024-01-01"])
    with BulkFaultProxy(es_url, always(("status", 500)), endpoint="/_aliases") as proxy:
        monkeypatch.setenv("ES_URL", proxy.url)
        with pytest.raises(SwapError) as failed:
            keywords(env, ["2024-01-02"], Publish(), spec={"tombstone_column": "deleted"})
        assert proxy.faults_injected >= 1
    message = str(failed.value)
    g1 = f"{env['alias']}-g1"
    assert f"qdrant:{env['alias']} moved back to {g1}" in message
    assert f"Aliases now: qdrant:{env['alias']} -> {g1}, es:{env['alias']} -> {g1}" in message
    monkeypatch.setenv("ES_URL", es_url)
    assert aliases_of(env)[f"qdrant:{env['alias']}"] == g1 and aliases_of(env)[f"es:{env['alias']}"] == g1


def test_rollback_returns_every_alias_to_the_previous_generation(env):
    _nights(env)
    with open_stores() as opened, pytest.raises(RollbackError, match="no live generation"):
        rollback(opened, keyword_aliases(env))
    keywords(env, ["2024-01-01"])
    with open_stores() as opened, pytest.raises(RollbackError, match="no earlier generation that served"):
        rollback(opened, keyword_aliases(env))
    first = stored_keywords(env["alias"])
    keywords(env, ["2024-01-02"], Publish(), spec={"tombstone_column": "deleted"})
    assert stored_keywords(env["alias"]) != first
    with open_stores() as opened:
        moves = rollback(opened, keyword_aliases(env))
    assert {m["to"] for m in moves} == {f"{env['alias']}-g1"}
    assert stored_keywords(env["alias"]) == first


def test_a_model_migration_is_a_full_rebuild_and_old_model_runs_are_refused(env):
    _nights(env)
    keywords(env, ["2024-01-01"])
    write_products(
        env["root"], "2024-01-01", [{"product_id": p, "product_name": f"keyword {p}"} for p in range(4)]
    )
    products(env, ["2024-01-01"])
    lists_before = stored_lists(env["options"].product_alias)

    migrated = keywords(env, ["2024-01-01"], Publish(), model="tiny_xlm_roberta")
    assert next(c for c in migrated["generation"]["checks"] if c["name"] == "model")["ok"]
    # The keyword aliases serve the new model; the product lists keep serving until their own
    # rebuild, which must use the new model too.
    with pytest.raises(SetupError, match=r"tiny_xlm_roberta.*tiny_bert|tiny_bert.*tiny_xlm_roberta"):
        products(env, ["2024-01-01"])
    assert stored_lists(env["options"].product_alias) == lists_before
    report = products(env, ["2024-01-01"], Publish(), model="tiny_xlm_roberta")
    quality = next(c for c in report["generation"]["checks"] if c["name"] == "link_quality")
    assert quality["ok"] and quality["detail"].startswith("recall@K 1.0000"), quality
    assert "live 1.0000" in quality["detail"]
    options = env["options"]
    stored = stored_lists(options.product_alias)
    assert stored == exact_lists(options.keyword_alias, options.product_alias, options, like=stored)
    with open_stores() as opened:
        models = {
            entry["store"]: entry["model"]
            for alias in (env["alias"], options.product_alias)
            for entry in describe(opened, [StoreAlias("qdrant", alias), StoreAlias("es", alias)])
            if entry["live"]
        }
    assert len(models) == 4 and all(m.startswith("tiny_xlm_roberta v1") for m in models.values()), models
    # An incremental night with the old model is refused, naming both models.
    write_keywords(env["root"], "2024-01-03", [row(40, "late")])
    with pytest.raises(SetupError, match=r"tiny_xlm_roberta v1.*tiny_bert v1"):
        keywords(env, ["2024-01-03"])
    # Rolling back only the keywords would split the stages' models: refused; both together works.
    with open_stores() as opened:
        product_stores = [
            StoreAlias("qdrant", options.product_alias),
            StoreAlias("es", options.product_alias),
        ]
        with pytest.raises(RollbackError, match="do not share one model"):
            rollback(opened, keyword_aliases(env), others=product_stores)
        rollback(opened, [*keyword_aliases(env), *product_stores])
    assert stored_lists(options.product_alias) == lists_before


def test_readers_never_see_an_empty_or_partial_generation(env):
    """A reader thread queries through the aliases for the whole of a full rebuild and its swap.
    ES answers concurrently (the emulator is its own process); Qdrant local mode admits one client
    at a time, so the reader's Qdrant queries interleave at the moments the rebuild's steps release
    the store - every point at which a reader could see it."""
    from embedding_pipeline.stores.elasticsearch.client import open_es
    from embedding_pipeline.stores.qdrant.client import open_client

    _nights(env)
    keywords(env, ["2024-01-01", "2024-01-02"], spec={"tombstone_column": "deleted"})
    expected = 12
    with open_client() as qdrant:
        probe = [0.1] * qdrant.get_collection(env["alias"]).config.params.vectors.size
    answers: list[tuple[str, int]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                with open_es() as es:
                    es.indices.refresh(index=env["alias"])
                    answers.append(("es", es.count(index=env["alias"])["count"]))
                with open_client() as qdrant:
                    answers.append(("qdrant", qdrant.count(env["alias"], exact=True).count))
                    hits = qdrant.query_points(env["alias"], query=probe, limit=expected + 5).points
                    answers.append(("qdrant search", len(hits)))
            except BaseException as exc:
                errors.append(exc)
            time.sleep(0.3)  # longer than the writer's lock poll: the rebuild is never starved

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        report = keywords(env, ["2024-01-02"], Publish(), spec={"tombstone_column": "deleted"})
        time.sleep(0.7)  # a few reads after the swap
    finally:
        done.set()
        reader.join(timeout=30)
    assert report["generation"]["status"] == "swapped"
    assert errors == []
    assert {kind for kind, _ in answers} == {"es", "qdrant", "qdrant search"}
    assert len(answers) >= 6
    assert all(size == expected for _, size in answers), answers


def test_the_cli_rebuilds_through_airflow_lists_generations_and_rolls_back(env, airflow_db, capsys):
    """``embedding-pipeline rebuild`` (keyword_index with mode=full, dag.test in a child process),
    ``generations`` and ``rollback``, as a user types them."""
    from embedding_pipeline.cli.main import main

    _nights(env)
    keywords(env, ["2024-01-01"])
    aliases = ["--keyword-alias", env["alias"], "--product-alias", env["options"].product_alias]
    rebuild = ["rebuild", "--dag", "keyword_index", "--dt", "2024-01-02", "--model", MODEL]
    assert main([*rebuild, "--input-root", str(env["root"]), *aliases]) == 0
    out = capsys.readouterr().out
    g1, g2 = f"{env['alias']}-g1", f"{env['alias']}-g2"
    assert f"keyword_index: generation 2 swapped; qdrant:{env['alias']} {g1} -> {g2}" in out, out

    assert main(["generations", *aliases]) == 0
    table = capsys.readouterr().out.splitlines()
    live = [line for line in table[1:] if " live " in line]
    assert len(live) == 2 and all(g2 in line and "tiny_bert v1" in line for line in live), table
    assert sum(g1 in line for line in table) == 2

    assert main(["rollback", "--stage", "keyword_index", *aliases]) == 0
    assert f"qdrant:{env['alias']}: {g2} -> {g1}" in capsys.readouterr().out
    assert aliases_of(env)[f"es:{env['alias']}"] == g1
    assert main(["rollback", "--stage", "keyword_index", *aliases]) == 2  # nothing older: a clear error
    assert "no earlier generation that served" in capsys.readouterr().err
