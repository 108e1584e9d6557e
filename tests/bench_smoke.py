"""Running a benchmark's ``--quick`` mode as a test: every benchmark runs once per CI run on tiny
inputs, so none can rot unnoticed. Speed is not asserted (benchmarks measure it; tests never fail
on wall time): a run must finish, exit 0 and write its dated result - into a temporary directory
(``EMBEDDING_BENCH_RESULTS``), never into ``bench/results``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICK_TIMEOUT_S = 1200


def run_quick(script: str, results: Path, models: Path) -> dict:
    """``bench/<script> --quick``; the JSON result it wrote (exactly one). ``models``: published
    models shared by the smoke runs of one test process (each model is exported once)."""
    env = {
        **os.environ,
        "EMBEDDING_BENCH_RESULTS": str(results),
        "EMBEDDING_BENCH_MODELS": str(models),
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT / "include"), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=QUICK_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"{script} --quick failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    written = sorted(results.glob("*-quick.json"))
    assert len(written) == 1, f"{script} wrote {written} into {results}"
    assert written[0].with_suffix(".md").read_text().strip(), f"{script}: empty markdown result"
    return json.loads(written[0].read_text())
