"""README command 1 (``make demo`` = ``embedding-pipeline demo``) end to end, on a small sample:
a real subprocess with its own home, model repository and data, the real MiniLM, the local
inference server and the ES emulator it starts itself. It must print the report with real linked
keywords, and stop every process it started."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_demo_runs_the_whole_chain_and_prints_linked_keywords(tmp_path):
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("ES_", "QDRANT_", "EMBEDDING_", "AIRFLOW"))
    }
    env.update(
        EMBEDDING_PIPELINE_HOME=str(tmp_path / "var"),
        EMBEDDING_DATA_ROOT=str(tmp_path / "data"),
        EMBEDDING_MODEL_REPOSITORY=str(tmp_path / "model_repository"),
        HF_HUB_OFFLINE="1",
    )
    command = [
        sys.executable,
        "-m",
        "embedding_pipeline.cli",
        "demo",
        "--keywords",
        "800",
        "--products",
        "90",
        "--dates",
        "2024-01-01",
        "2024-01-02",
        "--bad-rate",
        "0.03",
        "--top-k",
        "10",
    ]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output[-4000:]
    assert "keyword_index: 800 rows read, status ok" in output
    assert "product_link: 90 rows read, status ok" in output
    injected = re.findall(r"\(the generator injected (\d+)\)", output)
    reasons = re.findall(r"dead letters by reason: ([^(]*)\(", output)
    assert len(injected) == 2 and int(injected[0]) > 0
    counted = sum(int(n) for n in re.findall(r" (\d+)", reasons[0]))
    assert counted == int(injected[0])
    # Three products, each with five ranked keywords read back from ES.
    assert output.count("keywords  10 (showing 5)") == 3
    assert len(re.findall(r"^\s+5\s+[01]\.\d{4}\s+\S", output, flags=re.MULTILINE)) == 3
    assert "every process started here was stopped" in output
    started = [int(pid) for pid in re.findall(r"started .*\(pid (\d+)\)", output)]
    assert len(started) == 2  # the ES emulator and the inference server
    assert not [pid for pid in started if _alive(pid)]
