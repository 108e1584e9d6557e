"""Read side, link quality check and the search CLI, through real processes.

A few hundred sample keywords are embedded by the real local inference server (MiniLM), staged
and written the way production writes them (Qdrant local mode on disk via ``upsert_chunk``, the
noida-db ES emulator - or a real cluster named by ``ES_URL`` - via ``index_keyword_chunk``).
Product documents are linked as the link stage does (``search`` with the product's
filters and threshold, ``product_document``, ``bulk_index``). Every expectation about exact lists
is recomputed here independently with NumPy over the vectors the test embedded itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import settings_for
from elasticsearch import Elasticsearch
from embedding_pipeline.cli.format import display_width
from embedding_pipeline.cli.search import ProductNotFoundError, register
from embedding_pipeline.errors import PipelineError
from embedding_pipeline.runs.dead_letter import DeadLetterWriter
from embedding_pipeline.runs.staging import StagedChunkWriter, content_hash
from embedding_pipeline.sample.generate import generate
from embedding_pipeline.serving.client import EmbeddingClient
from embedding_pipeline.stages.keywords.documents import KEYWORD_POINTS, ensure_keyword_index, search_keywords
from embedding_pipeline.stages.keywords.stage import index_keyword_chunk
from embedding_pipeline.stages.products.documents import (
    LinkStamp,
    linked_keywords,
    product_document,
    product_mappings,
)
from embedding_pipeline.stages.products.quality import LinkQualityError, check_link_quality, render_report
from embedding_pipeline.stores.elasticsearch.bulk import bulk_index
from embedding_pipeline.stores.elasticsearch.client import make_client
from embedding_pipeline.stores.elasticsearch.errors import EsIndexError
from embedding_pipeline.stores.elasticsearch.indices import count_docs, ensure_index
from embedding_pipeline.stores.elasticsearch.read import get_document, sample_documents
from embedding_pipeline.stores.elasticsearch.settings import EsSettings
from embedding_pipeline.stores.qdrant.client import open_client
from embedding_pipeline.stores.qdrant.collections import ensure_collection, staged_model
from embedding_pipeline.stores.qdrant.errors import CollectionNotFoundError
from embedding_pipeline.stores.qdrant.search import SearchOptions, iter_vectors, search
from embedding_pipeline.stores.qdrant.settings import QdrantSettings
from embedding_pipeline.stores.qdrant.upsert import upsert_chunk

pytestmark = pytest.mark.es_live  # ES_URL=... pytest -m es_live runs this module against a real cluster

MODEL = "minilm"
K = 10
DT = "2024-01-01"
QDRANT_ALIAS = "keywords"
LANG_FILTER = {"lang": ["ja"]}
# Products 0..19 are linked top-K without filter or threshold.
NO_ROLE = 20  # embedded without a prefix role (recorded as "none")
OVERLAP = 21  # match_fields ["category"] over a static category filter that excludes its category
FILTERED = range(22, 28)  # keyword_filter: one of the two most common keyword categories
MATCHED = range(28, 34)  # match_fields ["category"] + keyword_filter lang=ja; 33 has no category
THRESHOLD = range(34, 40)  # a score threshold that cuts lists below K
NO_CATEGORY = 33
TIE_ROW = 5  # its K-th neighbour has a twin keyword (see the corpus fixture)


# --------------------------------------------------------------------------------------------------
# The corpus: keywords in Qdrant + ES, linked product documents in ES
# --------------------------------------------------------------------------------------------------


@dataclass
class Corpus:
    """What was written, and the vectors to recompute every exact list independently."""

    qdrant_path: Path
    keyword_alias: str  # Elasticsearch
    product_alias: str
    model_version: int
    keyword_ids: list[str]
    keywords: list[str]
    payloads: list[dict[str, Any]]
    keyword_vectors: np.ndarray
    products: list[dict[str, Any]]
    queries: np.ndarray
    links: list[dict[str, Any]]
    twins: tuple[str, str]
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def allowed(self, row: int) -> np.ndarray:
        """Keywords the product's link filters let through (threshold aside)."""
        ok = np.ones(len(self.keyword_ids), dtype=bool)
        link = self.links[row]
        # As the link stage does it: a matched field with a value replaces the static condition.
        conditions = {name: values for name, values in json.loads(link["keyword_filter"]).items()}
        for name in link["match_fields"]:
            if self.products[row].get(name) is not None:
                conditions[name] = [self.products[row][name]]
        for name, values in conditions.items():
            ok &= np.array([p.get(name) in values for p in self.payloads])
        return ok

    def scores(self, row: int) -> np.ndarray:
        return self.keyword_vectors @ self.queries[row]

    def exact(self, row: int, k: int = K, *, filtered: bool = True) -> list[tuple[str, float]]:
        """(keyword_id, score) of the exact top-k under the product's filters and threshold."""
        scores = self.scores(row)
        ok = self.allowed(row) if filtered else np.ones(len(scores), dtype=bool)
        threshold = self.links[row]["score_threshold"]
        if filtered and threshold is not None:
            ok &= scores > threshold
        order = [i for i in np.argsort(-scores, kind="stable") if ok[i]][:k]
        return [(self.keyword_ids[i], float(scores[i])) for i in order]

    def passes(self, row: int, keyword_id: str) -> bool:
        return bool(self.allowed(row)[self.keyword_ids.index(keyword_id)])


