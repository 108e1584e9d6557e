"""The mapped embed task: stream a chunk, validate rows, embed valid ones, stage vectors.

Every row read ends either in the staged chunk or in the dead letter with a reason:

    missing_id    the business key is null or empty
    null_text     the text is null
    empty_text    the text is empty or whitespace only
    wrong_type    the text is not a string (e.g. a number in a loosely typed file)
    duplicate_id  the id already appeared earlier in the partition (the first occurrence is kept;
                  the plan task finds duplicates across chunks, a chunk alone only within itself)
    text_too_long the text exceeds ``max_text_chars`` characters (garbage, not a query); texts
                  merely over the model's token limit are truncated by the tokenizer and counted
    id_too_long   the id is longer than a store accepts (Elasticsearch ``_id``: 512 bytes); caught
                  here so that no store holds a row another store refused
    invalid_field a payload field the index maps does not fit it (a date that is not one, a struct
                  where a keyword goes, a keyword over Lucene's 32766 bytes): same reason
    non_finite_vector the model returned NaN or infinity for the row (no store can rank it)

Incremental runs (``state`` given) decide per row what to do with it (``runs.changes``): only new
and changed texts are embedded.

Memory stays flat: record batches are read row group by row group and embedded in fixed-size
slices; duplicates are resolved with the partition-wide map the plan task writes. Every embedded
slice is kept until the chunk is staged (runs.staging.ResumeSlices): a retried task re-reads its
rows but embeds only the slices its earlier attempt did not finish.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedding_pipeline.errors import RunFilesChangedError
from embedding_pipeline.model.registry import Role
from embedding_pipeline.model.tokenization import text_problem
from embedding_pipeline.runs.accounting import StageResult, chunk_result
from embedding_pipeline.runs.changes import decide
from embedding_pipeline.runs.dead_letter import DeadLetterWriter
from embedding_pipeline.runs.input_kinds import is_tombstone
from embedding_pipeline.runs.partitions import Chunk, Segment, TableSpec, partition_version
from embedding_pipeline.runs.progress import Progress
from embedding_pipeline.runs.staging import DELETE, UPDATE, ResumeSlices, StagedChunkWriter, content_hash
from embedding_pipeline.runs.state import IndexState, delta_table, fields_hash, text_hash
from embedding_pipeline.runs.state_db import StateSettings
from embedding_pipeline.runs.storage import StoragePath, as_path, parquet_file, read_parquet, write_parquet
from embedding_pipeline.serving.client import EmbeddingClient
from embedding_pipeline.settings import ServerSettings
from embedding_pipeline.stores.elasticsearch.documents import MAX_ID_BYTES, field_problem

log = logging.getLogger(__name__)

STAGE = "embed"
_REASONS = {"text is null": "null_text", "text is empty or whitespace": "empty_text"}


@dataclass(frozen=True)
class EmbedLimits:
    """Sizes and rules of the embed task: rows read per Parquet batch, rows embedded per client
    call (the client sorts by length within it, so larger slices pad less), the longest text
    accepted, and the index's type of each payload field (``field_types``: what a row's payload
    must fit before any store is written)."""

    read_batch_rows: int = 4096
    embed_batch_rows: int = 4096
    max_text_chars: int = 2000
    field_types: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EmbedOutput:
    result: StageResult
    staged_path: str | None
    state_delta: str | None = None  # this chunk's rows for the state (runs.state), committed at finalize

    def to_xcom(self, chunk_id: str) -> dict[str, Any]:
        return {
            "result": self.result.to_xcom(),
            "staged": self.staged_path,
            "state_delta": self.state_delta,
            "chunk": chunk_id,
        }


def _plain(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def row_problem(
    row_id: object,
    text: object,
    seen: set[str] | None,
    max_text_chars: int,
    position: tuple[str, int],
    first_seen: dict[str, list],
    *,
    tombstone: bool = False,
) -> tuple[str, str] | None:
    """(reason, error) for a row that cannot be embedded (or, a tombstone, deleted), or None."""
    if row_id is None:
        return "missing_id", "id is null"
    key = str(row_id)
    if not key:  # Elasticsearch refuses an empty _id
        return "missing_id", "id is empty"
    id_bytes = len(key.encode("utf-8", "surrogatepass"))
    if id_bytes > MAX_ID_BYTES:  # checked before any store is written: a row is in every store or none
        return "id_too_long", f"id is {id_bytes} bytes; Elasticsearch takes at most {MAX_ID_BYTES}"
    problem = None if tombstone else text_problem(text)  # a deletion needs no text
    if problem:
        return _REASONS.get(problem, "wrong_type"), problem
    if not tombstone and len(text) > max_text_chars:  # type: ignore[arg-type]
        return "text_too_long", f"text has {len(text)} characters, more than max_text_chars={max_text_chars}"  # type: ignore[arg-type]
    first = first_seen.get(key)
    if first is not None and tuple(first) != position:
        return "duplicate_id", (
            f"id {row_id} is kept at {first[0]} row {first[1]} (a tombstone wins over upserts of the "
            "same partition, else the first occurrence)"
        )
    if seen is not None and key in seen:
        return "duplicate_id", f"id {row_id} appeared earlier in this chunk; the first occurrence is kept"
    return None


@dataclass
class _Counts:
    rows_in: int = 0
    embedded: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    superseded: int = 0
    unknown_deletes: int = 0
    truncated: int = 0
    resumed: int = 0  # rows whose vectors an earlier attempt of the task had embedded
    embed_seconds: float = 0.0


class _ChunkEmbedder:
    """Decides each valid row's fate (runs.changes) and stages it: rows to embed in slices, field
    updates and deletes as they come; every row also yields its state row (runs.state)."""

    def __init__(
        self,
        client: EmbeddingClient,
        writer: StagedChunkWriter,
        dead: DeadLetterWriter,
        role: Role | None,
        limits: EmbedLimits,
        progress: Progress,
    ) -> None:
        self.client, self.writer, self.dead, self.role, self.limits = client, writer, dead, role, limits
        self.progress = progress
        self.rejected: set[str] = set()  # embedded but not stageable: no state row either
        self.slices = ResumeSlices(writer.path, writer.model_name, writer.model_version)
        self.slice_number = 0
        self.counts = _Counts()
        self.state_rows: list[tuple[str, int, int, int, bool, str]] = []
        self.pending: tuple[list[str], list[str], list[dict]] = ([], [], [])

    def add(self, row_id: str, text: str, payload: dict, decision: str, hashes: tuple[int, int]) -> None:
        version = partition_version(payload["dt"])
        counts = self.counts
        if decision in ("delete", "unknown_delete"):
            self.state_rows.append((row_id, version, 0, 0, True, decision))
            if decision == "delete":
                self.writer.write([row_id], None, [""], [{"dt": payload["dt"]}], DELETE)
                counts.deleted += 1
            else:
                counts.unknown_deletes += 1
            return
        if decision == "superseded":
            counts.superseded += 1
            return
        self.state_rows.append((row_id, version, *hashes, False, decision))
        if decision == "unchanged":
            counts.unchanged += 1
        elif decision == "update":
            self.writer.write([row_id], None, [text], [payload], UPDATE)
            counts.updated += 1
        else:
            for values, value in zip(self.pending, (row_id, text, payload), strict=True):
                values.append(value)
            if len(self.pending[0]) >= self.limits.embed_batch_rows:
                self.flush()

    def flush(self) -> None:
        ids, texts, payloads = self.pending
        if not ids:
            return
        k, self.slice_number = self.slice_number, self.slice_number + 1
        resumed = self.slices.get(k, ids, texts)
        if resumed is None:
            t0 = time.monotonic()
            result = self.client.embed(texts, role=self.role)
            self.counts.embed_seconds += time.monotonic() - t0
            self.slices.put(k, ids, texts, result.vectors, result.truncated)
            vectors, truncated = result.vectors, result.truncated
        else:
            vectors, truncated = resumed
            self.counts.resumed += len(ids)
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            for i in np.flatnonzero(~finite):
                self.dead.add(ids[i], "non_finite_vector", "the model returned NaN or infinity", payloads[i])
                self.rejected.add(ids[i])
            keep = np.flatnonzero(finite)
            ids, texts, payloads = ([values[i] for i in keep] for values in self.pending)
            vectors = vectors[keep]
        self.writer.write(list(ids), vectors, list(texts), list(payloads))
        self.counts.embedded += len(ids)
        self.counts.truncated += truncated
        for values in self.pending:
            values.clear()


def _segment_file(segment: Segment) -> pq.ParquetFile:
    """A planned input file, checked to still be the one planned (its row groups still there)."""
    parquet = parquet_file(segment.path, "input file planned for this run")
    if max(segment.row_groups) >= parquet.metadata.num_row_groups:
        raise RunFilesChangedError(
            f"the input file {segment.path} has {parquet.metadata.num_row_groups} row groups, but row "
            f"group {max(segment.row_groups)} was planned: it was rewritten under the run. Re-run the dates."
        )
    return parquet


def _chunk_ids(chunk: Chunk, table: TableSpec) -> list[str]:
    """The chunk's ids as text (one narrow read): what the state is looked up for."""
    ids: list[str] = []
    for segment in chunk.segments:
        column = _segment_file(segment).read_row_groups(segment.row_groups, columns=[table.id_column])
        ids.extend(v for v in column.column(0).cast(pa.string()).to_pylist() if v is not None)
    return ids


