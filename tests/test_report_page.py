"""Unit: progress lines (a clock the test moves) and the report page rendered from report files
(the run dirs are written here; test_keyword_index_dag.py checks the page of a real run, and
test_airflow_standalone.py the page inside the Airflow UI in a browser)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from embedding_pipeline.runs.accounting import StageResult
from embedding_pipeline.runs.dead_letter import DeadLetterWriter
from embedding_pipeline.runs.plan import run_dir_for
from embedding_pipeline.runs.progress import Progress
from embedding_pipeline.runs.report import build_report, read_report, write_report
from embedding_pipeline.runs.report_page import (
    EXAMPLES_PER_REASON,
    StagePage,
    dead_letter_examples,
    render_page,
    stage_pages,
)
from hypothesis import given, settings
from hypothesis import strategies as st


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_logs_at_most_once_per_interval_with_rate_and_eta(caplog):
    clock = Clock()
    progress = Progress("embed c0001", 10_000, interval_s=5, clock=clock)
    with caplog.at_level(logging.INFO, logger="embedding_pipeline.runs.progress"):
        for _ in range(9):  # 1,000 rows a second, a batch every second
            clock.now += 1
            progress.advance(1_000)
        clock.now += 1
        progress.advance(1_000)  # the end: the task's own summary line says it
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "embed c0001: 5,000/10,000 rows (50%), 1,000 rows/s, ETA 5s",
    ]
    unknown = Progress("relink", None, interval_s=0, clock=clock)
    clock.now += 4
    unknown.advance(200)
    assert unknown.line() == "relink: 200 rows, 50 rows/s"
    slow = Progress("es_index c9", 1_000_000, interval_s=0, clock=clock)
    clock.now += 100
    slow.update(1_000)
    assert slow.line().endswith("10 rows/s, ETA 27h45m")


def test_progress_tracks_batches_as_they_are_consumed():
    clock = Clock()
    progress = Progress("link", 30, interval_s=60, clock=clock)
    seen = []
    for _batch in progress.track(([1] * n for n in (10, 10, 10)), len):
        seen.append(progress.done)
        clock.now += 1
    assert seen == [0, 10, 20] and progress.done == 30


def _result(stage: str, chunk: str, rows: int, dead: int, seconds: float) -> StageResult:
    return StageResult(stage, chunk, rows, indexed=rows - dead, dead_lettered=dead, seconds=seconds)


def _write_run(run_dir: Path, reason: str, text: str, letters: int = 5) -> dict:
    """A finalized keyword run of two embed chunks, with ``letters`` dead letters of ``reason``."""
    writer = DeadLetterWriter(run_dir, "embed", "c0000")
    for i in range(letters):
        writer.add(f"id{i}", reason, f"error {i} {text}", {"keyword": text, "keyword_id": f"id{i}"})
    embed = [_result("embed", "c0000", 100, letters, 2.0), _result("embed", "c0001", 50, 0, 0.5)]
    embed[0].dead_letters_by_reason = writer.by_reason()
    embed[0].dead_letter_path = writer.flush()
    staged = 150 - letters
    sinks = {
        "qdrant": [_result("qdrant", "c0000", staged - 50, 0, 1.0), _result("qdrant", "c0001", 50, 0, 1.0)],
        "es": [_result("es", "c0000", staged - 50, 0, 1.0), _result("es", "c0001", 50, 0, 1.0)],
    }
    report = build_report(embed, sinks, {"dag_id": "keyword_index", "stage": "keyword_index"}, 0.5)
    write_report(run_dir, report)
    return report


@pytest.mark.parametrize("storage", ["local", "object storage"])
def test_page_shows_the_reports_numbers_and_where_rows_went(tmp_path, monkeypatch, storage):
    """Run files on local disk, or behind a URL (``EMBEDDING_STAGING_URL``, here ``file://``: the
    same ObjectStoragePath code that reads s3:// or gs://)."""
    monkeypatch.setenv("EMBEDDING_PIPELINE_HOME", str(tmp_path))
    if storage == "object storage":
        monkeypatch.setenv("EMBEDDING_STAGING_URL", f"file://{tmp_path}/bucket/runs")
    run_id = "manual__2024-01-01T00:00:00+00:00"
    chain = run_dir_for("embedding_chain", run_id, "keyword_index")
    report = _write_run(chain, "text_too_long", "x" * 300)
    (run_dir_for("embedding_chain", run_id, "product_link")).mkdir(parents=True)  # still running
    pages = stage_pages("embedding_chain", run_id)
    assert [(p.stage, p.report is not None) for p in pages] == [
        ("keyword_index", True),
        ("product_link", False),
    ]
    page = render_page("embedding_chain", run_id, pages)
    shown = dict(re.findall(r'data-field="([^"]+)" data-value="([^"]*)"', page))
    assert shown["keyword_index.embed.dead_lettered"] == "5"
    assert shown["keyword_index.sinks.es.indexed"] == str(report["sinks"]["es"]["indexed"]) == "145"
    assert shown["keyword_index.embed.rows_per_task_second"] == str(report["embed"]["rows_per_task_second"])
    assert 'data-field="keyword_index.dead_letters_by_reason.text_too_long">5<' in page
    assert page.count("<li><code>id") == EXAMPLES_PER_REASON  # examples, not all five
    assert "No report yet: the stage has not finished." in page
    assert str(chain / "dead_letters" / "embed-c0000.jsonl") in page
    # The bars: each step's parts add up to the rows read (the identity, drawn).
    assert page.count("<svg") == 4  # funnel + one throughput chart per step
    # A stage DAG's run shows that stage only; a DAG without stages says so.
    assert stage_pages("product_link", run_id) == []
    assert "wrote no pipeline report" in render_page("embedding_model_publish", run_id, [])


@settings(max_examples=40, deadline=None)
@given(
    reason=st.text(min_size=1, max_size=30).filter(lambda r: r.strip()),
    text=st.text(max_size=120),
)
def test_whatever_a_row_or_reason_holds_the_page_shows_it_as_text(tmp_path_factory, reason, text):
    """Dead-letter reasons and row texts come from the data: they are shown escaped, never as
    markup (an HTML-looking keyword cannot inject a tag or attribute into the UI)."""
    run_dir = tmp_path_factory.mktemp("run")
    hostile = f"<script>alert(1)</script>{text}\" onload='x'"
    _write_run(run_dir, f"<b>{reason}", hostile, letters=1)

    page = render_page(
        "d", "r", [StagePage("keyword_index", run_dir, read_report(run_dir), dead_letter_examples(run_dir))]
    )
    assert "<script>" not in page and "<b><" not in page and "onload='x'" not in page
    assert "&lt;script&gt;" in page


def test_dead_letter_examples_read_a_bounded_number_of_lines(tmp_path, monkeypatch):
    import embedding_pipeline.runs.report_page as report_page

    folder = tmp_path / "dead_letters"
    folder.mkdir()
    lines = [json.dumps({"reason": "a", "stage": "embed", "error": "e", "record_id": i}) for i in range(50)]
    lines += [json.dumps({"reason": "b", "stage": "embed", "error": "e", "record_id": "late"})]
    (folder / "embed-c0.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(report_page, "MAX_SCANNED_LETTERS", 20)
    examples = dead_letter_examples(tmp_path)
    assert set(examples) == {"a"} and len(examples["a"]) == EXAMPLES_PER_REASON
    monkeypatch.setattr(report_page, "MAX_SCANNED_LETTERS", 100)
    assert [e["record_id"] for e in dead_letter_examples(tmp_path)["b"]] == ["late"]