def _rows(root: Path, table: str) -> list[dict[str, Any]]:
    return pq.read_table(root / table / f"dt={DT}" / "part-00000.parquet").to_pylist()


def _delete_alias_indices(es: Elasticsearch, alias: str) -> None:
    names = list(es.indices.get(index=f"{alias}*", allow_no_indices=True, expand_wildcards="all").body)
    for name in names:
        es.indices.delete(index=name, ignore_unavailable=True)


def write_products(es: Elasticsearch, alias: str, docs: dict[str, dict[str, Any]], run_dir: Path) -> None:
    """Product documents into ``alias`` as the link stage writes them (mapping, bulk, refresh)."""
    version = next(iter(docs.values()))["model_version"]
    ensure_index(es, alias, product_mappings(model_name=MODEL, model_version=version, dim=384))
    dead = DeadLetterWriter(run_dir, "product_link", alias)
    counts = bulk_index(es, alias, [list(docs.items())], dead)
    assert counts.indexed == len(docs) and counts.dead_lettered == 0, dead.by_reason()
    assert count_docs(es, alias) == len(docs)


@pytest.fixture(scope="module")
def es(es_url: str) -> Iterator[Elasticsearch]:
    settings = EsSettings.from_env() if os.environ.get("ES_URL") else EsSettings(hosts=(es_url,))
    client = make_client(settings)
    yield client
    client.close()


@pytest.fixture(scope="module")
def embedder(server, repository: Path) -> Iterator[EmbeddingClient]:
    with EmbeddingClient(settings_for(server, repository, model_name=MODEL)) as client:
        yield client


