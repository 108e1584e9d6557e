"""Deterministic sample data: keywords and products as hive-partitioned Parquet, with optional defects.

Why it exists: the pipeline must be exercised at realistic sizes (1k..1M rows), on text that looks like
the original tool's data (Japanese search keywords, EC product names), and against bad input whose
every defect is known in advance, so the accounting (``rows_in == indexed + dead_lettered``) can be
checked row by row instead of trusted.

Layout under ``out_root``::

    keywords/dt=2024-01-01/part-00000.parquet        clean rows + in-place defects, several row groups
    keywords/dt=2024-01-01/part-wrongtype-00000.parquet   rows whose text column is int64  (--bad-rate)
    keywords/dt=2024-01-01/part-extracolumn-00000.parquet rows with one extra column         (--bad-rate)
    keywords/dt=2024-01-01/part-missingcol-00000.parquet  rows without the optional column   (--bad-rate)
    keywords/dt=2024-01-01/part-empty.parquet, part-badschema-*.parquet, part-garbage.parquet (--bad-files)
    keywords/_injected.json                           the manifest of every injected defect
    products/...                                      the same for products

The manifest starts with ``_`` so ``pyarrow.dataset`` discovery ignores it, as it ignores the ``.``-prefixed
temporary directories a partition is written into before it is swapped in.

Determinism: a row's content is a pure function of (seed, table, lang, dt, position). Text comes from a
``random.Random`` seeded per block of ``GEN_BLOCK`` rows (only ``random()`` is used: its sequence is the one
the standard library promises to keep across Python versions); defects come from a counter-based hash of
the position. So row-group size, rows per file, the other dates in the run and the order they are written
in never change a partition's rows, and the same arguments give byte-identical files (with the same
pyarrow version, which is recorded in each file's ``created_by``).

Ids are ``days_since_epoch(dt) * ID_STRIDE + position + 1``: unique across partitions without knowing the
other partitions, identical when one partition is regenerated alone.

Memory: rows are composed one block at a time and written one row group at a time; only the manifest
(one entry per injected defect, about ``rows * bad_rate``) grows with the data.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, fields
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from embedding_pipeline.errors import ConfigError
from embedding_pipeline.sample.compose import TABLE_SPECS, TableSpec
from embedding_pipeline.sample.defects import DEFECT_BY_KIND, DEFECTS, EXTRA_COLUMN, PartitionKey
from embedding_pipeline.sample.layout import (
    DEFAULT_ROW_GROUP_SIZE,
    LANGS,
    LONG_TEXT_CHARS,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    MAX_DATE,
    MAX_ROWS_PER_PARTITION,
    MIN_DATE,
    TABLES,
)
from embedding_pipeline.sample.writer import PartitionWriter, _Injected, write_bad_files


@dataclass(frozen=True)
class GenerateOptions:
    """Validated arguments of one generator run (the API and the CLI both build one)."""

    out_root: Path
    keywords: int = 1000
    products: int = 1000
    dates: tuple[date, ...] = (date(2024, 1, 1),)
    lang: str = "ja"
    seed: int = 42
    bad_rate: float = 0.0
    bad_files: bool = False
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE
    rows_per_file: int | None = None
    tables: tuple[str, ...] = TABLES

    def __post_init__(self) -> None:
        for name in ("keywords", "products"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        if not self.dates:
            raise ConfigError("at least one date is required")
        if len(set(self.dates)) != len(self.dates):
            raise ConfigError(f"duplicate dates: {sorted(d.isoformat() for d in self.dates)}")
        for dt in self.dates:
            if not MIN_DATE <= dt <= MAX_DATE:
                raise ConfigError(f"date {dt} is outside {MIN_DATE}..{MAX_DATE}")
        if self.lang not in LANGS:
            raise ConfigError(f"lang must be one of {', '.join(LANGS)}, got {self.lang!r}")
        if not 0.0 <= self.bad_rate <= 1.0:  # also rejects NaN
            raise ConfigError(f"bad_rate must be between 0 and 1, got {self.bad_rate!r}")
        if self.row_group_size < 1:
            raise ConfigError(f"row_group_size must be at least 1, got {self.row_group_size}")
        if self.rows_per_file is not None and self.rows_per_file < 1:
            raise ConfigError(f"rows_per_file must be at least 1, got {self.rows_per_file}")
        self._check_tables()

    def _check_tables(self) -> None:
        unknown = set(self.tables) - set(TABLES)
        if unknown or not self.tables:
            raise ConfigError(f"tables must be a non-empty subset of {TABLES}, got {self.tables!r}")
        for name in self.tables:
            per_partition = max(split_rows(getattr(self, name), len(self.dates)))
            if per_partition > MAX_ROWS_PER_PARTITION:
                raise ConfigError(
                    f"{name}: {per_partition} rows in one partition is over "
                    f"{MAX_ROWS_PER_PARTITION}; spread them over more dates"
                )

    def settings(self) -> dict[str, Any]:
        """What a partition's content and layout depend on (stored with each manifest entry)."""
        return {
            "seed": self.seed,
            "lang": self.lang,
            "bad_rate": self.bad_rate,
            "bad_files": self.bad_files,
            "row_group_size": self.row_group_size,
            "rows_per_file": self.rows_per_file,
        }


