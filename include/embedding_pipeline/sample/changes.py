"""A night of changes to sample data: a delta partition with changed, tombstoned and new rows.

The demo's fourth date runs on it incrementally, so its report shows what was skipped, deleted
and relinked. Rows come from the table's existing partitions (the latest row of each id); the
partition gets a ``deleted`` column (Param ``tombstone_column=deleted``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedding_pipeline.runs.partitions import (
    SchemaError,
    TableSpec,
    partition_dir,
    partition_files,
    partition_version,
    validate_file,
)
from embedding_pipeline.sample.labels import LABEL_SCHEMA, LABEL_STEM, read_labels, truths


def current_rows(root: Path, table: TableSpec, dts: list[str]) -> pa.Table:
    """The latest valid row of every id over ``dts`` (rows with a null id or text, and files the
    plan would refuse or whose text is not a string, left out)."""
    parts = []
    for dt in dts:
        for path in partition_files(partition_dir(root, table, dt)):
            try:
                validate_file(path, table)
            except SchemaError:
                continue
            data = pq.read_table(path)
            if not pa.types.is_string(data.schema.field(table.text_column).type):
                continue
            data = data.select([c for c in table.columns if c in data.column_names])
            parts.append(data.append_column("_v", pa.array([partition_version(dt)] * data.num_rows)))
    data = pa.concat_tables(parts, promote_options="permissive")
    valid = pc.and_(pc.is_valid(data[table.id_column]), pc.is_valid(data[table.text_column]))
    data = data.filter(valid).sort_by([(table.id_column, "ascending"), ("_v", "descending")])
    ids = data[table.id_column].to_numpy(zero_copy_only=False)
    first = np.ones(len(ids), dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    return data.filter(pa.array(first)).drop_columns(["_v"])


def _write_labels(
    root: Path, table: TableSpec, partition: Path, current: pa.Table, night: pa.Table, sources: list[int]
) -> None:
    """The night's relevance labels (sample.labels): a changed row is now about the row whose text it
    took, a new row about the row it copies; a deleted id gets a null truth. Nothing when the
    earlier partitions carry no labels."""
    labels = read_labels(root / table.name)
    if not labels.num_rows:
        return
    source_ids = current[table.id_column].take(pa.array(np.asarray(sources, dtype=np.int64))).to_pylist()
    known = truths(labels, source_ids)
    source_truths = [known.get(str(i)) for i in source_ids]
    deleted = night["deleted"].to_pylist()
    truth_of_row = iter(source_truths)
    rows = [None if gone else next(truth_of_row) for gone in deleted]
    pq.write_table(
        pa.Table.from_pydict(
            {
                "id": night[table.id_column].cast(pa.int64()),
                "category": [None if t is None else t.category for t in rows],
                "head": [None if t is None else t.head for t in rows],
            },
            schema=LABEL_SCHEMA,
        ),
        partition / f"{LABEL_STEM}-00000.parquet",
    )


def write_night(
    root: Path, table: TableSpec, dts: list[str], dt: str, counts: tuple[int, int, int], seed: int = 0
) -> dict[str, int]:
    """Write partition ``dt`` of ``table``: ``counts`` = (texts changed, ids deleted, new ids)."""
    changed, deleted, new = counts
    current = current_rows(root, table, dts)
    rng = np.random.default_rng(seed)
    picked = rng.choice(current.num_rows, changed + deleted + new, replace=False)
    texts = current[table.text_column].to_pylist()
    rows = current.take(pa.array(picked[:changed]))
    sources = rng.permutation(picked[:changed])
    swapped = [texts[i] for i in sources]  # another product's/keyword's text
    rows = rows.set_column(
        rows.schema.get_field_index(table.text_column), table.text_column, pa.array(swapped)
    )
    tombstones = current.take(pa.array(picked[changed : changed + deleted]))
    added = current.take(pa.array(picked[changed + deleted :]))
    top = pc.max(current[table.id_column]).as_py()
    added = added.set_column(
        added.schema.get_field_index(table.id_column),
        table.id_column,
        pa.array(range(top + 1, top + 1 + added.num_rows), current.schema.field(table.id_column).type),
    )
    flags = [False] * rows.num_rows + [True] * tombstones.num_rows + [False] * added.num_rows
    night = pa.concat_tables([rows, tombstones, added], promote_options="permissive").append_column(
        "deleted", pa.array(flags)
    )
    path = partition_dir(root, table, dt) / "part-0.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(night, path)
    _write_labels(root, table, path.parent, current, night, [*sources, *picked[changed + deleted :]])
    return {"changed": rows.num_rows, "deleted": tombstones.num_rows, "new": added.num_rows}
