"""Relevance labels of the sample data, the label-based metrics (nDCG@10, precision@10, MRR) and
reciprocal rank fusion: rules that must hold for any input, and hand-checked numbers."""

from __future__ import annotations

import math
from datetime import date

import pyarrow.parquet as pq
import pytest
from embedding_pipeline.runs.partitions import KEYWORDS, PRODUCTS
from embedding_pipeline.sample.changes import write_night
from embedding_pipeline.sample.generate import generate
from embedding_pipeline.sample.labels import Truth, grade, read_labels, relevant_counts, truths
from embedding_pipeline.stages.products.fusion import rrf
from embedding_pipeline.stages.products.relevance import has_labels, render, score_lists
from hypothesis import given
from hypothesis import strategies as st

DATES = [date(2024, 1, 1), date(2024, 1, 2)]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    summary = generate(root, keywords=3000, products=200, dates=DATES, seed=9, bad_rate=0.05)
    return root, summary


def test_labels_cover_exactly_the_rows_the_pipeline_indexes(sample):
    """Every id that has a valid text in some data file (what the pipeline indexes) has a label,
    and nothing else: injected defects that are dead-lettered have none."""
    from embedding_pipeline.runs.partitions import partition_files

    root, _ = sample
    assert has_labels(root)
    for spec in (KEYWORDS, PRODUCTS):
        valid = set()
        for dt in DATES:
            for path in partition_files(root / spec.name / f"dt={dt.isoformat()}"):
                data = pq.read_table(path)
                for i, text in zip(
                    data[spec.id_column].to_pylist(), data[spec.text_column].to_pylist(), strict=True
                ):
                    if isinstance(text, str) and text.strip() and len(text) < 5000:
                        valid.add(i)
        assert set(read_labels(root / spec.name)["id"].to_pylist()) == valid


def test_a_labels_head_noun_is_in_its_keyword(sample):
    """What the grade rule stands on."""
    import pyarrow.dataset as ds

    root, _ = sample
    keywords = ds.dataset(root / "keywords", format="parquet", partitioning="hive").to_table()
    texts: dict[str, list[str]] = {}
    for i, text in zip(keywords["keyword_id"].to_pylist(), keywords["keyword"].to_pylist(), strict=True):
        texts.setdefault(str(i), []).append(str(text).lower())
    labelled = truths(read_labels(root / "keywords"))
    assert len(labelled) > 2800
    assert all(any(truth.head.lower() in t for t in texts[i]) for i, truth in labelled.items())


def test_a_night_of_changes_moves_the_labels_with_the_texts(tmp_path):
    generate(tmp_path, keywords=400, products=0, dates=[DATES[0]], seed=2, tables=("keywords",))
    before = truths(read_labels(tmp_path / "keywords"))
    import pyarrow.dataset as ds

    old = ds.dataset(tmp_path / "keywords", format="parquet", partitioning="hive").to_table()
    text_to_truth = {
        t: before[str(i)]
        for i, t in zip(old["keyword_id"].to_pylist(), old["keyword"].to_pylist(), strict=True)
    }
    made = write_night(tmp_path, KEYWORDS, ["2024-01-01"], "2024-01-02", (20, 10, 15), seed=4)
    night = pq.read_table(tmp_path / "keywords" / "dt=2024-01-02" / "part-0.parquet")
    after = truths(read_labels(tmp_path / "keywords"))
    for i, text, deleted in zip(
        night["keyword_id"].to_pylist(),
        night["keyword"].to_pylist(),
        night["deleted"].to_pylist(),
        strict=True,
    ):
        if deleted:
            assert str(i) not in after
        else:
            assert after[str(i)] == text_to_truth[text]  # a changed or new row is about its text
    assert len(after) == len(before) - made["deleted"] + made["new"]


truth_values = st.builds(Truth, st.sampled_from(["food", "pet", "travel"]), st.sampled_from(["a", "b", "c"]))


@given(truth_values, truth_values)
def test_grade_is_two_for_the_same_head_one_for_the_same_category(product, keyword):
    expected = 0 if product.category != keyword.category else (2 if product.head == keyword.head else 1)
    assert grade(product, keyword) == expected == grade(keyword, product)
    assert grade(None, keyword) == grade(product, None) == 0