def embed_chunk(
    chunk: Chunk,
    table: TableSpec,
    kind: str,
    client: EmbeddingClient,
    run_dir: str | StoragePath,
    role: Role | None = "passage",
    limits: EmbedLimits = EmbedLimits(),
    state: IndexState | None = None,
) -> EmbedOutput:
    """Embed one chunk into ``<run_dir>/staged/<chunk_id>.parquet``; return counts and the path.

    With ``state`` (incremental runs) each row is compared with it first (runs.changes): only new
    and changed texts are embedded, field-only changes and deletes are staged without a vector,
    unchanged and superseded rows are counted; the chunk's state rows go to
    ``<run_dir>/state_delta/<chunk_id>.parquet``. Without it every valid row is embedded.
    """
    started = time.monotonic()
    dead = DeadLetterWriter(run_dir, STAGE, chunk.chunk_id)
    run_dir = as_path(run_dir)
    staged = run_dir / "staged" / f"{chunk.chunk_id}.parquet"
    model_name, model_version = client.settings.model_name, client.published.version
    writer = StagedChunkWriter(staged, client.dim, kind, model_name, model_version)
    progress = Progress(f"embed {chunk.chunk_id}", chunk.rows)
    embedder = _ChunkEmbedder(client, writer, dead, role, limits, progress)
    try:
        if chunk.deletes_path:
            for row_id in read_parquet(chunk.deletes_path)["id"].to_pylist():
                embedder.counts.rows_in += 1
                embedder.add(row_id, "", {"dt": chunk.dt}, "delete", (0, 0))
        else:
            _stream_rows(chunk, table, embedder, dead, state)
        embedder.flush()
        path = writer.close()
    except BaseException:
        writer.abort()  # the slices stay: a retry resumes from them
        raise
    embedder.slices.clear()
    counts = embedder.counts
    delta = None
    if state is not None:
        rows = [r for r in embedder.state_rows if r[0] not in embedder.rejected]
        delta = write_parquet(run_dir / "state_delta" / f"{chunk.chunk_id}.parquet", delta_table(rows))
    extra = {
        "embedded": counts.embedded,
        "fields_updated": counts.updated,
        "superseded": counts.superseded,
        "unknown_deletes": counts.unknown_deletes,
        "truncated": counts.truncated,
        "resumed_rows": counts.resumed,
        "embed_seconds": round(counts.embed_seconds, 3),
    }
    counted = StageResult(
        STAGE,
        chunk.chunk_id,
        counts.rows_in,
        indexed=counts.embedded + counts.updated,
        unchanged=counts.unchanged + counts.superseded + counts.unknown_deletes,
        deleted=counts.deleted,
        extra=extra,
    )
    result = chunk_result(counted, dead, started)
    log.info(
        "embed %s: %d rows in, %d embedded, %d fields updated, %d unchanged, %d deleted, "
        "%d dead-lettered %s in %.1fs (%.0f rows/s)",
        chunk.chunk_id,
        result.rows_in,
        counts.embedded,
        counts.updated,
        result.unchanged,
        result.deleted,
        result.dead_lettered,
        result.dead_letters_by_reason,
        result.seconds,
        result.rows_in / result.seconds if result.seconds > 0 else 0.0,
    )
    staged_any = counts.embedded + counts.updated + counts.deleted
    return EmbedOutput(result, str(path) if staged_any else None, delta)


