"""Chunk planning, the embed stage (real server) and the finalize accounting."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import settings_for
from embedding_pipeline.errors import ConfigError
from embedding_pipeline.runs.accounting import StageResult
from embedding_pipeline.runs.dead_letter import read_dead_letters
from embedding_pipeline.runs.partitions import (
    KEYWORDS,
    MAX_MAP_LENGTH,
    Chunk,
    SchemaError,
    Segment,
    merge_chunks,
    partition_dir,
    partition_files,
    plan_chunks,
)
from embedding_pipeline.runs.report import AccountingError, finalize, summary
from embedding_pipeline.runs.staging import iter_staged, staged_metadata
from embedding_pipeline.serving.client import EmbeddingClient
from embedding_pipeline.stages.embed import EmbedLimits, embed_chunk
from hypothesis import given, settings
from hypothesis import strategies as st

DT = "2024-01-01"


def _write(path, rows: int, row_group: int, start: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = list(range(start, start + rows))
    pq.write_table(
        pa.table({"keyword_id": ids, "keyword": [f"keyword {i}" for i in ids]}),
        path,
        row_group_size=row_group,
    )


def test_chunks_are_row_group_aligned_bounded_and_cover_every_row(tmp_path):
    part = partition_dir(tmp_path, KEYWORDS, DT)
    _write(part / "part-0.parquet", 1000, 100)
    _write(part / "part-1.parquet", 1000, 300, start=1000)
    (part / "_injected.json").write_text("{}")  # manifests are not data
    files = partition_files(part)
    assert [f.name for f in files] == ["part-0.parquet", "part-1.parquet"]
    chunks = plan_chunks(files, KEYWORDS, DT, target_rows=250, max_chunks=1024)
    assert sum(c.rows for c in chunks) == 2000
    covered = sorted((s.path, g) for c in chunks for s in c.segments for g in s.row_groups)
    assert covered == sorted([(str(files[0]), g) for g in range(10)] + [(str(files[1]), g) for g in range(4)])
    assert all(c.rows >= 250 for c in chunks[:-1])
    bounded = plan_chunks(files, KEYWORDS, DT, target_rows=10, max_chunks=3)
    assert len(bounded) <= 3 and sum(c.rows for c in bounded) == 2000
    assert len({c.chunk_id for c in chunks}) == len(chunks)


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 400), min_size=1, max_size=60), limit=st.integers(1, 12))
def test_merging_chunks_keeps_every_segment_in_order_within_any_limit(sizes, limit):
    chunks = [
        Chunk(f"2024-01-{i % 28 + 1:02d}-c{i:04d}", DT, [Segment(f"f{i}", [0], n, DT)])
        for i, n in enumerate(sizes)
    ]
    merged = merge_chunks(chunks, limit)
    assert len(merged) == min(len(chunks), limit)
    assert [s.path for c in merged for s in c.segments] == [f"f{i}" for i in range(len(sizes))]
    assert len({c.chunk_id for c in merged}) == len(merged)


def test_a_replay_of_1100_daily_partitions_maps_to_max_chunks_and_keeps_each_rows_date(tmp_path):
    """More partitions than ``max_chunks`` (and than Airflow's max_map_length): chunks span
    partitions, each segment keeps its partition's date and maps, and only each id's latest row is
    left to embed (the others are listed as superseded)."""
    from datetime import date, timedelta

    from embedding_pipeline.runs.plan import plan

    dts = [(date(2021, 1, 1) + timedelta(days=i)).isoformat() for i in range(1100)]
    for i, dt in enumerate(dts):
        path = partition_dir(tmp_path, KEYWORDS, dt) / "part-0.parquet"
        path.parent.mkdir(parents=True)
        ids = [i % 300, 10_000 + i]  # ids 0..299 come back every 300 days: their latest row wins
        pq.write_table(pa.table({"keyword_id": ids, "keyword": [f"k{x} on {dt}" for x in ids]}), path)
    planned = plan(KEYWORDS, tmp_path, dts, tmp_path / "run", 50_000, 64)
    chunks = [Chunk.from_xcom(c) for c in planned["chunks"]]
    assert len(chunks) == 64 <= MAX_MAP_LENGTH
    segments = [s for c in chunks for s in c.segments]
    assert sorted(s.dt for s in segments) == dts and sum(s.rows for s in segments) == 2200
    assert all(f"dt={s.dt}" in s.path and s.duplicates_path for s in segments)
    superseded = sum(len(pq.read_table(s.superseded_path)) for s in segments if s.superseded_path)
    assert superseded == 1100 - 300  # every repeat of ids 0..299 but its last


def test_bad_files_fail_planning_naming_file_and_column(tmp_path):
    part = partition_dir(tmp_path, KEYWORDS, DT)
    _write(part / "part-0.parquet", 10, 5)
    pq.write_table(pa.table({"keyword_id": [1], "text": ["x"]}), part / "part-1.parquet")
    with pytest.raises(SchemaError, match=r"part-1\.parquet: required column 'keyword' is missing"):
        plan_chunks(partition_files(part), KEYWORDS, DT, 10, 10)
    (part / "part-1.parquet").write_text("not parquet")
    with pytest.raises(SchemaError, match=r"part-1\.parquet: not a readable Parquet file"):
        plan_chunks(partition_files(part), KEYWORDS, DT, 10, 10)
    pq.write_table(pa.table({"keyword_id": [1.5], "keyword": ["x"]}), part / "part-1.parquet")
    with pytest.raises(SchemaError, match="column 'keyword_id' has type double"):
        plan_chunks(partition_files(part), KEYWORDS, DT, 10, 10)
    empty = partition_dir(tmp_path, KEYWORDS, "2024-01-02")
    empty.mkdir(parents=True)
    zero_rows = pa.table({"keyword_id": pa.array([], pa.int64()), "keyword": pa.array([], pa.string())})
    pq.write_table(zero_rows, empty / "part-0.parquet")
    assert plan_chunks(partition_files(empty), KEYWORDS, "2024-01-02", 10, 10) == []
    with pytest.raises(ConfigError, match="max_chunks"):
        plan_chunks([], KEYWORDS, DT, 10, 2000)
    with pytest.raises(ConfigError, match="dt must be a date"):
        partition_dir(tmp_path, KEYWORDS, "yesterday")


def test_embed_chunk_stages_valid_rows_and_dead_letters_the_rest(
    server, repository, tmp_path, monkeypatch, caplog
):
    part = partition_dir(tmp_path, KEYWORDS, DT)
    part.mkdir(parents=True)
    keywords = [
        "東京 ラーメン",
        None,
        "",
        "   ",
        "北海道 旅行",
        "長い " * 400,
        "dup first",
        "dup second",
        "ok",
    ]
    ids = [1, 2, 3, 4, None, 6, 7, 7, 9]
    pq.write_table(
        pa.table(
            {
                "keyword_id": pa.array(ids, pa.int64()),
                "keyword": keywords,
                "category": ["food"] * 9,
                "extra_column": list(range(9)),
            }
        ),
        part / "part-0.parquet",
        row_group_size=4,
    )
    (chunk,) = plan_chunks(partition_files(part), KEYWORDS, DT, 100, 10)
    monkeypatch.setenv("EMBEDDING_PROGRESS_SECONDS", "0")  # a progress line after every slice
    caplog.set_level(logging.INFO, logger="embedding_pipeline")
    with EmbeddingClient(settings_for(server, repository, model_name="tiny_bert", batch_size=2)) as client:
        output = embed_chunk(
            chunk,
            KEYWORDS,
            "keyword",
            client,
            tmp_path / "run",
            limits=EmbedLimits(read_batch_rows=4, embed_batch_rows=3),
        )
        result = output.result
        assert (result.rows_in, result.indexed, result.dead_lettered) == (9, 4, 5) and result.balanced
        assert result.dead_letters_by_reason == {
            "null_text": 1,
            "empty_text": 2,
            "missing_id": 1,
            "duplicate_id": 1,
        }
        assert result.extra["truncated"] == 1
        # The task log: progress while it works, one summary line at the end.
        lines = [
            r.getMessage() for r in caplog.records if r.getMessage().startswith(f"embed {chunk.chunk_id}")
        ]
        assert re.fullmatch(
            rf"embed {chunk.chunk_id}: [0-9]/9 rows \(\d+%\), [0-9,]+ rows/s, ETA \d+s", lines[0]
        )
        assert lines[-1].startswith(
            f"embed {chunk.chunk_id}: 9 rows in, 4 embedded, 0 fields updated, 0 unchanged, 0 deleted, "
            "5 dead-lettered"
        ), lines
        batches = list(iter_staged(output.staged_path, 100))
        staged_ids = [i for b in batches for i in b.ids]
        assert staged_ids == ["1", "6", "7", "9"]
        assert staged_metadata(output.staged_path)["model_name"] == "tiny_bert"
        vectors = np.vstack([b.vectors for b in batches])
        expected = client.embed(["東京 ラーメン", "長い " * 400, "dup first", "ok"], role="passage").vectors
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert batches[0].payloads[0] == {"category": "food", "dt": DT}
    letters = read_dead_letters(tmp_path / "run", "embed")
    assert len(letters) == 5 and {letter["stage"] for letter in letters} == {"embed"}
    duplicate = next(letter for letter in letters if letter["reason"] == "duplicate_id")
    assert duplicate["record_id"] == "7" and duplicate["row"]["keyword"] == "dup second"
    assert all(letter["row"]["dt"] == DT and letter["timestamp"] for letter in letters)


def test_ids_a_store_would_refuse_are_dead_lettered_before_any_store_is_written(server, repository, tmp_path):
    """Elasticsearch refuses an ``_id`` over 512 bytes; Qdrant would take it (its point id is a
    uuid5). Caught when embedding, such a row is staged for no store, so the stores never disagree
    on which keywords exist. Bytes count, not characters: 300 x "é" is 600 bytes."""
    part = partition_dir(tmp_path, KEYWORDS, DT)
    part.mkdir(parents=True)
    ids = ["k1", "x" * 600, "k3", "é" * 300, "y" * 512]
    pq.write_table(
        pa.table({"keyword_id": ids, "keyword": ["東京", "大阪", "札幌", "福岡", "那覇"]}), part / "p.parquet"
    )
    (chunk,) = plan_chunks(partition_files(part), KEYWORDS, DT, 100, 10)
    with EmbeddingClient(settings_for(server, repository, model_name="tiny_bert")) as client:
        output = embed_chunk(chunk, KEYWORDS, "keyword", client, tmp_path / "run")
    assert output.result.dead_letters_by_reason == {"id_too_long": 2} and output.result.balanced
    assert [i for b in iter_staged(output.staged_path, 100) for i in b.ids] == ["k1", "k3", "y" * 512]
    letters = read_dead_letters(tmp_path / "run", "embed")
    assert sorted(len(letter["record_id"]) for letter in letters) == [300, 600]
    assert all("600 bytes" in letter["error"] for letter in letters)


_KILLABLE_EMBED = """
import json, sys
from embedding_pipeline.runs.partitions import KEYWORDS, Chunk
from embedding_pipeline.serving.client import EmbeddingClient
from embedding_pipeline.settings import ServerSettings
from embedding_pipeline.stages.embed import EmbedLimits, embed_chunk
settings = ServerSettings.from_env().with_overrides(model_name="minilm")
with EmbeddingClient(settings) as client:
    embed_chunk(Chunk.from_xcom(json.loads(sys.argv[1])), KEYWORDS, "keyword", client, sys.argv[2],
                limits=EmbedLimits(embed_batch_rows=128))
"""


def test_a_killed_embed_task_resumes_from_its_last_staged_slice(server, repository, tmp_path):
    """A task process SIGKILLed mid-chunk (as an OOM kill or a lost worker does); its retry embeds
    only the slices the first attempt did not finish, and stages exactly what an uninterrupted
    attempt stages."""
    import os
    import signal
    import subprocess
    import sys
    import time

    part = partition_dir(tmp_path, KEYWORDS, DT)
    _write(part / "part-0.parquet", 3000, 1000)
    (chunk,) = plan_chunks(partition_files(part), KEYWORDS, DT, 5000, 10)
    run_dir = tmp_path / "run"
    env = {
        **os.environ,
        "EMBEDDING_MODEL_REPOSITORY": str(repository),
        "EMBEDDING_SERVER_GRPC_PORT": str(server.grpc_port),
        "EMBEDDING_SERVER_HTTP_PORT": str(server.http_port),
    }
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLABLE_EMBED, json.dumps(chunk.to_xcom()), str(run_dir)], env=env
    )
    slices = run_dir / "staged" / f"{chunk.chunk_id}.slices"
    deadline = time.monotonic() + 120
    while len(list(slices.glob("*.parquet"))) < 4 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    done = len(list(slices.glob("*.parquet")))
    assert 4 <= done < 3000 // 128, f"the first attempt finished {done} slices before the kill"
    assert not (run_dir / "staged" / f"{chunk.chunk_id}.parquet").exists()

    limits = EmbedLimits(embed_batch_rows=128)
    with EmbeddingClient(settings_for(server, repository, model_name="minilm")) as client:
        retried = embed_chunk(chunk, KEYWORDS, "keyword", client, run_dir, limits=limits)
        clean = embed_chunk(chunk, KEYWORDS, "keyword", client, tmp_path / "clean", limits=limits)
    extra = retried.result.extra
    assert extra["resumed_rows"] >= done * 128 and extra["resumed_rows"] % 128 == 0
    assert extra["embedded"] == 3000 and retried.result.balanced
    assert clean.result.extra["resumed_rows"] == 0
    assert not slices.exists()  # kept only until the chunk is staged
    got, want = (list(iter_staged(o.staged_path, 4096)) for o in (retried, clean))
    assert [b.ids for b in got] == [b.ids for b in want]
    np.testing.assert_allclose(
        np.vstack([b.vectors for b in got]), np.vstack([b.vectors for b in want]), atol=1e-6
    )


def test_rows_the_model_returns_nan_for_are_dead_lettered_and_not_staged(server, repository, tmp_path):
    """A model that returns NaN or infinity for some rows: those rows go to the dead letter
    (``non_finite_vector``), the rest is staged. The vectors come from a slice an earlier attempt
    of the task kept (the resume path reads them back as they were), so the server's real output
    is replaced for these rows without touching the client."""
    from embedding_pipeline.runs.staging import ResumeSlices

    part = partition_dir(tmp_path, KEYWORDS, DT)
    _write(part / "part-0.parquet", 6, 6)
    (chunk,) = plan_chunks(partition_files(part), KEYWORDS, DT, 100, 10)
    run_dir = tmp_path / "run"
    with EmbeddingClient(settings_for(server, repository, model_name="tiny_bert")) as client:
        ids, texts = [str(i) for i in range(6)], [f"keyword {i}" for i in range(6)]
        vectors = client.embed(texts, role="passage").vectors
        vectors[1, 0], vectors[4, 3] = np.nan, np.inf
        staged = run_dir / "staged" / f"{chunk.chunk_id}.parquet"
        ResumeSlices(staged, "tiny_bert", client.published.version).put(0, ids, texts, vectors, 0)
        output = embed_chunk(chunk, KEYWORDS, "keyword", client, run_dir)
    result = output.result
    assert result.dead_letters_by_reason == {"non_finite_vector": 2} and result.balanced
    assert result.extra["resumed_rows"] == 6 and result.indexed == 4
    assert [i for b in iter_staged(output.staged_path, 100) for i in b.ids] == ["0", "2", "3", "5"]
    assert {letter["record_id"] for letter in read_dead_letters(run_dir, "embed")} == {"1", "4"}


def _result(stage, rows_in, indexed, dead, chunk="c0"):
    return StageResult(stage, chunk, rows_in, indexed, dead, {"x": dead} if dead else {}, None, 1.0)


def test_finalize_checks_the_identity_per_sink_and_the_threshold(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="embedding_pipeline.runs.report")
    embed = [_result("embed", 100, 95, 5)]
    report = finalize(
        tmp_path,
        embed,
        {"es": [_result("es", 95, 94, 1)], "qdrant": [_result("q", 95, 95, 0)]},
        {"dag_id": "d"},
        0.1,
    )
    assert report["status"] == "ok" and report["sinks"]["es"]["dead_letter_ratio"] == 0.06
    assert json.loads((tmp_path / "report.json").read_text())["rows_read"] == 100
    assert "| es | 1 | 95 | 94 | 0 | 0 | 1 |" in (tmp_path / "report.md").read_text()
    # What XCom gets: the identity reads off it, embed dead letters included.
    small = summary(report, tmp_path)
    assert small["embed"] == {"unchanged": 0, "dead_lettered": 5, "dead_letters_by_reason": {"x": 5}}
    for store in ("es", "qdrant"):
        part = small["sinks"][store]
        written_or_kept = part["indexed"] + small["embed"]["unchanged"] + part["deleted"]
        assert written_or_kept + small["embed"]["dead_lettered"] + part["dead_lettered"] == small["rows_read"]
    assert small["sinks"]["es"]["dead_letters_by_reason"] == {"x": 1}
    assert small["report"] == str(tmp_path / "report.md")
    with pytest.raises(AccountingError, match="es received 90 rows but 95 were staged"):
        finalize(tmp_path, embed, {"es": [_result("es", 90, 90, 0)]}, {}, 0.1)
    with pytest.raises(AccountingError, match="es tasks do not balance"):
        finalize(tmp_path, embed, {"es": [_result("es", 95, 90, 1)]}, {}, 0.1)
    with pytest.raises(AccountingError, match=r"dead-letter ratio 0\.0600 exceeds the threshold 0\.05"):
        finalize(tmp_path, embed, {"es": [_result("es", 95, 94, 1)]}, {}, 0.05)
    assert json.loads((tmp_path / "report.json").read_text())["status"] == "failed"
    # The Markdown report is in the log too (the task log, in a DAG run), with its path.
    assert f"run report ({tmp_path / 'report.md'})" in caplog.text
    assert "| es | 1 | 95 | 94 | 0 | 0 | 1 |" in caplog.text


def test_dead_letters_stream_to_disk_not_memory(tmp_path):
    """A task whose every row is bad: its dead letters are counted in memory and spooled to disk."""
    import tracemalloc

    from embedding_pipeline.runs.dead_letter import DeadLetterWriter

    writer = DeadLetterWriter(tmp_path / "run", "embed", "c0000")
    tracemalloc.start()
    for i in range(30_000):
        writer.add(i, "empty_text", "no text", {"keyword_id": i, "keyword": "", "note": "x" * 100})
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1_000_000  # the 30k letters are ~7 MB of JSON
    assert len(writer) == 30_000 and writer.by_reason() == {"empty_text": 30_000}
    path = writer.flush()
    writer.add("late", "too_long", "x")
    writer.flush()
    letters = read_dead_letters(tmp_path / "run", "embed")
    assert path and len(letters) == 30_001 and letters[-1]["record_id"] == "late"
    assert letters[7]["row"]["keyword_id"] == 7