def test_an_ideal_list_scores_one_and_a_list_of_strangers_zero(sample):
    root, _ = sample
    keywords = read_labels(root / "keywords")
    products = truths(read_labels(root / "products"))
    all_keywords = truths(keywords)
    per_head, _ = relevant_counts(keywords)
    product_id, product = next(
        (p, t) for p, t in products.items() if per_head.get((t.category, t.head), 0) >= 10
    )
    ranked = sorted(all_keywords, key=lambda k: (-grade(product, all_keywords[k]), k))
    ideal = score_lists({product_id: ranked[:10]}, root)
    assert (ideal.ndcg, ideal.precision, ideal.mrr) == (pytest.approx(1.0), 1.0, 1.0)
    strangers = [k for k in all_keywords if grade(product, all_keywords[k]) == 0][:10]
    worst = score_lists({product_id: strangers}, root)
    assert (worst.ndcg, worst.precision, worst.mrr) == (0.0, 0.0, 0.0)
    # Hand-checked: grades [1, 2, 0, ...]: DCG = 1/log2(2) + 3/log2(3); P@10 = 1/10; MRR = 1/2.
    related = next(k for k in all_keywords if grade(product, all_keywords[k]) == 1)
    mixed = score_lists({product_id: [related, ranked[0], strangers[0]]}, root)
    ideal_dcg = sum(3 / math.log2(r + 1) for r in range(1, 11))
    assert mixed.ndcg == pytest.approx((1 + 3 / math.log2(3)) / ideal_dcg)
    assert (mixed.precision, mixed.mrr, mixed.grades) == (0.1, 0.5, {1: 1, 2: 1, 0: 1})
    unknown = score_lists({"no-such-product": ranked[:10], product_id: ["no-such-keyword"]}, root)
    assert (unknown.products, unknown.unlabelled_products, unknown.unlabelled_links) == (1, 1, 1)
    assert "none of the 1 sampled products has a label" in render(score_lists({"other": ranked}, root))


ids = st.lists(st.sampled_from([f"k{i}" for i in range(30)]), unique=True, max_size=20)


@given(ids, ids, st.floats(0.1, 5), st.floats(0.1, 5), st.integers(1, 100), st.integers(1, 40))
def test_rrf_is_a_weighted_sum_of_reciprocal_ranks(dense, lexical, w_dense, w_lexical, k, top_k):
    hits = [
        ([({"keyword_id": i}, 0.0) for i in dense], w_dense),
        ([({"keyword_id": i}, 0.0) for i in lexical], w_lexical),
    ]
    fused = rrf(hits, k, top_k)
    expected = {}
    for ranking, weight in ((dense, w_dense), (lexical, w_lexical)):
        for rank, i in enumerate(ranking, start=1):
            expected[i] = expected.get(i, 0.0) + weight / (k + rank)
    assert [p["keyword_id"] for p, _ in fused] == sorted(expected, key=lambda i: (-round(expected[i], 9), i))[
        :top_k
    ]
    assert all(score == pytest.approx(expected[p["keyword_id"]]) for p, score in fused)
    # One ranking alone (the other weighted 0) keeps its own order.
    alone = rrf([(hits[0][0], 1.0), (hits[1][0], 0.0)], k, top_k)
    assert [p["keyword_id"] for p, _ in alone] == dense[:top_k]


def test_a_product_with_no_lexical_match_keeps_its_dense_order():
    """Edge: a product name sharing no term with any keyword (a brand-only name, another script)
    gets an empty BM25 ranking; the hybrid list is then its dense list, not an empty one."""
    dense = [({"keyword_id": f"k{i}"}, 0.9 - i / 100) for i in range(12)]
    fused = rrf([(dense, 1.0), ([], 1.0)], 60, 10)
    assert [p["keyword_id"] for p, _ in fused] == [f"k{i}" for i in range(10)]
    assert rrf([([], 1.0), ([], 1.0)], 60, 10) == []
