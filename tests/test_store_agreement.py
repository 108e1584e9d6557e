"""Qdrant and Elasticsearch hold the same ids: the finalize check of the ids a run wrote, and the
``verify`` command over a whole pair. Real stores (Qdrant local mode, the ES emulator or ``ES_URL``),
the real inference server, the stage functions in run order (local.inline_runner)."""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

import pytest
from embedding_pipeline.generations.agreement import StoresDisagreeError, choose
from embedding_pipeline.local.inline_runner import run_keywords
from embedding_pipeline.runs.input_kinds import InputSpec
from embedding_pipeline.runs.report import read_report
from embedding_pipeline.runs.staging import point_id
from hypothesis import given
from hypothesis import strategies as st
from store_data import row, stored_keywords, write_keywords

MODEL = "tiny_bert"
_runs = itertools.count()


def _hash(value: str) -> bytes:
    return hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8).digest()


@given(st.lists(st.text(max_size=6), max_size=60), st.integers(1, 20))
def test_choose_keeps_every_distinct_id_or_the_smallest_hashes(ids, limit):
    chosen, sampled = choose(iter(ids), limit)
    distinct = set(ids)
    if len(distinct) <= limit:
        assert (sorted(chosen), sampled) == (sorted(distinct), False)
    else:
        assert sampled and len(chosen) == limit
        assert set(chosen) == set(sorted(distinct, key=_hash)[:limit])
    assert choose(reversed(ids), limit)[0] == chosen  # the same sample whatever the order


@pytest.fixture
def kw(pipeline_services) -> dict[str, Any]:
    tmp_path = pipeline_services
    return {"root": tmp_path / "data", "alias": f"ag_{tmp_path.name.lower()[-30:]}", "tmp": tmp_path}


def run(kw: dict[str, Any], dts: list[str], before_finalize=None) -> dict[str, Any]:
    run_dir = kw["tmp"] / "runs" / f"r{next(_runs)}"
    spec = InputSpec(tombstone_column="deleted", max_delete_ratio=0.5)
    return run_keywords(kw["root"], dts, run_dir, MODEL, spec, kw["alias"], before_finalize=before_finalize)


def test_finalize_checks_the_written_ids_and_a_difference_fails_before_the_state_commit(kw):
    write_keywords(kw["root"], "2024-01-01", [row(i) for i in range(12)])
    first = run(kw, ["2024-01-01"])
    assert first["agreement"]["ok"] and first["agreement"]["compared"] == 12

    write_keywords(kw["root"], "2024-01-02", [row(20), row(21), row(3, deleted=True)])

    def lose_an_es_write(prepared: dict[str, Any]) -> None:  # a write ES lost after it was acknowledged
        from embedding_pipeline.stores.elasticsearch.client import open_es

        with open_es() as es:
            es.delete(index=prepared["es_index"], id="21", refresh=True)

    with pytest.raises(StoresDisagreeError, match=r"1 only in Qdrant \(e.g. 21\)"):
        run(kw, ["2024-01-02"], before_finalize=lose_an_es_write)
    failed = read_report(sorted((kw["tmp"] / "runs").iterdir())[-1])
    assert failed["status"] == "failed" and failed["agreement"]["only_qdrant"] == 1
    assert failed["agreement"]["compared"] == 3  # 20, 21 and the deleted 3

    # Nothing was committed: the re-run writes the night again and both stores agree.
    again = run(kw, ["2024-01-02"])
    assert again["agreement"]["ok"] and again["embed"]["extra"]["embedded"] == 2
    in_qdrant, in_es = stored_keywords(kw["alias"])
    assert in_qdrant == in_es and set(in_qdrant) == {str(i) for i in [*range(12), 20, 21] if i != 3}


def test_verify_lists_the_ids_only_one_store_holds(kw, capsys):
    from embedding_pipeline.cli.main import main
    from embedding_pipeline.stores.elasticsearch.client import open_es
    from embedding_pipeline.stores.qdrant.client import open_client
    from qdrant_client.http import models

    write_keywords(kw["root"], "2024-01-01", [row(i) for i in range(30)])
    run(kw, ["2024-01-01"])
    args = ["verify", "--keyword-alias", kw["alias"], "--product-alias", f"{kw['alias']}_none"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"keywords: OK: 30 ids in {kw['alias']}-" in out and "products: alias" in out, out

    with open_es() as es:
        es.delete(index=kw["alias"], id="7", refresh=True)
    with open_client() as qdrant:
        qdrant.delete(kw["alias"], models.PointIdsList(points=[point_id("keyword", "9")]))
        vector = [0.1] * qdrant.get_collection(kw["alias"]).config.params.vectors.size
        rogue = models.PointStruct(id=point_id("keyword", "x1"), vector=vector, payload={"keyword_id": "x1"})
        qdrant.upsert(kw["alias"], [rogue])
    assert main([*args, "--json"]) == 1
    result = json.loads(capsys.readouterr().out)["keywords"]
    assert (result["only_qdrant"], result["only_es"]) == (2, 1)
    assert (result["examples_qdrant"], result["examples_es"]) == (["7", "x1"], ["9"])
    assert result["compared"] == 31