@pytest.fixture(scope="module")
def corpus(
    es: Elasticsearch, embedder: EmbeddingClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Corpus]:
    work = tmp_path_factory.mktemp("search-quality")
    generate(work / "data", keywords=400, products=40, dates=[DT], lang="ja", seed=7)
    keyword_rows, product_rows = _rows(work / "data", "keywords"), _rows(work / "data", "products")
    suffix = uuid.uuid4().hex[:8]
    keyword_alias, product_alias = f"t-sq-kw-{suffix}", f"t-sq-prod-{suffix}"
    version = embedder.published.version

    ids = [str(r["keyword_id"]) for r in keyword_rows]
    texts = [r["keyword"] for r in keyword_rows]
    payloads = [{"category": r["category"], "lang": r["lang"], "dt": DT} for r in keyword_rows]
    vectors = embedder.embed(texts, role="passage").vectors
    common = [
        c for c, _ in Counter(p["category"] for p in payloads if p["category"] is not None).most_common(3)
    ]
    category_filter = {"category": common[:2]}
    products = [
        {
            "product_id": str(r["product_id"]),
            "product_name": r["product_name"],
            "description": r["description"],
            "category": None if i == NO_CATEGORY else r["category"],
            "brand": r["brand"],
            "dt": DT,
        }
        for i, r in enumerate(product_rows)
    ]
    products[OVERLAP]["category"] = common[2]
    queries = embedder.embed([p["product_name"] for p in products], role="query").vectors
    queries[NO_ROLE] = embedder.embed([products[NO_ROLE]["product_name"]], role=None).vectors[0]
    # A twin (same text and vector, another id) of TIE_ROW's K-th neighbour: an exact tie at the
    # boundary, so either twin is a right K-th keyword.
    kth = int(np.argsort(-(vectors @ queries[TIE_ROW]), kind="stable")[K - 1])
    ids.append(f"{ids[kth]}-twin")
    texts.append(texts[kth])
    payloads.append(dict(payloads[kth]))
    vectors = np.vstack([vectors, vectors[kth : kth + 1]])

    writer = StagedChunkWriter(work / "chunk-00000.parquet", embedder.dim, "keyword", MODEL, version)
    for start in range(0, len(ids), 128):
        end = start + 128
        writer.write(ids[start:end], vectors[start:end], texts[start:end], payloads[start:end])
    staged = writer.close()
    corpus = Corpus(
        work / "qdrant",
        keyword_alias,
        product_alias,
        version,
        ids,
        texts,
        payloads,
        vectors,
        products,
        queries,
        [],
        (ids[kth], ids[-1]),
    )
    # A threshold between two clearly separated scores of the first threshold product, so its list
    # holds fewer than K keywords and float noise cannot put a keyword on the boundary.
    ranked = np.sort(corpus.scores(THRESHOLD[0]))[::-1]
    cut = next(i for i in range(3, 9) if ranked[i] - ranked[i + 1] > 2e-3)
    threshold = round(float(ranked[cut] + ranked[cut + 1]) / 2, 4)

    with open_client(QdrantSettings(path=corpus.qdrant_path)) as qdrant:
        target = ensure_collection(qdrant, QDRANT_ALIAS, **staged_model(staged), schema=KEYWORD_POINTS)
        result = upsert_chunk(
            qdrant, QDRANT_ALIAS, staged, DeadLetterWriter(work, "q", "0"), schema=KEYWORD_POINTS
        )
        assert result.indexed == len(ids), result
        for row, product in enumerate(products):
            match_fields = ["category"] if row in MATCHED or row == OVERLAP else []
            keyword_filter = (
                LANG_FILTER if row in MATCHED else category_filter if row in (*FILTERED, OVERLAP) else {}
            )
            score_threshold = threshold if row in THRESHOLD else None
            flt = {**keyword_filter, **{f: product[f] for f in match_fields if product[f] is not None}}
            hits = search(
                qdrant,
                QDRANT_ALIAS,
                queries[row : row + 1],
                SearchOptions(K, score_threshold, flt or None, model_name=MODEL, model_version=version),
            )[0]
            link = {
                "top_k": K,
                "score_threshold": score_threshold,
                "match_fields": match_fields,
                "keyword_filter": json.dumps(keyword_filter, ensure_ascii=False, sort_keys=True),
                "role": "none" if row == NO_ROLE else "query",
                "keyword_collection": target.name,
            }
            corpus.links.append(link)
            corpus.docs[product["product_id"]] = product_document(
                product["product_id"],
                product["product_name"],
                content_hash(product["product_name"], MODEL, version),
                product,
                linked_keywords([(h.payload, h.score) for h in hits]),
                LinkStamp(MODEL, version, "2024-01-02T01:00:00+00:00", link),
            )
            # Qdrant local mode is exact: its list is the independent exact list (scores, allowing ties).
            expected = corpus.exact(row)
            assert len(hits) == len(expected)
            assert np.allclose([h.score for h in hits], [s for _, s in expected], atol=1e-5)

    ensure_keyword_index(es, keyword_alias, model_name=MODEL, model_version=version, dim=embedder.dim)
    indexed = index_keyword_chunk(es, keyword_alias, staged, DeadLetterWriter(work, "e", "0"))
    assert indexed.indexed == len(ids), indexed
    assert count_docs(es, keyword_alias) == len(ids)
    write_products(es, product_alias, corpus.docs, work)

    # The filters and the threshold must change the lists, or the tests below could not tell
    # whether the check applies them.
    changed = [*FILTERED, *(r for r in MATCHED if r != NO_CATEGORY)]
    assert all(corpus.exact(r) != corpus.exact(r, filtered=False) for r in changed)
    assert 0 < len(corpus.exact(THRESHOLD[0])) < K
    overlap = [corpus.payloads[corpus.keyword_ids.index(i)]["category"] for i, _ in corpus.exact(OVERLAP)]
    assert overlap == [common[2]] * K
    yield corpus
    for alias in (keyword_alias, product_alias):
        _delete_alias_indices(es, alias)


