"""Benchmarks of the model and serving path, each once with ``--quick`` (``bench_smoke``)."""

from __future__ import annotations

import pytest
from bench_smoke import run_quick

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "script",
    [
        "bench_serving.py",
        "bench_client_ceiling.py",
        "bench_int8.py",
        "bench_link_relevance.py",
        "bench_hnsw_recall.py",
        "bench_dag_parse.py",
    ],
)
def test_the_benchmark_runs_quick_and_writes_its_result(script, tmp_path, session_dir):
    report = run_quick(script, tmp_path, session_dir / "bench-models")
    assert report.get("date")
