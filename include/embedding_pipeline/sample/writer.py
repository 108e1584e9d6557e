"""Writing partitions: clean rows in bounded row groups and files, defect variants beside them, the
bad files of ``--bad-files``, and the record of every injected defect."""

from __future__ import annotations

import random
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedding_pipeline.sample.compose import TRUTH_CATEGORY, TRUTH_HEAD, Rows, TableSpec
from embedding_pipeline.sample.defects import (
    DEFECT_BY_KIND,
    DEFECTS,
    EXTRA_COLUMN,
    STREAM_DETAIL,
    WHITESPACE_TEXTS,
    Defect,
    PartitionKey,
    bad_mask,
    clean_original,
    days_since_epoch,
    defect_kinds,
    position_uniforms,
    row_ids,
)
from embedding_pipeline.sample.labels import LABEL_SCHEMA, LABEL_STEM
from embedding_pipeline.sample.layout import (
    BAD_FILE_ID_OFFSET,
    BAD_FILE_ROWS,
    COMPRESSION,
    DAY_US,
    GEN_BLOCK,
    LONG_TEXT_CHARS,
)


class PartWriter:
    """Writes one stream of rows as ``<stem>-NNNNN.parquet`` files of at most ``rows_per_file`` rows, in
    row groups of exactly ``row_group_size`` rows (the last of a file may be shorter).

    Rows arrive in generation blocks whose size is unrelated to the row-group size, so they are
    buffered and re-cut here; at most one row group plus one block is held at any time."""

    def __init__(
        self, directory: Path, stem: str, schema: pa.Schema, row_group_size: int, rows_per_file: int | None
    ) -> None:
        self.directory = directory
        self.stem = stem
        self.schema = schema
        self.row_group_size = row_group_size
        self.rows_per_file = rows_per_file or sys.maxsize
        self.files: list[dict[str, Any]] = []
        self.rows_written = 0
        self.rows_accepted = 0
        """Rows handed to ``write`` so far, written or still buffered: the next row's stream index."""
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None

    def file_name(self, index: int) -> str:
        return f"{self.stem}-{index:05d}.parquet"

    def locate(self, stream_index: int) -> tuple[str, int]:
        """(file, row within file) of the n-th row of this stream."""
        return self.file_name(stream_index // self.rows_per_file), stream_index % self.rows_per_file

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self.rows_accepted += table.num_rows
            self._pending.append(table)
            self._pending_rows += table.num_rows
            self._drain(final=False)

    def close(self, *, create_empty: bool = False) -> list[dict[str, Any]]:
        self._drain(final=True)
        self._close_file()
        if create_empty and not self.files:
            self._open_file()
            self._close_file()
        return self.files

    def _group_size(self) -> int:
        file_rows = self.files[-1]["rows"] if self._writer is not None else 0
        return min(self.row_group_size, self.rows_per_file - file_rows)

    def _drain(self, *, final: bool) -> None:
        while self._pending_rows and (final or self._pending_rows >= self._group_size()):
            size = min(self._group_size(), self._pending_rows)
            buffered = pa.concat_tables(self._pending)
            self._pending = [buffered.slice(size)] if buffered.num_rows > size else []
            self._pending_rows -= size
            self._write_group(buffered.slice(0, size).combine_chunks())

    def _open_file(self) -> None:
        name = self.file_name(len(self.files))
        self._writer = pq.ParquetWriter(self.directory / name, self.schema, compression=COMPRESSION)
        self.files.append({"file": name, "rows": 0, "row_groups": 0})

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _write_group(self, group: pa.Table) -> None:
        if self._writer is None:
            self._open_file()
        assert self._writer is not None
        self._writer.write_table(group, row_group_size=group.num_rows)
        info = self.files[-1]
        info["rows"] += group.num_rows
        info["row_groups"] += 1
        self.rows_written += group.num_rows
        if info["rows"] >= self.rows_per_file:
            self._close_file()


@dataclass
class _Injected:
    """Columnar record of one defect kind in one partition (compact even at 1M rows x high rates)."""

    ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    extra: dict[str, list[Any]] = field(default_factory=dict)

    def add(self, id_: int, position: int, where: tuple[str, int], **extra: Any) -> None:
        self.ids.append(id_)
        self.positions.append(position)
        self.files.append(where[0])
        self.rows.append(where[1])
        for name, value in extra.items():
            self.extra.setdefault(name, []).append(value)

    def to_json(self, defect: Defect) -> dict[str, Any]:
        return {
            "expect": defect.expect,
            "count": len(self.ids),
            "ids": self.ids,
            "positions": self.positions,
            "files": self.files,
            "rows": self.rows,
            **self.extra,
        }


def _timestamps(rng: random.Random, dt: date) -> int:
    return days_since_epoch(dt) * DAY_US + int(rng.random() * DAY_US)


def clean_block(spec: TableSpec, key: PartitionKey, start: int, stop: int) -> Rows:
    """Clean rows for positions ``[start, stop)``: one generation block from its first row, so each row
    is the same whatever the partition size (a shorter block is a prefix of the full one)."""
    if start % GEN_BLOCK or stop - start > GEN_BLOCK:
        raise ValueError(f"[{start}, {stop}) is not a prefix of one block of {GEN_BLOCK} rows")
    rng = random.Random(key.block_seed(start // GEN_BLOCK))
    rows: Rows = {f.name: [] for f in spec.schema} | {TRUTH_CATEGORY: [], TRUTH_HEAD: []}
    rows[spec.id_column] = row_ids(key.dt, np.arange(start, stop)).tolist()
    for _ in range(start, stop):
        spec.compose(rng, key.lang, rows)
        rows["updated_at"].append(_timestamps(rng, key.dt))
    return rows


def _long_text(text: str) -> str:
    return ((text + " ") * (LONG_TEXT_CHARS // max(len(text) + 1, 1) + 1))[:LONG_TEXT_CHARS]


def _rows_to_table(rows: Rows, schema: pa.Schema, indices: Iterable[int]) -> pa.Table:
    index = list(indices)
    return pa.Table.from_arrays([_column(rows[f.name], f.type, index) for f in schema], schema=schema)


def _column(values: list[Any], type_: pa.DataType, index: list[int]) -> pa.Array:
    """Timestamps are kept as epoch microseconds and viewed as the tz-aware type: building a tz-aware
    array from Python ints makes pyarrow import pandas (seconds of start-up for nothing)."""
    picked = [values[i] for i in index]
    if pa.types.is_timestamp(type_):
        return pa.array(picked, type=pa.int64()).view(type_)
    return pa.array(picked, type=type_)


def _variant_schema(spec: TableSpec, kind: str) -> pa.Schema:
    if kind == "wrong_type":
        return spec.schema.set(
            spec.schema.get_field_index(spec.text_column), pa.field(spec.text_column, pa.int64())
        )
    if kind == "extra_column":
        return spec.schema.append(pa.field(EXTRA_COLUMN, pa.string()))
    return spec.schema.remove(spec.schema.get_field_index(spec.optional_column))


class PartitionWriter:
    """Generates and writes one partition: clean rows block by block, each defect applied in place or
    diverted to its variant file, and the manifest entry describing exactly what was injected."""

    def __init__(
        self,
        spec: TableSpec,
        key: PartitionKey,
        rows: int,
        directory: Path,
        row_group_size: int,
        rows_per_file: int | None,
    ) -> None:
        self.spec = spec
        self.key = key
        self.rows = rows
        self.directory = directory
        self.row_group_size = row_group_size
        self.rows_per_file = rows_per_file
        self.main = PartWriter(directory, "part", spec.schema, row_group_size, rows_per_file)
        self.labels = PartWriter(directory, LABEL_STEM, LABEL_SCHEMA, row_group_size, None)
        self.variants: dict[str, PartWriter] = {}
        self.injected: dict[str, _Injected] = {d.kind: _Injected() for d in DEFECTS}

    def run(self) -> list[dict[str, Any]]:
        for start in range(0, self.rows, GEN_BLOCK):
            self._block(start, min(start + GEN_BLOCK, self.rows))
        files = self.main.close(create_empty=True)
        self.labels.close()
        for variant in self.variants.values():
            files += variant.close()
        return files

    def _variant(self, kind: str) -> PartWriter:
        if kind not in self.variants:
            stem = DEFECT_BY_KIND[kind].placement
            schema = _variant_schema(self.spec, kind)
            self.variants[kind] = PartWriter(
                self.directory, stem, schema, self.row_group_size, self.rows_per_file
            )
        return self.variants[kind]

    def _block(self, start: int, stop: int) -> None:
        rows = clean_block(self.spec, self.key, start, stop)
        positions = np.arange(start, stop, dtype=np.int64)
        bad = bad_mask(self.key, positions)
        kinds = defect_kinds(self.key, positions)
        diverted: dict[str, list[int]] = {}
        inline_kept: list[int] = []
        for i in range(stop - start):
            kind = DEFECTS[kinds[i]] if bad[i] else None
            if kind is not None and kind.placement != "inline":
                diverted.setdefault(kind.kind, []).append(i)
            else:
                inline_kept.append(i)
        # Inline defects, then the main stream (its stream index is what locates a row in its file).
        stream_base = self.main.rows_accepted
        for n, i in enumerate(inline_kept):
            if bad[i]:
                where = self.main.locate(stream_base + n)
                self._apply_inline(DEFECTS[kinds[i]].kind, rows, i, int(positions[i]), where)
        if inline_kept:
            self.main.write(_rows_to_table(rows, self.spec.schema, inline_kept))
        for kind, indices in sorted(diverted.items()):
            self._write_variant(kind, rows, indices, positions)
        # Labels of every row the pipeline will index, under the id it is written with (a
        # cross-partition duplicate takes over an earlier row's id: latest partition wins).
        indexed = [i for i in range(stop - start) if not bad[i] or DEFECTS[kinds[i]].expect != "dead_letter"]
        truth = {"id": rows[self.spec.id_column], "category": rows[TRUTH_CATEGORY], "head": rows[TRUTH_HEAD]}
        self.labels.write(_rows_to_table(truth, LABEL_SCHEMA, indexed))

    def _apply_inline(self, kind: str, rows: Rows, i: int, position: int, where: tuple[str, int]) -> None:
        text, ids = rows[self.spec.text_column], rows[self.spec.id_column]
        extra: dict[str, Any] = {}
        if kind == "null_text":
            text[i] = None
        elif kind == "empty_text":
            text[i] = ""
        elif kind == "whitespace_text":
            u = position_uniforms(self.key.defect_key, np.array([position]), STREAM_DETAIL)[0]
            text[i] = WHITESPACE_TEXTS[int(u * len(WHITESPACE_TEXTS))]
        elif kind == "text_too_long":
            text[i] = _long_text(text[i])
        elif kind == "duplicate_id":
            original = int(clean_original(self.key, np.array([position]))[0])
            ids[i] = int(row_ids(self.key.dt, [original])[0])
            extra = {"duplicate_of_positions": original}
        elif kind == "duplicate_id_cross_partition":
            ids[i] = int(row_ids(self.key.previous_day().dt, [position])[0])
            extra = {"original_positions": position}
        self.injected[kind].add(ids[i], position, where, **extra)

    def _write_variant(self, kind: str, rows: Rows, indices: list[int], positions: np.ndarray) -> None:
        writer = self._variant(kind)
        base = writer.rows_accepted
        schema = writer.schema
        if kind == "wrong_type":
            u = position_uniforms(self.key.defect_key, positions[indices], STREAM_DETAIL)
            # JAN-like numbers: what a spreadsheet export does to a keyword column full of barcodes.
            values = (4_900_000_000_000 + (u * 99_999_999_999).astype(np.int64)).tolist()
            patched = dict(rows)
            patched[self.spec.text_column] = [None] * len(rows[self.spec.id_column])
            for value, i in zip(values, indices, strict=True):
                patched[self.spec.text_column][i] = value
            table = _rows_to_table(patched, schema, indices)
        elif kind == "extra_column":
            patched = dict(rows)
            patched[EXTRA_COLUMN] = [None] * len(rows[self.spec.id_column])
            for i in indices:
                patched[EXTRA_COLUMN][i] = f"legacy-import-{int(positions[i]) % 97:02d}"
            table = _rows_to_table(patched, schema, indices)
        else:
            table = _rows_to_table(rows, schema, indices)
        for n, i in enumerate(indices):
            self.injected[kind].add(rows[self.spec.id_column][i], int(positions[i]), writer.locate(base + n))
        writer.write(table)


def _bad_file_ids(dt: date) -> list[int]:
    return row_ids(dt, np.arange(BAD_FILE_ID_OFFSET, BAD_FILE_ID_OFFSET + BAD_FILE_ROWS)).tolist()


def write_bad_files(spec: TableSpec, key: PartitionKey, directory: Path) -> list[dict[str, Any]]:
    """Whole files the pipeline must survive: zero rows (nothing to do), a required column missing or an
    id of the wrong type (rows that cannot be validated or identified: reject the file, naming it and the
    column) and a file that is not Parquet at all."""
    ids = _bad_file_ids(key.dt)
    rows = clean_block(spec, key, 0, min(BAD_FILE_ROWS, GEN_BLOCK))
    rows[spec.id_column] = ids
    full = _rows_to_table(rows, spec.schema, range(BAD_FILE_ROWS))
    entries: list[dict[str, Any]] = []

    pq.write_table(spec.schema.empty_table(), directory / "part-empty.parquet", compression=COMPRESSION)
    entries.append({"file": "part-empty.parquet", "kind": "zero_rows", "expect": "skip", "rows": 0})

    no_text = full.drop_columns([spec.text_column])
    pq.write_table(no_text, directory / "part-badschema-notext.parquet", compression=COMPRESSION)
    entries.append(
        {
            "file": "part-badschema-notext.parquet",
            "kind": "missing_required_column",
            "expect": "reject_file",
            "column": spec.text_column,
            "rows": BAD_FILE_ROWS,
            "ids": ids,
        }
    )

    string_ids = pa.array([f"{spec.name[0]}-{i}" for i in ids], type=pa.string())
    id_index = spec.schema.get_field_index(spec.id_column)
    id_string = full.set_column(id_index, pa.field(spec.id_column, pa.string()), string_ids)
    pq.write_table(id_string, directory / "part-badschema-idstring.parquet", compression=COMPRESSION)
    entries.append(
        {
            "file": "part-badschema-idstring.parquet",
            "kind": "id_wrong_type",
            "expect": "reject_file",
            "column": spec.id_column,
            "rows": BAD_FILE_ROWS,
            "ids": string_ids.to_pylist(),
        }
    )

    (directory / "part-garbage.parquet").write_text(
        "this is not a parquet file: a CSV export saved with the wrong extension\nid,text\n1,abc\n",
        encoding="utf-8",
    )
    entries.append({"file": "part-garbage.parquet", "kind": "not_parquet", "expect": "reject_file"})
    return entries