@pytest.fixture
def qdrant(corpus: Corpus) -> Iterator[Any]:
    with open_client(QdrantSettings(path=corpus.qdrant_path)) as client:
        yield client


@pytest.fixture
def product_alias(es: Elasticsearch) -> Iterator[str]:
    """A fresh product alias for tests that write their own (corrupted) documents."""
    alias = f"t-sq-prod-{uuid.uuid4().hex[:8]}"
    yield alias
    _delete_alias_indices(es, alias)


# --------------------------------------------------------------------------------------------------
# Read-side functions
# --------------------------------------------------------------------------------------------------


def test_iter_vectors_streams_every_point_once_in_bounded_blocks(corpus: Corpus, qdrant: Any) -> None:
    blocks = list(iter_vectors(qdrant, QDRANT_ALIAS, batch_size=64, with_payload=["keyword_id"]))
    assert all(1 <= len(payloads) <= 64 for _, payloads in blocks)
    assert all(vectors.shape == (len(payloads), 384) for vectors, payloads in blocks)
    assert all(vectors.dtype == np.float32 for vectors, _ in blocks)
    seen = [p["keyword_id"] for _, payloads in blocks for p in payloads]
    assert sorted(seen) == sorted(corpus.keyword_ids)
    assert {key for _, payloads in blocks for p in payloads for key in p} == {"keyword_id"}
    position = {keyword_id: i for i, keyword_id in enumerate(corpus.keyword_ids)}
    for vectors, payloads in blocks:
        expected = corpus.keyword_vectors[[position[p["keyword_id"]] for p in payloads]]
        assert np.allclose(vectors, expected, atol=1e-6)
    with pytest.raises(CollectionNotFoundError, match="no-such-alias"):
        next(iter_vectors(qdrant, "no-such-alias"))


def test_search_keywords_and_get_document(es: Elasticsearch, corpus: Corpus) -> None:
    # A katakana word that occurs in a few keywords: every keyword holding it must be found.
    words = [w for text in corpus.keywords for w in text.split() if re.fullmatch(r"[ァ-ヴー]{4,}", w)]
    word = next(w for w in sorted(set(words)) if 2 <= sum(w in t.split() for t in corpus.keywords) <= 8)
    holding = {i for i, t in zip(corpus.keyword_ids, corpus.keywords, strict=True) if word in t.split()}
    found = search_keywords(es, corpus.keyword_alias, word, size=50)
    assert holding <= {d["keyword_id"] for d in found}
    assert word in found[0]["keyword"]
    assert [d["_score"] for d in found] == sorted((d["_score"] for d in found), reverse=True)

    doc = get_document(es, corpus.keyword_alias, corpus.keyword_ids[5])
    assert doc is not None and doc["keyword"] == corpus.keywords[5] and doc["model_name"] == MODEL
    assert get_document(es, corpus.keyword_alias, "no-such-keyword") is None

    for call in (
        lambda: search_keywords(es, "t-sq-missing", word),
        lambda: get_document(es, "t-sq-missing", "1"),
        lambda: sample_documents(es, "t-sq-missing", 5, seed=0, id_field="product_id"),
    ):
        with pytest.raises(EsIndexError, match="alias 't-sq-missing' does not exist"):
            call()


def test_sample_documents_is_reproducible_and_seeded(es: Elasticsearch, corpus: Corpus) -> None:
    def ids(docs: list[dict[str, Any]]) -> list[str]:
        return [d["product_id"] for d in docs]

    first = ids(sample_documents(es, corpus.product_alias, 10, seed=1, id_field="product_id"))
    assert len(set(first)) == 10 and set(first) <= set(corpus.docs)
    assert ids(sample_documents(es, corpus.product_alias, 10, seed=1, id_field="product_id")) == first
    assert (
        ids(sample_documents(es, corpus.product_alias, 10, seed=1, page_size=7, id_field="product_id"))
        == first
    )
    other = ids(sample_documents(es, corpus.product_alias, 10, seed=2, id_field="product_id"))
    assert set(other) != set(first)
    everything = ids(sample_documents(es, corpus.product_alias, 1000, seed=1, id_field="product_id"))
    assert sorted(everything) == sorted(corpus.docs) and everything[:10] == first
    # The same mechanism samples keywords by their id field.
    keywords = sample_documents(es, corpus.keyword_alias, 25, seed=3, id_field="keyword_id")
    assert len({d["keyword_id"] for d in keywords}) == 25
    with pytest.raises(PipelineError, match="sample size"):
        sample_documents(es, corpus.product_alias, 0, seed=1, id_field="product_id")