@dataclass(frozen=True)
class EmbedSpec:
    """What a stage embeds: its table, the staged kind, the model role and the index's field types
    (payloads are checked against them)."""

    table: TableSpec
    kind: str
    role: Role | None
    field_types: Mapping[str, str] = field(default_factory=dict)


def embed_task(
    chunk: dict[str, Any],
    run_dir: str,
    prepared: dict[str, Any],
    spec: EmbedSpec,
    settings: ServerSettings | None = None,
    state_db: StateSettings | None = None,
) -> dict[str, Any]:
    """The mapped embed task of every stage: one chunk (or one delete chunk) of the spec's table
    embedded with the run's model against the generation's state (both from the prepare task's
    XCom; the state in ``state_db``, default the environment's)."""
    table, kind, role, field_types = spec.table, spec.kind, spec.role, spec.field_types
    settings = (settings or ServerSettings.from_env()).with_overrides(model_name=prepared["model_name"])
    table = replace(table, tombstone_column=prepared.get("tombstone_column"))
    key = prepared.get("state_key")
    state = IndexState(state_db or StateSettings.from_env(), key) if key else None
    with EmbeddingClient(settings) as client:
        output = embed_chunk(
            Chunk.from_xcom(chunk),
            table,
            kind,
            client,
            as_path(run_dir),
            role=role,
            limits=EmbedLimits(field_types=field_types or {}),
            state=state,
        )
    return output.to_xcom(chunk["chunk_id"])


