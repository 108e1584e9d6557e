"""The mapped embed task: stream a chunk, validate rows, embed valid ones, stage vectors.

Every row read ends either in the staged chunk or in the dead letter with a reason:

    missing_id    the business key is null
    null_text     the text is null
    empty_text    the text is empty or whitespace only
    wrong_type    the text is not a string (e.g. a number in a loosely typed file)
    duplicate_id  the id already appeared earlier in the partition (the first occurrence is kept;
                  the plan task finds duplicates across chunks, a chunk alone only within itself)
    text_too_long the text exceeds ``max_text_chars`` characters (garbage, not a query); texts
                  merely over the model's token limit are truncated by the tokenizer and counted
    id_too_long   the id is longer than a store accepts (Elasticsearch ``_id``: 512 bytes); caught
                  here so that no store holds a row another store refused

Memory stays flat: record batches are read row group by row group and embedded in fixed-size
slices; duplicates are resolved with the partition-wide map the plan task writes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import date, datetime

from embedding_pipeline.model.registry import Role
from embedding_pipeline.runs.accounting import StageResult, chunk_result
from embedding_pipeline.runs.dead_letter import DeadLetterWriter
from embedding_pipeline.runs.partitions import Chunk, TableSpec
from embedding_pipeline.runs.staging import StagedChunkWriter
from embedding_pipeline.runs.storage import StoragePath, as_path, parquet_file
from embedding_pipeline.serving.client import EmbeddingClient
from embedding_pipeline.serving.tokenization import text_problem
from embedding_pipeline.stores.elasticsearch.documents import MAX_ID_BYTES

STAGE = "embed"
_REASONS = {"text is null": "null_text", "text is empty or whitespace": "empty_text"}


@dataclass(frozen=True)
class EmbedLimits:
    """Sizes of the embed task: rows read per Parquet batch, rows embedded per client call (the
    client sorts by length within it, so larger slices pad less), and the longest text accepted."""

    read_batch_rows: int = 4096
    embed_batch_rows: int = 4096
    max_text_chars: int = 2000


@dataclass(frozen=True)
class EmbedOutput:
    result: StageResult
    staged_path: str | None


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
) -> tuple[str, str] | None:
    """(reason, error) for a row that cannot be embedded, or None."""
    if row_id is None:
        return "missing_id", "id is null"
    key = str(row_id)
    id_bytes = len(key.encode("utf-8", "surrogatepass"))
    if id_bytes > MAX_ID_BYTES:  # checked before any store is written: a row is in every store or none
        return "id_too_long", f"id is {id_bytes} bytes; Elasticsearch takes at most {MAX_ID_BYTES}"
    problem = text_problem(text)
    if problem:
        return _REASONS.get(problem, "wrong_type"), problem
    if len(text) > max_text_chars:  # type: ignore[arg-type]
        return "text_too_long", f"text has {len(text)} characters, more than max_text_chars={max_text_chars}"  # type: ignore[arg-type]
    first = first_seen.get(key)
    if first is not None and tuple(first) != position:
        return "duplicate_id", f"id {row_id} first occurs at {first[0]} row {first[1]}; that row is kept"
    if seen is not None and key in seen:
        return "duplicate_id", f"id {row_id} appeared earlier in this chunk; the first occurrence is kept"
    return None


def embed_chunk(
    chunk: Chunk,
    table: TableSpec,
    kind: str,
    client: EmbeddingClient,
    run_dir: str | StoragePath,
    role: Role | None = "passage",
    limits: EmbedLimits = EmbedLimits(),
) -> EmbedOutput:
    """Embed one chunk into ``<run_dir>/staged/<chunk_id>.parquet``; return counts and the path."""
    started = time.monotonic()
    dead = DeadLetterWriter(run_dir, STAGE, chunk.chunk_id)
    run_dir = as_path(run_dir)
    staged = run_dir / "staged" / f"{chunk.chunk_id}.parquet"
    writer = StagedChunkWriter(staged, client.dim, kind, client.settings.model_name, client.published.version)
    seen: set[str] | None = set()
    pending_ids: list[str] = []
    pending_texts: list[str] = []
    pending_payloads: list[dict] = []
    rows_in = embedded = truncated = 0
    embed_seconds = 0.0

    def flush() -> None:
        nonlocal embedded, truncated, embed_seconds
        if not pending_ids:
            return
        t0 = time.monotonic()
        result = client.embed(pending_texts, role=role)
        embed_seconds += time.monotonic() - t0
        writer.write(list(pending_ids), result.vectors, list(pending_texts), list(pending_payloads))
        embedded += len(pending_ids)
        truncated += result.truncated
        pending_ids.clear()
        pending_texts.clear()
        pending_payloads.clear()

    # With the partition's duplicate map (from the plan task) no set of seen ids is kept: memory
    # stays flat whatever the chunk size. Without one, duplicates are caught within the chunk only.
    first_seen: dict[str, list] = (
        json.loads(as_path(chunk.duplicates_path).read_text()) if chunk.duplicates_path else {}
    )
    if chunk.duplicates_path:
        seen = None
    try:
        for segment in chunk.segments:
            parquet = parquet_file(segment.path)
            columns = [c for c in table.columns if c in parquet.schema_arrow.names]
            # Row groups of a segment are consecutive: rows are numbered from the first one's offset.
            row = sum(parquet.metadata.row_group(i).num_rows for i in range(segment.row_groups[0]))
            for batch in parquet.iter_batches(
                batch_size=limits.read_batch_rows, row_groups=segment.row_groups, columns=columns
            ):
                records = batch.to_pylist()
                rows_in += len(records)
                for record in records:
                    row_id, text = record.get(table.id_column), record.get(table.text_column)
                    position = (segment.path, row)
                    row += 1
                    problem = row_problem(row_id, text, seen, limits.max_text_chars, position, first_seen)
                    if problem:
                        dead.add(
                            row_id, problem[0], problem[1], {**record, "dt": chunk.dt, "source": segment.path}
                        )
                        continue
                    if seen is not None:
                        seen.add(str(row_id))
                    payload = {
                        k: _plain(v)
                        for k, v in record.items()
                        if k not in (table.id_column, table.text_column)
                    }
                    payload["dt"] = chunk.dt
                    pending_ids.append(str(row_id))
                    pending_texts.append(text)
                    pending_payloads.append(payload)
                    if len(pending_ids) >= limits.embed_batch_rows:
                        flush()
        flush()
        path = writer.close()
    except BaseException:
        writer.abort()
        raise
    extra = {"truncated": truncated, "embed_seconds": round(embed_seconds, 3)}
    result = chunk_result(STAGE, chunk.chunk_id, rows_in, embedded, dead, started, extra)
    return EmbedOutput(result, str(path) if embedded else None)