# --------------------------------------------------------------------------------------------------
# Link quality
# --------------------------------------------------------------------------------------------------


def test_quality_is_exact_on_local_mode(
    es: Elasticsearch, corpus: Corpus, qdrant: Any, embedder: EmbeddingClient
) -> None:
    report = check_link_quality(es, qdrant, embedder, corpus.product_alias, QDRANT_ALIAS, sample=200, seed=0)
    assert report.sample_size == len(corpus.docs) and report.keywords_scanned == len(corpus.keyword_ids)
    assert report.ks == (K,) and report.keyword_collection == f"{QDRANT_ALIAS}-g1"
    assert report.recall_mean == 1.0 and report.recall_min == 1.0 and report.below == ()
    assert report.max_score_drift < 1e-5
    assert report.model == f"{MODEL} v{corpus.model_version}"
    text = render_report(report)
    assert "recall mean 1.0000  min 1.0000  products below 1: 0" in text
    assert f"of {len(corpus.docs)} sampled products" in text
    # The corpus's link objects name no hnsw_ef (as documents linked before it was recorded): the
    # request carried none, i.e. the server's default.
    assert report.searched_with == {"server default ef": len(corpus.docs)}
    assert f"searched with server default ef ({len(corpus.docs)})" in text

    at_5 = check_link_quality(es, qdrant, embedder, corpus.product_alias, QDRANT_ALIAS, seed=0, top_k=5)
    assert at_5.ks == (5,) and at_5.recall_mean == 1.0
    with pytest.raises(LinkQualityError, match="top_k 11 is more than"):
        check_link_quality(es, qdrant, embedder, corpus.product_alias, QDRANT_ALIAS, top_k=K + 1)


def test_quality_drops_by_exactly_the_corrupted_share(
    es: Elasticsearch,
    corpus: Corpus,
    qdrant: Any,
    embedder: EmbeddingClient,
    product_alias: str,
    tmp_path: Path,
) -> None:
    pid = [p["product_id"] for p in corpus.products]
    docs = json.loads(json.dumps(corpus.docs))
    expected: dict[str, float] = {}

    def relink(row: int, keyword_ids: list[str]) -> None:
        scores = dict(zip(corpus.keyword_ids, corpus.scores(row).tolist(), strict=True))
        text = dict(zip(corpus.keyword_ids, corpus.keywords, strict=True))
        hits = [({"keyword_id": i, "keyword": text[i]}, scores[i]) for i in keyword_ids]
        docs[pid[row]]["keywords"] = linked_keywords(hits)

    def stored(row: int) -> list[str]:
        return [k["keyword_id"] for k in docs[pid[row]]["keywords"]]

    # 1: the best keyword dropped.
    dropped = stored(0)[0]
    relink(0, stored(0)[1:])
    expected[pid[0]] = (K - 1) / K
    # 2: rank 2 replaced by the keyword least similar to the product.
    replaced = stored(1)[1]
    farthest = corpus.keyword_ids[int(np.argmin(corpus.scores(1)))]
    relink(1, [farthest if i == replaced else i for i in stored(1)])
    expected[pid[1]] = (K - 1) / K
    # 3: nothing stored at all.
    relink(2, [])
    expected[pid[2]] = 0.0
    # 4: a category-matched product stored with its unfiltered list (as if the filter were ignored):
    # only unfiltered neighbours that pass the filter are right.
    row = MATCHED[0]
    unfiltered = [i for i, _ in corpus.exact(row, filtered=False)]
    relink(row, unfiltered)
    expected[pid[row]] = sum(corpus.passes(row, i) for i in unfiltered) / K
    assert expected[pid[row]] < 1.0
    # 5: a threshold product loses its last keyword: recall over its short exact list.
    row = THRESHOLD[0]
    short = stored(row)
    relink(row, short[:-1])
    expected[pid[row]] = (len(short) - 1) / len(short)

    write_products(es, product_alias, docs, tmp_path)
    report = check_link_quality(es, qdrant, embedder, product_alias, QDRANT_ALIAS, sample=200, seed=0)
    mean = (len(docs) - len(expected) + sum(expected.values())) / len(docs)
    assert report.recall_mean == pytest.approx(mean, abs=1e-12)
    assert report.recall_min == 0.0
    assert {e.product_id: e.recall for e in report.below} == pytest.approx(expected, abs=1e-12)
    by_id = {e.product_id: e for e in report.below}
    assert by_id[pid[0]].missed[0].keyword_id == dropped and by_id[pid[0]].not_exact == 0
    assert [m.keyword_id for m in by_id[pid[1]].missed] == [replaced] and by_id[pid[1]].not_exact == 1
    assert (by_id[pid[2]].found, by_id[pid[2]].expected) == (0, K)
    assert report.below[0].product_id == pid[2]  # worst first
    text = render_report(report)
    assert f"products below 1: {len(expected)}" in text and f"{pid[0]} " in text and dropped in text


