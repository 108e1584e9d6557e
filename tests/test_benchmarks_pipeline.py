"""Benchmarks of the stores, stages and executors, each once with ``--quick`` (``bench_smoke``).
A file of its own so pytest-xdist runs it beside ``test_benchmarks_models.py``."""

from __future__ import annotations

import pytest
from bench_smoke import run_quick

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "script",
    [
        "bench_qdrant_engines.py",
        "bench_keyword_index.py",
        "bench_product_link.py",
        "bench_incremental.py",
        "bench_scale.py",
        "bench_executors.py",
    ],
)
def test_the_benchmark_runs_quick_and_writes_its_result(script, tmp_path, session_dir):
    report = run_quick(script, tmp_path, session_dir / "bench-models")
    assert report.get("date")
