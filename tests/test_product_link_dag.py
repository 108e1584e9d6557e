"""``dag.test()`` of product_link and of the whole embedding_chain: real local inference server,
Qdrant local mode on disk, and the noida-db Elasticsearch emulator (a real cluster with ``ES_URL``).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
from embedding_pipeline.local.airflow_runner import run_dag
from embedding_pipeline.runs.plan import run_dir_for
from embedding_pipeline.sample.generate import generate

DATES = ["2024-01-01", "2024-01-02"]


@pytest.fixture
def env(pipeline_services):
    tmp_path = pipeline_services
    suffix = tmp_path.name.lower().replace("-", "_")[-36:]
    return {"kw": f"kw_{suffix}", "prod": f"pr_{suffix}", "data": tmp_path / "data"}


def _conf(env: dict, **overrides) -> dict:
    return {
        "dt": DATES[0],
        "dt_end": DATES[1],
        "input_root": str(env["data"]),
        "model_name": "tiny_bert",
        "chunk_rows": 100,
        "qdrant_alias": env["kw"],
        "product_alias": env["prod"],
        "top_k": 5,
        **overrides,
    }


def _states(run) -> dict[str, str]:
    return {
        f"{ti.task_id}[{ti.map_index}]" if ti.map_index >= 0 else ti.task_id: str(ti.state)
        for ti in run.get_task_instances()
    }


def _report(run, stage: str) -> dict:
    assert str(run.state) == "success", {k: v for k, v in _states(run).items() if v != "success"}
    path = Path(str(run_dir_for(run.dag_id, run.run_id, stage))) / "report.json"
    return json.loads(path.read_text())


def _sources(alias: str) -> dict[str, dict]:
    """Every document behind ``alias`` after a refresh, ``_id`` -> ``_source``."""
    from elasticsearch.helpers import scan
    from embedding_pipeline.stores.elasticsearch.client import open_es

    with open_es() as es:
        es.indices.refresh(index=alias)
        return {
            hit["_id"]: hit["_source"] for hit in scan(es, index=alias, query={"query": {"match_all": {}}})
        }


def _index_keywords(env: dict, keywords: int = 600, **overrides) -> dict:
    generate(env["data"], keywords=keywords, products=0, dates=DATES, seed=21, row_group_size=100)
    run = run_dag("keyword_index", {**_conf(env, **overrides), "es_alias": env["kw"]})
    return _report(run, "keyword_index")


def _assert_balanced(report: dict) -> None:
    assert report["status"] == "ok", report["problems"]
    embed = report["embed"]
    for summary in report["sinks"].values():
        kept = summary["indexed"] + embed["unchanged"] + summary["deleted"]
        assert kept + summary["dead_lettered"] + embed["dead_lettered"] == report["rows_read"]


def _links(docs: dict[str, dict]) -> dict[str, list[tuple[str, float, int]]]:
    return {pid: [(k["keyword_id"], k["score"], k["rank"]) for k in d["keywords"]] for pid, d in docs.items()}


def test_chain_runs_every_stage_and_a_second_run_changes_nothing(env):
    """One trigger: model (published from the bundled MiniLM), keywords, products; then the same dt again
    with ``publish_model=if_missing`` (the publish tasks are skipped) writes nothing (every row is
    unchanged) and leaves identical results."""
    summary = generate(
        env["data"], keywords=600, products=160, dates=DATES, seed=5, bad_rate=0.05, row_group_size=100
    )
    manifest = json.loads(Path(summary["tables"]["products"]["manifest"]).read_text())
    # The real MiniLM, published again from its bundled source (identical weights: same version).
    # Not a tiny random model: those map many texts to one vector, and a tie of more keywords than
    # the linker's tie margin at the top-K cut is legitimately arbitrary.
    conf = _conf(env, es_alias=env["kw"], publish_model="always", model_source="minilm", model_name="minilm")
    first = run_dag("embedding_chain", conf)
    keywords, products = _report(first, "keyword_index"), _report(first, "product_link")
    _assert_balanced(keywords)
    _assert_balanced(products)
    assert keywords["rows_read"] == 600 and products["rows_read"] == 160
    expected_dead = sum(p["expected"]["dead_lettered"] for p in manifest["partitions"].values())
    assert products["embed"]["dead_lettered"] == expected_dead > 0
    link = products["sinks"]["link"]
    assert link["indexed"] == 160 - expected_dead and link["dead_lettered"] == 0

    docs = _sources(env["prod"])
    # One document per product the run wrote: an id recurring on the later date is written once.
    assert len(docs) == link["indexed"]
    for doc in docs.values():
        ranks = [k["rank"] for k in doc["keywords"]]
        scores = [k["score"] for k in doc["keywords"]]
        assert ranks == list(range(1, 6)) and scores == sorted(scores, reverse=True)
        assert doc["keyword_count"] == 5 and doc["model_name"] == "minilm" and doc["dt"] in DATES
        assert doc["link"]["role"] == "query" and doc["link"]["top_k"] == 5
    kw_docs = set(_sources(env["kw"]))
    assert {k["keyword_id"] for d in docs.values() for k in d["keywords"]} <= kw_docs

    second = run_dag("embedding_chain", {**conf, "publish_model": "if_missing"})
    states = _states(second)
    assert states["model.export"] == "skipped" and states["model.model_ready"] == "success"
    # Incremental: the same dates again find every row unchanged and write nothing.
    again = _report(second, "product_link")
    assert again["sinks"]["link"]["indexed"] == 0 and again["embed"]["unchanged"] == link["indexed"]
    assert again.get("relink") is None  # no keyword changed
    keywords_again = _report(second, "keyword_index")
    for sink in ("qdrant", "es"):
        assert keywords_again["sinks"][sink]["indexed"] == 0
        # Every valid row: those written, and the earlier rows of ids that recur on a later date.
        written = keywords["sinks"][sink]["indexed"] + keywords["embed"]["extra"]["superseded"]
        assert keywords_again["embed"]["unchanged"] == written
    assert _links(_sources(env["prod"])) == _links(docs)

    # A full rebuild through the chain: a new generation of all four stores, gated and swapped;
    # the same data gives the same lists. embedding_rollback then points every alias back.
    third = run_dag("embedding_chain", {**conf, "publish_model": "if_missing", "mode": "full"})
    for stage, alias in (("keyword_index", env["kw"]), ("product_link", env["prod"])):
        section = _report(third, stage)["generation"]
        assert section["status"] == "swapped" and all(c["ok"] for c in section["checks"]), section
        assert {m["to"] for m in section["swapped"]} == {f"{alias}-g2"}
        assert _live(alias) == {f"{alias}-g2"}
    checks = {c["name"]: c["detail"] for c in _report(third, "product_link")["generation"]["checks"]}
    assert checks["link_quality"].startswith("recall@K 1.0000") and "live 1.0000" in checks["link_quality"]
    assert _links(_sources(env["prod"])) == _links(docs)
    rollback = run_dag(
        "embedding_rollback", {"qdrant_alias": env["kw"], "es_alias": env["kw"], "product_alias": env["prod"]}
    )
    assert str(rollback.state) == "success", _states(rollback)
    assert _live(env["kw"]) == {f"{env['kw']}-g1"} and _live(env["prod"]) == {f"{env['prod']}-g1"}
    assert _links(_sources(env["prod"])) == _links(docs)


def _live(alias: str) -> set[str | None]:
    """What ``alias`` points at in Qdrant and in ES (one name when both agree)."""
    from embedding_pipeline.stores.protocol import StoreAlias
    from embedding_pipeline.stores.registry import open_stores

    with open_stores() as stores:
        return {stores.live(StoreAlias(system, alias)) for system in ("qdrant", "es")}


def test_latest_partition_wins_whatever_order_dates_are_linked_in(env):
    """Cross-partition duplicate ids: linking dt2 and then dt1 leaves dt2's document (the state skips
    dt1's rows of those ids before embedding, as superseded; ES external versions would refuse them
    too); within a partition the first occurrence is kept and the copies are dead-lettered."""
    _index_keywords(env)
    summary = generate(
        env["data"], keywords=0, products=200, dates=DATES, seed=9, bad_rate=0.08, row_group_size=100
    )
    manifest = json.loads(Path(summary["tables"]["products"]["manifest"]).read_text())
    recurring = manifest["partitions"][DATES[1]]["injected"]["duplicate_id_cross_partition"]
    conf = _conf(env, dt_end=None, max_dead_letter_ratio=0.5)
    newer = _report(run_dag("product_link", {**conf, "dt": DATES[1]}), "product_link")
    older = _report(run_dag("product_link", {**conf, "dt": DATES[0]}), "product_link")
    _assert_balanced(newer)
    _assert_balanced(older)
    # The state knows dt2 spoke later: dt1's rows of those ids are not even embedded.
    assert older["embed"]["extra"]["superseded"] == recurring["count"] > 0
    docs = _sources(env["prod"])
    for product_id in recurring["ids"]:
        assert docs[str(product_id)]["dt"] == DATES[1]
    within = manifest["partitions"][DATES[0]]["injected"].get("duplicate_id", {"count": 0})
    assert older["embed"]["dead_letters_by_reason"].get("duplicate_id", 0) == within["count"]


def test_threshold_keeps_products_with_no_keyword_and_filters_match_the_product(env):
    _index_keywords(env)
    generate(env["data"], keywords=0, products=60, dates=[DATES[0]], seed=3, row_group_size=100)
    report = _report(run_dag("product_link", _conf(env, dt_end=None, score_threshold=0.9999)), "product_link")
    _assert_balanced(report)
    docs = _sources(env["prod"])
    empty = [d for d in docs.values() if d["keywords"] == [] and d["keyword_count"] == 0]
    # Random tiny-model vectors: only a product whose name equals a keyword scores above 0.9999.
    assert len(docs) == 60 and len(empty) == report["sinks"]["link"]["extra"]["empty_links"] >= 55
    assert all(k["score"] >= 0.9999 for d in docs.values() for k in d["keywords"])

    report = _report(
        run_dag(
            "product_link", _conf(env, dt_end=None, match_fields=["category"], top_k=3, search_hnsw_ef=64)
        ),
        "product_link",
    )
    _assert_balanced(report)
    categories = {k: d.get("category") for k, d in _sources(env["kw"]).items()}
    docs = _sources(env["prod"])
    checked = 0
    for doc in docs.values():
        assert doc["link"]["match_fields"] == ["category"] and len(doc["keywords"]) <= 3
        assert (doc["link"]["hnsw_ef"], doc["link"]["exact"]) == (64, False)  # how the list was searched
        if doc.get("category"):
            checked += len(doc["keywords"])
            assert {categories[k["keyword_id"]] for k in doc["keywords"]} <= {doc["category"]}
    assert checked > 0


def _failed_at_prepare(run) -> None:
    states = _states(run)
    assert str(run.state) == "failed" and states["prepare"] == "failed", states
    prepare = next(ti for ti in run.get_task_instances() if ti.task_id == "prepare")
    assert prepare.try_number == 1  # a setup error is not retried
    assert "link[0]" not in states or states["link[0]"] != "success"


def test_setup_errors_fail_early_with_both_sides_named(env, server, repository):
    from embedding_pipeline.runs.input_kinds import InputSpec
    from embedding_pipeline.runs.plan import model_info
    from embedding_pipeline.serving.process import free_port
    from embedding_pipeline.stages.products.stage import LinkOptions, LinkSetupError, prepare
    from embedding_pipeline.stores.elasticsearch.client import open_es
    from embedding_pipeline.stores.elasticsearch.errors import EsIndexError
    from embedding_pipeline.stores.qdrant.client import open_client
    from embedding_pipeline.stores.qdrant.collections import ensure_collection
    from embedding_pipeline.stores.qdrant.errors import CollectionMismatchError, QdrantUnavailableError
    from embedding_pipeline.stores.qdrant.settings import QdrantSettings

    generate(env["data"], keywords=0, products=40, dates=[DATES[0]], seed=4, row_group_size=100)
    # No keyword collection yet.
    _failed_at_prepare(run_dag("product_link", _conf(env, dt_end=None)))
    model = model_info(None, "tiny_bert")
    # What the plan hands prepare: products to link, no partition id lists (nothing to delete).
    planned = {"chunks": [{"chunk_id": "c"}], "run_dir": str(env["data"] / "run"), "partition_ids": {}}
    spec = InputSpec()
    with pytest.raises(LinkSetupError, match=r"no keyword collection .*run keyword_index"):
        prepare(LinkOptions(keyword_alias=env["kw"], product_alias=env["prod"]), model, planned, spec)

    # A keyword collection that exists but holds nothing.
    with open_client() as qdrant:
        ensure_collection(qdrant, env["kw"], dim=model["dim"], model_name="tiny_bert", model_version=1)
    with pytest.raises(LinkSetupError, match="is empty: index keywords"):
        prepare(LinkOptions(keyword_alias=env["kw"], product_alias=env["prod"]), model, planned, spec)

    _index_keywords(env)
    # Keywords built with tiny_bert, products embedded with another model of the same dimension.
    _failed_at_prepare(run_dag("product_link", _conf(env, dt_end=None, model_name="tiny_xlm_roberta")))
    with pytest.raises(CollectionMismatchError, match=r"tiny_bert v1 .*tiny_xlm_roberta v1.*model differ"):
        prepare(
            LinkOptions(keyword_alias=env["kw"], product_alias=env["prod"]),
            model_info(None, "tiny_xlm_roberta"),
            planned,
            spec,
        )

    # Qdrant unreachable: a clear error after the bounded retries, not a client traceback.
    closed = QdrantSettings(url=f"http://127.0.0.1:{free_port()}", max_retries=1, timeout=2)
    with pytest.raises(QdrantUnavailableError, match="cannot reach Qdrant"):
        prepare(
            LinkOptions(keyword_alias=env["kw"], product_alias=env["prod"]),
            model,
            planned,
            spec,
            {"qdrant": closed},
        )

    # An existing product index whose mapping conflicts (keywords not nested).
    with open_es() as es:
        es.indices.create(
            index=f"{env['prod']}-g1",
            mappings={
                "properties": {
                    "keywords": {"type": "object", "properties": {"keyword_id": {"type": "keyword"}}}
                }
            },
            aliases={env["prod"]: {"is_write_index": True}},
        )
    _failed_at_prepare(run_dag("product_link", _conf(env, dt_end=None)))
    with pytest.raises(EsIndexError, match="'keywords' is object, expected nested"):
        prepare(LinkOptions(keyword_alias=env["kw"], product_alias=env["prod"]), model, planned, spec)


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("top_k", 0),
        ("top_k", 5000),
        ("score_threshold", 1.5),
        ("match_fields", ["colour"]),
        ("keyword_filter", "lang=ja"),
        ("product_role", "document"),
        ("search_hnsw_ef", 0),
        ("search_exact", "yes"),
        ("product_alias", "Products"),
        ("link_mode", "sparse"),
        ("dense_weight", -1),
        ("lexical_weight", 101),
        ("rrf_k", 0),
        ("fusion_depth", 0),
    ],
)
def test_bad_link_params_are_refused(airflow_db, param, value):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.exceptions import ParamValidationError

    bag = DagBag(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    for dag_id in ("product_link", "embedding_chain"):
        params = copy.deepcopy(bag.get_dag(dag_id).params)
        with pytest.raises(ParamValidationError):
            params[param] = value


def test_match_filters_take_the_products_value_and_skip_nulls():
    """Unit: the per-product filter (no services). A product value overrides a static filter on the
    same field; a null product value adds no condition, leaving the static one."""
    from embedding_pipeline.errors import ConfigError
    from embedding_pipeline.stages.products.linker import _filters
    from embedding_pipeline.stages.products.options import LinkOptions

    options = LinkOptions(match_fields=("category", "lang"), keyword_filter={"lang": ["ja", "en"]})
    payloads = [{"category": "食品", "lang": "ja"}, {"category": None}, {}]
    assert _filters(options, payloads) == [
        {"category": "食品", "lang": "ja"},
        {"lang": ["ja", "en"]},
        {"lang": ["ja", "en"]},
    ]
    assert _filters(LinkOptions(), payloads) == [None, None, None]
    with pytest.raises(ConfigError, match="brand"):
        LinkOptions(match_fields=("brand",))


def test_no_products_ends_no_data_even_before_any_keyword_is_indexed(env):
    """A nightly run on a fresh deployment: no product partition and no keyword collection yet.
    Nothing to link is not an error (``missing_partition=skip``); with products it would be."""
    report = _report(run_dag("product_link", _conf(env, dt="2023-06-01", dt_end=None)), "product_link")
    assert report["status"] == "no_data" and report["missing_partitions"] == ["2023-06-01"]
    assert report["rows_read"] == 0 and report["keyword_collection"] is None


def test_hybrid_and_lexical_lists_are_the_fused_rankings_and_say_how_they_were_made(env):
    """link_mode hybrid: each stored list is the RRF of Qdrant's dense ranking and Elasticsearch's
    BM25 ranking of the product name (recomputed here from both stores), weights as given;
    lexical: BM25 alone. The ``link`` object records mode, weights, k and depth."""
    from embedding_pipeline.stages.products.fusion import TIE_MARGIN, best, rrf
    from embedding_pipeline.stages.products.linker import _filters
    from embedding_pipeline.stages.products.options import LinkOptions
    from embedding_pipeline.stores.elasticsearch.client import open_es
    from embedding_pipeline.stores.elasticsearch.read import match_many
    from embedding_pipeline.stores.qdrant.client import open_client
    from embedding_pipeline.stores.qdrant.search import Hit, SearchOptions, iter_vectors, search

    # MiniLM, not a tiny random model: those give many keywords the same vector, and the quality
    # check's exact dense ranks would order such ties differently from Qdrant.
    _index_keywords(env, model_name="minilm")
    generate(env["data"], keywords=0, products=40, dates=[DATES[0]], seed=8, row_group_size=100)
    conf = _conf(
        env,
        model_name="minilm",
        dt_end=None,
        link_mode="hybrid",
        dense_weight=2.0,
        lexical_weight=1.0,
        fusion_depth=20,
        es_alias=env["kw"],
    )
    _assert_balanced(_report(run_dag("product_link", {**conf, "match_fields": ["category"]}), "product_link"))
    docs = _sources(env["prod"])
    options = LinkOptions(match_fields=("category",), top_k=5, fusion_depth=20)
    with open_client() as qdrant, open_es() as es:
        vectors = {
            str(p["product_id"]): (v, p)
            for block, payloads in iter_vectors(qdrant, env["prod"], with_payload=["product_id", "category"])
            for v, p in zip(block, payloads, strict=True)
        }
        ids = sorted(docs)
        filters = _filters(options, [vectors[i][1] for i in ids])
        dense = search(
            qdrant,
            env["kw"],
            [vectors[i][0] for i in ids],
            SearchOptions(top_k=20 + TIE_MARGIN),
            query_filters=filters,
        )
        names = [docs[i]["product_name"] for i in ids]
        found = match_many(
            es, env["kw"], "keyword", names, 20 + TIE_MARGIN, filters, ["keyword_id", "keyword"]
        )
    lexical = [best([Hit(d, d["_score"]) for d in hits], 20) for hits in found]
    assert sum(len(x) for x in lexical) > 0  # some names share words with keywords
    for i, d, x in zip(ids, dense, lexical, strict=True):
        expected = rrf([(best(d, 20), 2.0), (x, 1.0)], 60, 5)
        stored = docs[i]["keywords"]
        assert [k["keyword_id"] for k in stored] == [str(p["keyword_id"]) for p, _ in expected]
        assert [k["score"] for k in stored] == [round(s, 6) for _, s in expected]
        assert docs[i]["link"] | {"keyword_collection": None} == {
            **docs[i]["link"],
            "keyword_collection": None,
            "mode": "hybrid",
            "dense_weight": 2.0,
            "lexical_weight": 1.0,
            "rrf_k": 60,
            "fusion_depth": 20,
            "keyword_index": env["kw"],
        }

    # The quality check recomputes fused lists the same way (exact dense ranking + ES), so it can
    # tell a stored list that is not the fusion.
    from embedding_pipeline.stages.products.quality import check_link_quality
    from embedding_pipeline.stores.qdrant.collections import resolve_alias

    with open_client() as qdrant, open_es() as es:
        products = resolve_alias(qdrant, env["prod"])
        report = check_link_quality(es, qdrant, products, env["prod"], env["kw"], sample=40)
        assert (report.recall_mean, report.sample_size) == (1.0, len(docs))
        victim = next(i for i in ids if docs[i]["keywords"])
        version = es.get(index=env["prod"], id=victim)["_version"]  # kept: the next relink may overwrite
        corrupted = {**docs[victim], "keywords": docs[victim]["keywords"][1:]}
        es.index(
            index=env["prod"],
            id=victim,
            document=corrupted,
            version=version,
            version_type="external_gte",
            refresh=True,
        )
        report = check_link_quality(es, qdrant, products, env["prod"], env["kw"], sample=40)
        assert [(b.product_id, b.found, b.expected) for b in report.below] == [(victim, 4, 5)]

    # Lexical alone, no filter: BM25's order, and a product with no word in common links nothing.
    run = run_dag("product_link", {**conf, "link_mode": "lexical", "dense_weight": 1.0})
    _assert_balanced(_report(run, "product_link"))
    docs = _sources(env["prod"])
    with open_es() as es:
        found = match_many(es, env["kw"], "keyword", [docs[i]["product_name"] for i in ids], 5 + TIE_MARGIN)
    for i, hits in zip(ids, found, strict=True):
        top = best([Hit(h, h["_score"]) for h in hits], 5)
        assert [k["keyword_id"] for k in docs[i]["keywords"]] == [str(h.payload["keyword_id"]) for h in top]
        assert docs[i]["link"]["mode"] == "lexical" and "dense_weight" not in docs[i]["link"]


def test_broken_param_rules_fail_the_first_task_at_once_all_in_one_line(env, capfd):
    """Rules between Params the form cannot check (dt_end before dt, hybrid with a zero weight) fail
    the run's first task on its first try - the stage DAG's plan, the chain's model.decide, before
    any model or store work - with every broken rule in one message."""
    generate(env["data"], keywords=0, products=10, dates=[DATES[0]], seed=8, row_group_size=100)
    broken = _conf(env, dt=DATES[1], dt_end=DATES[0], link_mode="hybrid", lexical_weight=0.0)
    expected = (
        f"Params rejected: dt_end {DATES[0]} is before dt {DATES[1]}; "
        "link_mode hybrid fuses two rankings: dense_weight and lexical_weight must both be > 0"
    )
    for dag_id, first in (("product_link", "plan"), ("embedding_chain", "model.decide")):
        capfd.readouterr()
        run = run_dag(dag_id, broken)
        states = _states(run)
        assert str(run.state) == "failed" and states[first] == "failed", states
        task = next(ti for ti in run.get_task_instances() if ti.task_id == first)
        assert task.try_number == 1
        output = "".join(capfd.readouterr())
        assert expected in output, output[-3000:]
        succeeded = {task for task, state in states.items() if state == "success"}
        assert {task.rpartition(".")[2] for task in succeeded} <= {"finish_sinks"}, succeeded  # teardown