def test_quality_ties_and_threshold_noise_are_not_misses(
    es: Elasticsearch,
    corpus: Corpus,
    qdrant: Any,
    embedder: EmbeddingClient,
    product_alias: str,
    tmp_path: Path,
) -> None:
    pid = [p["product_id"] for p in corpus.products]
    docs = json.loads(json.dumps(corpus.docs))
    scores = {row: sorted(corpus.scores(row).tolist(), reverse=True) for row in (6, 7, 8)}

    # The K-th keyword swapped for its twin: the same score, so still a right answer.
    first, second = corpus.twins
    entries = docs[pid[TIE_ROW]]["keywords"]
    assert entries[-1]["keyword_id"] in corpus.twins
    entries[-1]["keyword_id"] = second if entries[-1]["keyword_id"] == first else first
    tie_scores = corpus.scores(TIE_ROW)[[corpus.keyword_ids.index(i) for i in corpus.twins]]
    assert tie_scores[0] == tie_scores[1]

    # A threshold a hair (2e-7) under the 3rd keyword's score: Qdrant's arithmetic may well have
    # left it out, so a list of the first two is not missing it.
    def relink(row: int, threshold: float, keep: int) -> None:
        docs[pid[row]]["link"]["score_threshold"] = threshold
        docs[pid[row]]["keywords"] = docs[pid[row]]["keywords"][:keep]

    relink(6, scores[6][2] - 2e-7, keep=2)
    # The threshold clearly under the 3rd keyword (between the 3rd and the 4th): missing it is a miss,
    # while a 4th keyword below the threshold is an extra that recall does not count against.
    for row in (7, 8):
        assert scores[row][2] - scores[row][3] > 1e-5
    relink(7, (scores[7][2] + scores[7][3]) / 2, keep=2)
    relink(8, (scores[8][2] + scores[8][3]) / 2, keep=4)

    write_products(es, product_alias, docs, tmp_path)
    report = check_link_quality(es, qdrant, embedder, product_alias, QDRANT_ALIAS, sample=200, seed=0)
    assert [(e.product_id, e.recall, e.found, e.expected) for e in report.below] == [(pid[7], 2 / 3, 2, 3)]
    assert report.recall_mean == pytest.approx((len(docs) - 1 + 2 / 3) / len(docs), abs=1e-12)


