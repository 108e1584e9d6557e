"""Find a date partition's Parquet files, validate their schema, and plan bounded chunks.

Chunks are row-group aligned (a task reads whole row groups, never re-scans a file) and their count
is bounded: Airflow maps one task per chunk, and ``[core] max_map_length`` is 1024 while 1024
trivial mapped tasks already cost ~90 s of scheduling here. So a chunk holds tens of thousands of
rows, and when a partition would need more than ``max_chunks`` chunks the target size grows instead.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from embedding_pipeline.errors import ConfigError, PipelineError


class SchemaError(PipelineError):
    """A partition file cannot be read or lacks a required column / has a wrong type."""


@dataclass(frozen=True)
class TableSpec:
    """Columns of an input table: the business key, the text to embed, optional payload fields."""

    name: str
    id_column: str
    text_column: str
    optional_columns: tuple[str, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.id_column, self.text_column, *self.optional_columns)


KEYWORDS = TableSpec("keywords", "keyword_id", "keyword", ("category", "lang", "updated_at"))
PRODUCTS = TableSpec(
    "products", "product_id", "product_name", ("description", "category", "brand", "updated_at")
)


@dataclass(frozen=True)
class Segment:
    path: str
    row_groups: list[int]
    rows: int


@dataclass(frozen=True)
class Chunk:
    """A unit of mapped work: whole row groups of one or more files of one partition."""

    chunk_id: str
    dt: str
    segments: list[Segment] = field(default_factory=list)
    duplicates_path: str | None = None  # JSON {id: [file, row]} of first occurrences (see first_occurrences)

    @property
    def rows(self) -> int:
        return sum(segment.rows for segment in self.segments)

    def to_xcom(self) -> dict:
        return asdict(self)

    @classmethod
    def from_xcom(cls, data: dict) -> Chunk:
        segments = [Segment(**s) for s in data["segments"]]
        return cls(data["chunk_id"], data["dt"], segments, data.get("duplicates_path"))


def parse_dt(value: str) -> str:
    try:
        return date.fromisoformat(value).isoformat()
    except (TypeError, ValueError):
        raise ConfigError(f"dt must be a date YYYY-MM-DD, got {value!r}") from None


def partition_version(dt: str) -> int:
    """A row's version from its partition: ``2024-01-02`` -> ``20240102``.

    When one business id appears in several partitions the latest ``dt`` wins in every sink,
    whatever order tasks, retries or backfills write in: ES takes it as an external version
    (``external_gte``: the same partition may rewrite, an older one is refused), the Qdrant sink
    compares it with the stored point's ``dt``.
    """
    day = date.fromisoformat(parse_dt(dt))
    return day.year * 10_000 + day.month * 100 + day.day


def partition_dir(root: Path, table: TableSpec, dt: str) -> Path:
    """Hive layout: ``<root>/<table>/dt=YYYY-MM-DD/``."""
    return root / table.name / f"dt={parse_dt(dt)}"


def partition_files(directory: Path) -> list[Path]:
    """Data files of a partition; ``_``/``.``-prefixed files (manifests, markers) are not data."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith(("_", ".")))


def _compatible(actual: pa.DataType, column: str, table: TableSpec) -> bool:
    if column == table.id_column:
        return pa.types.is_integer(actual) or pa.types.is_string(actual) or pa.types.is_large_string(actual)
    if column == table.text_column:
        # Numbers are accepted here and dead-lettered per row as ``wrong_type`` by the embed stage:
        # the ids stay readable, so each row can be reported and replayed.
        return (
            pa.types.is_string(actual)
            or pa.types.is_large_string(actual)
            or pa.types.is_integer(actual)
            or pa.types.is_floating(actual)
            or pa.types.is_null(actual)
        )
    if column == "updated_at":
        return pa.types.is_timestamp(actual) or pa.types.is_date(actual) or pa.types.is_null(actual)
    return pa.types.is_string(actual) or pa.types.is_large_string(actual) or pa.types.is_null(actual)