def split_rows(total: int, parts: int) -> list[int]:
    """Spread a table's total over its partitions in date order; earlier dates take the remainder."""
    base, remainder = divmod(total, parts)
    return [base + (1 if i < remainder else 0) for i in range(parts)]


def date_range(start: date, days: int) -> tuple[date, ...]:
    return tuple(start + timedelta(days=i) for i in range(days))


def partition_dir(out_root: Path, table: str, dt: date) -> Path:
    return Path(out_root) / table / f"dt={dt.isoformat()}"


def _expected(injected: dict[str, _Injected], rows: int) -> dict[str, Any]:
    """What a correct pipeline run over the partition's data files should report."""
    dead = {
        kind: len(rec.ids) for kind, rec in injected.items() if DEFECT_BY_KIND[kind].expect == "dead_letter"
    }
    dead = {k: v for k, v in dead.items() if v}
    total_dead = sum(dead.values())
    return {"rows_in": rows, "dead_letter": dead, "dead_lettered": total_dead, "indexed": rows - total_dead}


def write_partition(spec: TableSpec, options: GenerateOptions, dt: date, rows: int) -> dict[str, Any]:
    """Write one partition into a hidden temporary directory, then swap it in, so readers never see a
    half-written partition and a regenerated partition keeps no stale files; returns its manifest entry."""
    key = PartitionKey(spec.name, dt, options.seed, options.lang, options.bad_rate)
    final = partition_dir(options.out_root, spec.name, dt)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    writer = PartitionWriter(spec, key, rows, staging, options.row_group_size, options.rows_per_file)
    files = writer.run()
    bad_files = write_bad_files(spec, key, staging) if options.bad_files else []
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return {
        "settings": options.settings(),
        "rows": rows,
        "files": sorted(files, key=lambda f: f["file"]),
        "injected": {
            d.kind: writer.injected[d.kind].to_json(d) for d in DEFECTS if writer.injected[d.kind].ids
        },
        "expected": _expected(writer.injected, rows),
        "bad_files": bad_files,
    }


def _annotate_cross_partition(partitions: dict[str, dict[str, Any]]) -> None:
    """Mark whether each cross-partition duplicate's original exists in the dataset as it now stands
    (the data never depends on which other dates exist; only this note does)."""
    for dt_text, entry in partitions.items():
        cross = entry["injected"].get("duplicate_id_cross_partition")
        if not cross:
            continue
        previous = (date.fromisoformat(dt_text) - timedelta(days=1)).isoformat()
        source = partitions.get(previous)
        same = source is not None and all(
            source["settings"][k] == entry["settings"][k] for k in ("seed", "lang", "bad_rate")
        )
        cross["original_dt"] = previous
        cross["original_present"] = [
            bool(same and source is not None and pos < source["rows"]) for pos in cross["original_positions"]
        ]