def test_quality_refuses_other_models_collections_and_empty_aliases(
    es: Elasticsearch,
    corpus: Corpus,
    qdrant: Any,
    embedder: EmbeddingClient,
    server,
    repository: Path,
    product_alias: str,
    tmp_path: Path,
) -> None:
    with (
        EmbeddingClient(settings_for(server, repository, model_name="tiny_bert")) as tiny,
        pytest.raises(
            LinkQualityError,
            match=rf"linked with {MODEL} v\d+, but the embedding client holds tiny_bert v\d+",
        ),
    ):
        check_link_quality(es, qdrant, tiny, corpus.product_alias, QDRANT_ALIAS)

    ensure_collection(
        qdrant, "other-keywords", dim=embedder.dim, model_name=MODEL, model_version=corpus.model_version
    )
    with pytest.raises(LinkQualityError, match=r"\['keywords-g1'\].*'other-keywords-g1'"):
        check_link_quality(es, qdrant, embedder, corpus.product_alias, "other-keywords")

    ensure_index(es, product_alias, product_mappings(model_name=MODEL, model_version=1, dim=384))
    with pytest.raises(LinkQualityError, match="holds no product documents"):
        check_link_quality(es, qdrant, embedder, product_alias, QDRANT_ALIAS)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def cli(es_url: str, corpus: Corpus, server, repository: Path, monkeypatch: pytest.MonkeyPatch):
    """Run a ``search``/``quality`` command line through ``register()``, services from the environment."""
    monkeypatch.setenv("ES_URL", es_url)
    monkeypatch.setenv("QDRANT_PATH", str(corpus.qdrant_path))
    monkeypatch.delenv("QDRANT_URL", raising=False)
    monkeypatch.setenv("EMBEDDING_MODEL_REPOSITORY", str(repository))
    monkeypatch.setenv("EMBEDDING_SERVER_GRPC_PORT", str(server.grpc_port))
    monkeypatch.setenv("EMBEDDING_SERVER_HTTP_PORT", str(server.http_port))
    parser = argparse.ArgumentParser(prog="embedding-pipeline")
    register(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> int:
        args = parser.parse_args(argv)
        return args.func(args)

    return run


def _columns(line: str) -> list[tuple[int, int, str]]:
    """(start, end) display columns and text of each cell of a table line (cells are 2+ spaces apart)."""
    cells = []
    for match in re.finditer(r"\S+(?: \S+)*", line):
        start = display_width(line[: match.start()])
        cells.append((start, start + display_width(match.group()), match.group()))
    return cells


def _assert_aligned(lines: list[str]) -> None:
    """Left-aligned columns start, right-aligned (rank, score) ones end, at the same display column."""
    header = _columns(lines[0])
    for line in lines[1:]:
        cells = _columns(line)
        assert len(cells) == len(header), line
        assert [c[1] for c in cells[:2]] == [h[1] for h in header[:2]], line
        assert [c[0] for c in cells[2:]] == [h[0] for h in header[2:]], line


def test_display_width_counts_wide_characters_twice() -> None:
    assert display_width("東京 ラーメン") == 13
    assert display_width("ｶﾞ") == 2  # halfwidth katakana stays narrow
    assert display_width("cafe\u0301") == 4  # a combining accent takes no column


def test_cli_search_text(cli, corpus: Corpus, capsys: pytest.CaptureFixture[str]) -> None:
    keyword = corpus.keywords[0]
    assert cli("search", "text", keyword, "--alias", corpus.keyword_alias, "--size", "5") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("5 keyword(s) in") and lines[1].split() == [
        "rank",
        "score",
        "keyword",
        "keyword_id",
        "category",
        "lang",
    ]
    assert keyword in lines[2] and corpus.keyword_ids[0] in lines[2]
    _assert_aligned(lines[1:])


def test_cli_search_meaning_matches_qdrant(cli, corpus: Corpus, capsys: pytest.CaptureFixture[str]) -> None:
    product = corpus.products[3]
    code = cli("search", "meaning", product["product_name"], "--top-k", "5", "--model", MODEL)
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"-> {QDRANT_ALIAS}-g1 ({MODEL} v{corpus.model_version}, role query)" in lines[0]
    rows = [_columns(line) for line in lines[2:]]
    # The exact top 5, best first; equal scores may swap places, so each shown keyword must carry its
    # own exact score and the scores must be the exact top 5.
    expected = corpus.exact(3, 5, filtered=False)
    scores = dict(zip(corpus.keyword_ids, corpus.scores(3).tolist(), strict=True))
    assert [float(r[1][2]) for r in rows] == pytest.approx([s for _, s in expected], abs=1e-4)
    assert [float(r[1][2]) for r in rows] == pytest.approx([scores[r[3][2]] for r in rows], abs=1e-4)
    _assert_aligned(lines[1:])


def test_cli_search_product(cli, corpus: Corpus, capsys: pytest.CaptureFixture[str]) -> None:
    product = corpus.products[MATCHED[0]]
    doc = corpus.docs[product["product_id"]]
    assert cli("search", "product", product["product_id"], "--alias", corpus.product_alias, "--top", "3") == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert product["product_name"] in lines[0] and product["product_id"] in lines[0]
    assert (
        "match_fields category" in out
        and '{"lang": ["ja"]}' in out
        and f"collection {QDRANT_ALIAS}-g1" in out
    )
    assert f"{len(doc['keywords'])} (showing 3)" in out
    table = lines[lines.index(next(line for line in lines if line.startswith("rank"))) :]
    assert [_columns(line)[3][2] for line in table[1:]] == [k["keyword_id"] for k in doc["keywords"][:3]]
    _assert_aligned(table)


def test_cli_search_keyword_lists_the_products_linked_to_it(
    cli, corpus: Corpus, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reverse lookup through the nested mapping: every product whose list holds the keyword,
    ordered by that link's stored score, with the link's rank; counted in full, shown up to --size."""
    links = [(pid, k) for pid, doc in corpus.docs.items() for k in doc["keywords"]]
    keyword_id, linked = Counter(k["keyword_id"] for _, k in links).most_common(1)[0]
    assert linked > 3
    expected = sorted(
        ((k["score"], pid, k["rank"]) for pid, k in links if k["keyword_id"] == keyword_id), reverse=True
    )
    argv = ["--alias", corpus.product_alias, "--keyword-alias", corpus.keyword_alias, "--size", "3"]
    assert cli("search", "keyword", keyword_id, *argv) == 0
    lines = capsys.readouterr().out.splitlines()
    text = corpus.keywords[corpus.keyword_ids.index(keyword_id)]
    where = f"in '{corpus.product_alias}' (showing 3)"
    assert lines[0] == f"keyword {keyword_id}  {text}: linked from {linked} product(s) {where}"
    rows = [_columns(line) for line in lines[2:]]
    assert [float(r[1][2]) for r in rows] == pytest.approx([e[0] for e in expected[:3]], abs=1e-4)
    assert [(r[3][2], int(r[0][2])) for r in rows] == [(pid, rank) for _, pid, rank in expected[:3]]
    _assert_aligned(lines[1:])

    unlinked = next(k for k in corpus.keyword_ids if k not in {k["keyword_id"] for _, k in links})
    assert cli("search", "keyword", unlinked, *argv) == 0
    assert "linked from 0 product(s)" in capsys.readouterr().out
    assert cli("search", "keyword", "no-such-keyword", *argv) == 0
    assert f"no-such-keyword (not in '{corpus.keyword_alias}'): linked from 0" in capsys.readouterr().out


def test_cli_quality(cli, corpus: Corpus, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--sample", "15", "--seed", "3", "--product-alias", corpus.product_alias, "--model", MODEL]
    assert cli("quality", *argv) == 0
    out = capsys.readouterr().out
    assert "recall@10 of 15 sampled products (seed 3)" in out
    assert "recall mean 1.0000  min 1.0000  products below 1: 0" in out


def test_cli_quality_scores_against_labels_with_the_collections_model(
    cli, es: Elasticsearch, corpus: Corpus, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """No --model: the model that embedded the keyword collection. --labels: the generator's labels
    score the same sampled lists, with the numbers link_relevance computes for them."""
    from embedding_pipeline.stages.products.relevance import render, score_lists, stored_lists
    from embedding_pipeline.stores.elasticsearch.read import sample_documents

    data = corpus.qdrant_path.parent / "data"
    argv = ["--sample", "15", "--seed", "3", "--product-alias", corpus.product_alias]
    assert cli("quality", *argv, "--labels", str(data)) == 0
    out = capsys.readouterr().out
    assert f"model {MODEL} v{corpus.model_version}" in out
    docs = sample_documents(es, corpus.product_alias, 15, 3, id_field="product_id")
    expected = score_lists(stored_lists(docs), data)
    assert expected.products == 15 and render(expected) in out.splitlines()
    with pytest.raises(SystemExit, match="no keywords/ and products/ partitions with _labels"):
        cli("quality", *argv, "--labels", str(tmp_path))


def test_cli_errors_are_clear(cli, corpus: Corpus) -> None:
    with pytest.raises(
        ProductNotFoundError, match=f"no product 'no-such-product' in '{corpus.product_alias}'"
    ):
        cli("search", "product", "no-such-product", "--alias", corpus.product_alias)
    for argv in (
        ("search", "product", "1", "--alias", "t-sq-missing"),
        ("search", "text", "東京", "--alias", "t-sq-missing"),
        ("quality", "--product-alias", "t-sq-missing", "--model", MODEL),
    ):
        with pytest.raises(EsIndexError, match="alias 't-sq-missing' does not exist"):
            cli(*argv)
    with pytest.raises(CollectionNotFoundError, match="t-sq-missing"):
        cli("search", "meaning", "東京", "--alias", "t-sq-missing", "--model", MODEL)
    with pytest.raises(SystemExit):  # argparse refuses it before any service is touched
        cli("search", "text", "東京", "--size", "0")