def validate_file(path: Path, table: TableSpec) -> pq.FileMetaData:
    """Open ``path`` and check the required columns and types; raise ``SchemaError`` naming both."""
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError with a terse message
        raise SchemaError(f"{path}: not a readable Parquet file ({exc})") from exc
    schema = parquet.schema_arrow
    for column in (table.id_column, table.text_column):
        if column not in schema.names:
            raise SchemaError(f"{path}: required column {column!r} is missing (columns: {schema.names})")
    for column in table.columns:
        if column in schema.names and not _compatible(schema.field(column).type, column, table):
            raise SchemaError(f"{path}: column {column!r} has type {schema.field(column).type}, not usable")
    return parquet.metadata


def plan_chunks(
    files: list[Path], table: TableSpec, dt: str, target_rows: int, max_chunks: int
) -> list[Chunk]:
    """Group row groups of validated ``files`` into at most ``max_chunks`` chunks of ~``target_rows``."""
    if target_rows < 1 or not 1 <= max_chunks <= 1024:
        raise ConfigError(
            f"target_rows must be >= 1 and 1 <= max_chunks <= 1024 (got {target_rows}, {max_chunks})"
        )
    groups: list[tuple[str, int, int]] = []
    for path in files:
        metadata = validate_file(path, table)
        groups.extend(
            (str(path), index, metadata.row_group(index).num_rows) for index in range(metadata.num_row_groups)
        )
    groups = [g for g in groups if g[2] > 0]
    total = sum(rows for _, _, rows in groups)
    if total == 0:
        return []
    target = max(target_rows, math.ceil(total / max_chunks))
    chunks: list[Chunk] = []
    current: list[Segment] = []
    current_rows = 0

    def close() -> None:
        nonlocal current, current_rows
        if current:
            chunks.append(Chunk(f"{dt}-c{len(chunks):04d}", dt, current))
        current, current_rows = [], 0

    for path, index, rows in groups:
        if current and current[-1].path == path:
            last = current[-1]
            current[-1] = Segment(path, [*last.row_groups, index], last.rows + rows)
        else:
            current.append(Segment(path, [index], rows))
        current_rows += rows
        if current_rows >= target:
            close()
    close()
    # Row groups larger than the target can still leave a few more chunks than asked: merge the tail.
    while len(chunks) > max_chunks:
        a, b = chunks[-2], chunks.pop()
        chunks[-1] = Chunk(a.chunk_id, dt, [*a.segments, *b.segments])
    return chunks


def first_occurrences(files: list[Path], table: TableSpec) -> dict[str, tuple[str, int]]:
    """For ids that occur more than once in a partition: the (file, row) of their first occurrence.

    Computed once per partition by the plan task from the id column alone (8 bytes a row for
    int64 ids), so every embed task can keep exactly the first occurrence even when the copies
    fall into different chunks: re-runs then index the same row for a duplicated id every time.
    """
    import numpy as np

    ids, file_index, rows = [], [], []
    for index, path in enumerate(files):
        column = pq.read_table(path, columns=[table.id_column]).column(0)
        values = column.cast(pa.string()).to_numpy(zero_copy_only=False)
        ids.append(values)
        file_index.append(np.full(len(values), index, dtype=np.int32))
        rows.append(np.arange(len(values), dtype=np.int64))
    if not ids:
        return {}
    all_ids = np.concatenate(ids)
    present = np.array([value is not None for value in all_ids])
    all_ids, files_of, rows_of = (
        all_ids[present],
        np.concatenate(file_index)[present],
        np.concatenate(rows)[present],
    )
    unique, first, counts = np.unique(all_ids.astype(str), return_index=True, return_counts=True)
    duplicated = counts > 1
    return {
        str(value): (str(files[files_of[position]]), int(rows_of[position]))
        for value, position in zip(unique[duplicated], first[duplicated], strict=True)
    }