def write_manifest(out_root: Path, spec: TableSpec, entries: dict[str, dict[str, Any]]) -> Path:
    """Merge this run's partitions into ``<table>/_injected.json`` (entries of partitions that still exist
    but were not regenerated are kept, so runs over different dates add up)."""
    path = Path(out_root) / spec.name / MANIFEST_NAME
    partitions: dict[str, dict[str, Any]] = {}
    if path.exists():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = {}
        if previous.get("format") == MANIFEST_FORMAT:
            for dt_text, entry in previous.get("partitions", {}).items():
                if partition_dir(out_root, spec.name, date.fromisoformat(dt_text)).is_dir():
                    partitions[dt_text] = entry
    partitions.update(entries)
    partitions = dict(sorted(partitions.items()))
    _annotate_cross_partition(partitions)
    manifest = {
        "format": MANIFEST_FORMAT,
        "table": spec.name,
        "id_column": spec.id_column,
        "text_column": spec.text_column,
        "optional_column": spec.optional_column,
        "extra_column": EXTRA_COLUMN,
        "max_text_chars_injected": LONG_TEXT_CHARS,
        "defects": {
            d.kind: {"expect": d.expect, "file": d.placement, "description": d.description} for d in DEFECTS
        },
        "partitions": partitions,
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def generate_table(options: GenerateOptions, table: str) -> dict[str, Any]:
    """Every partition of one table, then its manifest; returns the table's summary."""
    spec = TABLE_SPECS[table]
    started = time.perf_counter()
    dates = sorted(options.dates)
    entries: dict[str, dict[str, Any]] = {}
    for dt, rows in zip(dates, split_rows(getattr(options, table), len(dates)), strict=True):
        entries[dt.isoformat()] = write_partition(spec, options, dt, rows)
    manifest = write_manifest(options.out_root, spec, entries)
    files = [f for e in entries.values() for f in e["files"]]
    return {
        "table": table,
        "path": str(Path(options.out_root) / table),
        "manifest": str(manifest),
        "rows": sum(e["rows"] for e in entries.values()),
        "partitions": {dt: e["rows"] for dt, e in entries.items()},
        "files": len(files),
        "row_groups": sum(f["row_groups"] for f in files),
        "injected": sum(r["count"] for e in entries.values() for r in e["injected"].values()),
        "expected_dead_letters": sum(e["expected"]["dead_lettered"] for e in entries.values()),
        "bad_files": sum(len(e["bad_files"]) for e in entries.values()),
        "seconds": round(time.perf_counter() - started, 3),
    }


def generate(out_root: str | Path, **options: Any) -> dict[str, Any]:
    """Generate the sample dataset under ``out_root``; returns ``{"out_root", "tables": {name: summary}}``.

    ``options`` are the fields of :class:`GenerateOptions` (``keywords``, ``products``, ``dates`` as
    dates or ``YYYY-MM-DD`` strings, ``lang``, ``seed``, ``bad_rate``, ``bad_files``,
    ``row_group_size``, ``rows_per_file``, ``tables``). Raises ``ConfigError`` for invalid or unknown
    options. Partitions of the given dates are replaced; other partitions already under ``out_root``
    are left alone."""
    known = {f.name for f in fields(GenerateOptions)} - {"out_root"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown sample-data option(s) {unknown}; known: {sorted(known)}")
    if "dates" in options:
        options["dates"] = tuple(parse_date(d) if isinstance(d, str) else d for d in options["dates"])
    if "tables" in options:
        options["tables"] = tuple(options["tables"])
    if "bad_rate" in options:
        options["bad_rate"] = float(options["bad_rate"])
    return run_options(GenerateOptions(out_root=Path(out_root), **options))


def run_options(options: GenerateOptions) -> dict[str, Any]:
    summary = {name: generate_table(options, name) for name in options.tables if getattr(options, name) > 0}
    return {"out_root": str(options.out_root), "tables": summary}


def read_manifest(out_root: str | Path, table: str) -> dict[str, Any]:
    """The manifest of one table (for tests and the pipeline's accounting checks)."""
    return json.loads((Path(out_root) / table / MANIFEST_NAME).read_text(encoding="utf-8"))


_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_date(text: str) -> date:
    """Strict ``YYYY-MM-DD`` (``date.fromisoformat`` alone would also take ``20240101``)."""
    if not _DATE_RE.match(text):
        raise ConfigError(f"invalid date {text!r}: expected YYYY-MM-DD")
    try:
        value = date.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"invalid date {text!r}: {exc}") from None
    if not MIN_DATE <= value <= MAX_DATE:
        raise ConfigError(f"date {text} is outside {MIN_DATE}..{MAX_DATE}")
    return value