def _stream_rows(
    chunk: Chunk,
    table: TableSpec,
    embedder: _ChunkEmbedder,
    dead: DeadLetterWriter,
    state: IndexState | None,
) -> None:
    """Read the chunk's rows batch by batch, dead-letter bad ones, hand the rest to ``embedder``."""
    limits = embedder.limits
    model_name, model_version = embedder.writer.model_name, embedder.writer.model_version
    # With the partitions' duplicate maps (from the plan task) no set of seen ids is kept: memory
    # stays flat whatever the chunk size. Without them, duplicates are caught within the chunk only.
    maps: dict[str, tuple[dict[str, list], set[str]]] = {}  # per partition: first occurrences, later ids
    seen: set[str] | None = None if all(s.duplicates_path for s in chunk.segments) else set()
    priors = state.lookup(_chunk_ids(chunk, table)) if state is not None else {}
    for segment in chunk.segments:
        if segment.dt not in maps:
            maps[segment.dt] = (
                json.loads(as_path(segment.duplicates_path).read_text()) if segment.duplicates_path else {},
                set(read_parquet(segment.superseded_path)["id"].to_pylist())
                if segment.superseded_path
                else set(),
            )
        first_seen, later = maps[segment.dt]
        version = partition_version(segment.dt)
        parquet = _segment_file(segment)
        columns = [c for c in table.columns if c in parquet.schema_arrow.names]
        # Row groups of a segment are consecutive: rows are numbered from the first one's offset.
        row = sum(parquet.metadata.row_group(i).num_rows for i in range(segment.row_groups[0]))
        for batch in parquet.iter_batches(
            batch_size=limits.read_batch_rows, row_groups=segment.row_groups, columns=columns
        ):
            records = batch.to_pylist()
            embedder.counts.rows_in += len(records)
            for record in records:
                row_id, text = record.get(table.id_column), record.get(table.text_column)
                tombstone = bool(table.tombstone_column) and is_tombstone(record.get(table.tombstone_column))
                position = (segment.path, row)
                row += 1
                payload = {k: _plain(record[k]) for k in table.stored_columns if k in record}
                payload["dt"] = segment.dt
                problem = row_problem(
                    row_id, text, seen, limits.max_text_chars, position, first_seen, tombstone=tombstone
                )
                if not problem and not tombstone:
                    invalid = field_problem(limits.field_types, payload)
                    problem = ("invalid_field", invalid) if invalid else None
                if problem:
                    dead.add(
                        row_id, problem[0], problem[1], {**record, "dt": segment.dt, "source": segment.path}
                    )
                    continue
                key = str(row_id)
                if seen is not None:
                    seen.add(key)
                text = "" if tombstone and not isinstance(text, str) else text
                hashes = (text_hash(content_hash(text, model_name, model_version)), fields_hash(payload))
                if state is None:
                    decision = "delete" if tombstone else "upsert"
                elif key in later:
                    decision = "superseded"
                else:
                    decision = decide(priors.get(key), version, *hashes, tombstone)
                embedder.add(key, text, payload, decision, hashes)
            # Rows whose fate is settled: all read so far but those waiting for the next slice.
            embedder.progress.update(embedder.counts.rows_in - len(embedder.pending[0]))
