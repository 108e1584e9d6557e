"""Are the links any good? nDCG@K, precision@K and MRR of stored product -> keyword lists against
relevance labels.

Recall against exact search (``link_quality``) proves the lists are the model's true nearest
keywords; it cannot say whether the model's nearest keywords mean anything. Labels can: the sample
generator writes what each row is about (``sample.labels``: grade 2 = same category and head noun,
1 = same category, 0 = otherwise), so each stored list is scored against the best list the
labelled keywords would allow:

- nDCG@K: DCG with gain ``2^grade - 1`` and discount ``log2(rank + 1)``, over the ideal DCG of the
  product's best K labelled keywords (all labelled keywords count, whether or not a filter or a
  threshold kept them from the list: a filter that hides relevant keywords costs quality);
- precision@K: the share of the first K ranks holding a grade-2 keyword (an empty rank counts 0);
- MRR: 1 / rank of the first grade-2 keyword (0 when none is linked).

Memory: the labels of every keyword (three columns, dictionary-friendly) plus the sampled lists.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedding_pipeline.sample.labels import HIGHLY_RELEVANT, grade, read_labels, relevant_counts, truths

DEFAULT_K = 10


@dataclass(frozen=True)
class RelevanceReport:
    """Label-based quality of the sampled lists (means over products that have a label)."""

    k: int
    products: int
    ndcg: float
    precision: float
    mrr: float
    unlabelled_products: int
    unlabelled_links: int  # linked keywords with no label: graded 0
    grades: Mapping[int, int] = field(default_factory=dict)  # grade -> links in the first K ranks

    def to_dict(self) -> dict[str, object]:
        return {
            "k": self.k,
            "products": self.products,
            f"ndcg@{self.k}": round(self.ndcg, 4),
            f"precision@{self.k}": round(self.precision, 4),
            "mrr": round(self.mrr, 4),
            "unlabelled_products": self.unlabelled_products,
            "unlabelled_links": self.unlabelled_links,
            "grades": {str(g): n for g, n in sorted(self.grades.items())},
        }


def _dcg(grades: Sequence[int]) -> float:
    return sum((2**g - 1) / math.log2(rank + 1) for rank, g in enumerate(grades, start=1))


def _ideal(k: int, highly: int, related: int) -> float:
    """DCG of the best possible list: every grade-2 keyword first, then the grade-1 ones."""
    best = [HIGHLY_RELEVANT] * min(k, highly)
    return _dcg(best + [1] * min(k - len(best), related))


def stored_lists(docs: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """``product_id -> [keyword_id, ...]`` of product documents (``_source``), best first."""
    return {str(d["product_id"]): [str(k["keyword_id"]) for k in d.get("keywords") or []] for d in docs}


def has_labels(data_root: Path) -> bool:
    return any((data_root / "keywords").glob("dt=*/_labels-*.parquet")) and any(
        (data_root / "products").glob("dt=*/_labels-*.parquet")
    )


def score_lists(lists: Mapping[str, Sequence[str]], data_root: Path, k: int = DEFAULT_K) -> RelevanceReport:
    """Score ``product_id -> [keyword_id, ...]`` (best first) against the labels under ``data_root``."""
    keyword_labels = read_labels(data_root / "keywords")
    per_head, per_category = relevant_counts(keyword_labels)
    products = truths(read_labels(data_root / "products"), lists)
    linked = truths(keyword_labels, {kid for ids in lists.values() for kid in ids[:k]})
    ndcgs, precisions, reciprocal = [], [], []
    grades: Counter[int] = Counter()
    unlabelled_links = 0
    for product_id, ids in lists.items():
        product = products.get(str(product_id))
        if product is None:
            continue
        top = [grade(product, linked.get(str(kid))) for kid in ids[:k]]
        unlabelled_links += sum(str(kid) not in linked for kid in ids[:k])
        grades.update(top)
        highly = per_head.get((product.category, product.head), 0)
        ideal = _ideal(k, highly, per_category.get(product.category, 0) - highly)
        ndcgs.append(_dcg(top) / ideal if ideal else 0.0)
        precisions.append(sum(g == HIGHLY_RELEVANT for g in top) / k)
        first = next((rank for rank, g in enumerate(top, start=1) if g == HIGHLY_RELEVANT), None)
        reciprocal.append(1.0 / first if first else 0.0)
    scored = len(ndcgs)
    return RelevanceReport(
        k=k,
        products=scored,
        ndcg=sum(ndcgs) / scored if scored else 0.0,
        precision=sum(precisions) / scored if scored else 0.0,
        mrr=sum(reciprocal) / scored if scored else 0.0,
        unlabelled_products=len(lists) - scored,
        unlabelled_links=unlabelled_links,
        grades=dict(grades),
    )


def render(report: RelevanceReport) -> str:
    k = report.k
    if not report.products:
        return (
            f"  against the sample's relevance labels: none of the {report.unlabelled_products} sampled "
            "products has a label (labels from another dataset?)"
        )
    return (
        f"  against the sample's relevance labels ({report.products} products): nDCG@{k} {report.ndcg:.4f}  "
        f"precision@{k} {report.precision:.4f}  MRR {report.mrr:.4f}  "
        f"(grades in the first {k}: "
        + ", ".join(f"{g}: {n}" for g, n in sorted(report.grades.items(), reverse=True))
        + (f"; {report.unlabelled_links} links unlabelled" if report.unlabelled_links else "")
        + (f"; {report.unlabelled_products} products unlabelled" if report.unlabelled_products else "")
        + ")"
    )
