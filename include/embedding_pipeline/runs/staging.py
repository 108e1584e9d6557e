"""Staged chunks: embedded rows written once by an embed task, read by every sink task.

One Parquet file per chunk under the run's staging directory. XCom carries only the path and
counts. Columns (keywords)::

    id            string   business key (keyword_id as text)
    point_id      string   uuid5(namespace, id): the Qdrant point id, stable across runs
    vector        fixed_size_list<float32>[dim]
    text          string   the embedded text (keyword)
    content_hash  string   sha256(text + model name + model version): drives incremental reindex
    payload       string   JSON of the remaining business fields (category, lang, updated_at, dt, ...)
    op            string   upsert (embedded: write all) | update (fields only: the vector is zeros
                           and is not written) | delete (runs.changes)

File metadata holds ``model_name``, ``model_version``, ``dim`` and ``kind`` so a sink can refuse a
chunk embedded with another model than its collection.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedding_pipeline.runs.storage import (
    StoragePath,
    is_local,
    parquet_file,
    read_parquet,
    remove,
    remove_dir,
    write_parquet,
)

# Fixed namespace: point ids must be identical on every machine and every run.
ID_NAMESPACE = uuid.UUID("6f0b8a51-54b5-4f4e-9a53-6c2f2f0c9e11")


def point_id(kind: str, business_id: str) -> str:
    """Deterministic Qdrant point id for a business key (idempotent re-runs, retries, backfills)."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{kind}:{business_id}"))


def content_hash(text: str, model_name: str, model_version: int | str) -> str:
    return hashlib.sha256(f"{model_name}\x1f{model_version}\x1f{text}".encode()).hexdigest()


def staged_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            ("id", pa.string()),
            ("point_id", pa.string()),
            ("vector", pa.list_(pa.float32(), dim)),
            ("text", pa.string()),
            ("content_hash", pa.string()),
            ("payload", pa.string()),
            ("op", pa.string()),
        ]
    )


UPSERT, UPDATE, DELETE = "upsert", "update", "delete"


def vector_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """Rows of a 2-D array as Arrow fixed-size lists of float32 (one buffer, no per-row objects)."""
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).ravel()), vectors.shape[1])


@dataclass(frozen=True)
class StagedRows:
    """A slice of a staged chunk without its vectors: what a sink that stores no vectors (ES) reads."""

    COLUMNS: ClassVar[tuple[str, ...]] = ("id", "text", "content_hash", "payload", "op")

    ids: list[str]
    texts: list[str]
    content_hashes: list[str]
    payloads: list[dict]
    ops: list[str]


@dataclass(frozen=True)
class StagedBatch(StagedRows):
    """A slice of a staged chunk as plain Python/NumPy values, vectors included."""

    point_ids: list[str]
    vectors: np.ndarray


class StagedChunkWriter:
    """Appends embedded batches to one chunk file (streaming: one row group per batch)."""

    def __init__(self, path: StoragePath, dim: int, kind: str, model_name: str, model_version: int) -> None:
        self.path = path
        # Local disk: write a temp file and rename it into place. Object stores publish an object
        # only when its upload completes, so the final key is written directly there.
        self.tmp = path.with_suffix(".parquet.tmp") if is_local(path) else path
        self.handle = None
        self.kind, self.model_name, self.model_version = kind, model_name, model_version
        metadata = {
            "kind": kind,
            "model_name": model_name,
            "model_version": str(model_version),
            "dim": str(dim),
        }
        self.schema = staged_schema(dim).with_metadata(metadata)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Dictionary encoding for every column but the vectors (storage.write_parquet says why).
        dictionary = [name for name in self.schema.names if name != "vector"]
        if is_local(path):
            self.writer = pq.ParquetWriter(self.tmp, self.schema, use_dictionary=dictionary)
        else:
            self.handle = path.open("wb")
            self.writer = pq.ParquetWriter(self.handle, self.schema, use_dictionary=dictionary)
        self.rows = 0

    def write(
        self,
        ids: list[str],
        vectors: np.ndarray | None,
        texts: list[str],
        payloads: list[dict],
        op: str = UPSERT,
    ) -> None:
        """Append rows of one ``op``; ``vectors`` is None for updates and deletes (stored as zeros)."""
        if not ids:
            return
        if vectors is None:
            vectors = np.zeros((len(ids), self.schema.field("vector").type.list_size), np.float32)
        table = pa.table(
            {
                "id": ids,
                "point_id": [point_id(self.kind, i) for i in ids],
                "vector": vector_array(vectors),
                "text": texts,
                "content_hash": [content_hash(t, self.model_name, self.model_version) for t in texts],
                "payload": [json.dumps(p, ensure_ascii=False, default=str) for p in payloads],
                "op": [op] * len(ids),
            },
            schema=self.schema,
        )
        self.writer.write_table(table)
        self.rows += len(ids)

    def close(self) -> StoragePath:
        """Finish the file and move it into place atomically (a retried task overwrites it)."""
        self.writer.close()
        if self.handle is not None:
            self.handle.close()
        else:
            self.tmp.replace(self.path)
        return self.path

    def abort(self) -> None:
        """Drop a partly written chunk (the task failed; its retry starts the file again)."""
        self.writer.close()
        if self.handle is not None:
            self.handle.close()
        remove(self.tmp)


