"""Relevance labels of the sample data: what each generated row is about, and the grading rule.

The generator knows each row's category and head noun. It writes them beside the data, in each
partition's ``_labels-NNNNN.parquet`` (``_``-prefixed: never read as data), for every row the
pipeline is expected to index (not the injected defects it dead-letters). A product -> keyword pair
is graded from the two rows' truths:

====  =============================================  ==============================================
  2   same category and the same head noun           ``【送料無料】札幌 味噌 ラーメン`` -> ``ラーメン 人気店``
  1   same category, another head noun               the same product -> ``寿司 デート``
  0   anything else                                  the same product -> ``ノートパソコン 軽量``
====  =============================================  ==============================================

Truths per row, not grades per pair, keep the labels linear in the data; grading is a lookup.
Limits of the rule, on purpose simple: an English keyword in Japanese data shares its category but
not its head noun's spelling (``Ramen`` vs ``ラーメン``), so it grades at most 1; brands, places and
modifiers are not graded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

LABEL_STEM = "_labels"
LABEL_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("category", pa.string()),  # null: the id was deleted in this partition
        pa.field("head", pa.string()),
    ]
)
HIGHLY_RELEVANT = 2


@dataclass(frozen=True)
class Truth:
    category: str
    head: str


def grade(product: Truth | None, keyword: Truth | None) -> int:
    """The pair's relevance grade (0 when either side is unlabelled)."""
    if product is None or keyword is None or product.category != keyword.category:
        return 0
    return HIGHLY_RELEVANT if product.head == keyword.head else 1


def label_files(partition: Path) -> list[Path]:
    return sorted(partition.glob(f"{LABEL_STEM}-*.parquet"))


def read_labels(table_root: Path) -> pa.Table:
    """The current truth of every labelled id under ``table_root`` (``<root>/<table>``): the latest
    partition's wins, ids deleted by a later partition are left out. Columns id, category, head."""
    parts = []
    for partition in sorted(table_root.glob("dt=*")):
        for path in label_files(partition):
            parts.append(pq.read_table(path).append_column("_dt", pa.array([partition.name] * _rows(path))))
    if not parts:
        return LABEL_SCHEMA.empty_table()
    labels = pa.concat_tables(parts).sort_by([("id", "ascending"), ("_dt", "descending")])
    ids = labels["id"].to_numpy()
    first = pa.array([True, *(ids[1:] != ids[:-1])]) if len(ids) else pa.array([], pa.bool_())
    latest = labels.filter(first).drop_columns(["_dt"])
    return latest.filter(pc.is_valid(latest["category"]))


def _rows(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def truths(labels: pa.Table, ids: Iterable[str | int] | None = None) -> dict[str, Truth]:
    """``str(id) -> Truth`` for ``ids`` (all when None); ids that are not integers have no label."""
    if ids is not None:
        wanted = {int(i) for i in ids if str(i).lstrip("-").isdigit()}
        labels = labels.filter(pc.is_in(labels["id"], pa.array(sorted(wanted), pa.int64())))
    return {
        str(i): Truth(c, h)
        for i, c, h in zip(
            labels["id"].to_pylist(), labels["category"].to_pylist(), labels["head"].to_pylist(), strict=True
        )
    }


def relevant_counts(keywords: pa.Table) -> tuple[Mapping[tuple[str, str], int], Mapping[str, int]]:
    """How many keywords each (category, head) and each category holds: what an ideal ranking of
    any product can draw on (its grade-2 and grade-1 keywords)."""
    by_head = keywords.group_by(["category", "head"]).aggregate([("id", "count")])
    by_category = keywords.group_by(["category"]).aggregate([("id", "count")])
    return (
        {
            (c, h): n
            for c, h, n in zip(
                by_head["category"].to_pylist(),
                by_head["head"].to_pylist(),
                by_head["id_count"].to_pylist(),
                strict=True,
            )
        },
        dict(zip(by_category["category"].to_pylist(), by_category["id_count"].to_pylist(), strict=True)),
    )