class ResumeSlices:
    """The slices an embed task already paid for, so that its retry resumes instead of starting over.

    Each embedded slice is also written to ``<staged dir>/<chunk_id>.slices/<k>.parquet`` (its
    vectors, and a digest of its ids and texts with the model in the file metadata); a retry that
    reaches slice ``k`` with the same rows and model reads the vectors back instead of embedding
    again. Rows reach slice ``k`` in the same order on every attempt (the input, the duplicate map
    and the generation's state are fixed for the run), and the digest refuses anything else. The
    directory goes when the chunk's staged file is complete. The cost is one extra write of the
    vectors (~1.5 MB per 1024 rows at 384 dimensions).
    """

    def __init__(self, staged: StoragePath, model_name: str, model_version: int) -> None:
        self.root = staged.parent / f"{staged.name.removesuffix('.parquet')}.slices"
        self.model = {"model_name": model_name, "model_version": str(model_version)}

    @staticmethod
    def _digest(ids: list[str], texts: list[str]) -> str:
        digest = hashlib.sha256()
        for row_id, text in zip(ids, texts, strict=True):
            digest.update(f"{row_id}\x1f{text}\x1e".encode("utf-8", "surrogatepass"))
        return digest.hexdigest()

    def get(self, k: int, ids: list[str], texts: list[str]) -> tuple[np.ndarray, int] | None:
        """Slice ``k``'s vectors and truncation count, if an earlier attempt embedded these rows."""
        path = self.root / f"{k}.parquet"
        if not path.exists():
            return None
        try:
            table = read_parquet(path)
        except (OSError, pa.ArrowInvalid):  # unreadable (written elsewhere, cut short): embed again
            return None
        meta = {key.decode(): value.decode() for key, value in (table.schema.metadata or {}).items()}
        wanted = {**self.model, "digest": self._digest(ids, texts)}
        if any(meta.get(key) != value for key, value in wanted.items()):
            return None
        column = table.column("vector").combine_chunks()
        vectors = column.values.to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size)
        return vectors, int(meta["truncated"])

    def put(self, k: int, ids: list[str], texts: list[str], vectors: np.ndarray, truncated: int) -> None:
        metadata = {**self.model, "digest": self._digest(ids, texts), "truncated": str(truncated)}
        table = pa.table({"vector": vector_array(vectors)}).replace_schema_metadata(metadata)
        write_parquet(self.root / f"{k}.parquet", table, use_dictionary=False)

    def clear(self) -> None:
        remove_dir(self.root)


STAGED = "staged chunk (written by this run's embed task)"


def staged_row_count(path: str | StoragePath) -> int:
    """Rows of a staged chunk, from its footer (what a sink's progress counts towards)."""
    return parquet_file(path, STAGED).metadata.num_rows


def staged_metadata(path: str | StoragePath) -> dict[str, str]:
    raw = parquet_file(path, STAGED).schema_arrow.metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items()}


def iter_staged(path: str | StoragePath, batch_size: int) -> Iterator[StagedBatch]:
    """Stream a staged chunk in batches of at most ``batch_size`` rows (flat memory)."""
    for record_batch in parquet_file(path, STAGED).iter_batches(batch_size=batch_size):
        vectors = record_batch.column("vector")
        yield StagedBatch(
            **_rows(record_batch).__dict__,
            point_ids=record_batch.column("point_id").to_pylist(),
            vectors=vectors.values.to_numpy(zero_copy_only=False).reshape(-1, vectors.type.list_size),
        )


def iter_staged_rows(path: str | StoragePath, batch_size: int) -> Iterator[StagedRows]:
    """:func:`iter_staged` without the ``vector`` and ``point_id`` columns, which are most of the
    file and most of the decoding (the ES sink stores no vectors)."""
    columns = list(StagedRows.COLUMNS)
    for record_batch in parquet_file(path, STAGED).iter_batches(batch_size=batch_size, columns=columns):
        yield _rows(record_batch)


def _rows(record_batch: pa.RecordBatch) -> StagedRows:
    return StagedRows(
        ids=record_batch.column("id").to_pylist(),
        texts=record_batch.column("text").to_pylist(),
        content_hashes=record_batch.column("content_hash").to_pylist(),
        payloads=_json_objects(record_batch.column("payload").to_pylist()),
        ops=record_batch.column("op").to_pylist(),
    )


def _json_objects(texts: list[str]) -> list[dict]:
    """``[json.loads(t) for t in texts]`` for the JSON objects the writer stores, in one parse
    (~2.5x faster: one decoder call per batch instead of one per row)."""
    return json.loads("[" + ",".join(texts) + "]") if texts else []
