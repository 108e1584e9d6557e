"""README command 1 (``make demo`` = ``embedding-pipeline demo``) end to end, on a small sample:
a real subprocess with its own home, model repository and data, the real MiniLM, the local
inference server and the ES emulator it starts itself. It must print the report with real linked
keywords, and stop every process it started."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _demo(
    tmp_path: Path, output: Path | None = None, args: tuple[str, ...] = (), **extra_env: str
) -> subprocess.Popen:
    """The demo as a user starts it: own session (a terminal's process group), SIGINT not ignored
    (a test runner in the background may have inherited SIG_IGN, which Python would keep)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("ES_", "QDRANT_", "EMBEDDING_", "AIRFLOW"))
    }
    env.update(
        **extra_env,
        EMBEDDING_PIPELINE_HOME=str(tmp_path / "var"),
        EMBEDDING_DATA_ROOT=str(tmp_path / "data"),
        EMBEDDING_MODEL_REPOSITORY=str(tmp_path / "model_repository"),
        HF_HUB_OFFLINE="1",
    )
    command = [
        sys.executable,
        "-m",
        "embedding_pipeline.cli.main",
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
        *args,
    ]
    return subprocess.Popen(
        command,
        env=env,
        stdout=output.open("w") if output else subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _succeeded_tasks(database: Path) -> list[datetime]:
    """End times of the chain's successful task instances so far (none while the DB is not there)."""
    if not database.exists():
        return []
    with sqlite3.connect(database) as db:
        try:
            rows = db.execute(
                "SELECT end_date FROM task_instance WHERE dag_id = 'embedding_chain' AND state = 'success'"
            ).fetchall()
        except sqlite3.OperationalError:  # not migrated yet, or locked by the run
            return []
    return [datetime.fromisoformat(row[0]).replace(tzinfo=UTC) for row in rows]


def _started_pids(output: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"started .*\(pid (\d+)\)", output)]


# Credentials a user may have in the environment: the emulator ignores them and local-mode Qdrant
# does not use its key, but they go through the settings, clients and logs all the same.
SECRETS = {"ES_USERNAME": "demo-user", "ES_PASSWORD": "pw-d3m0-7f3a9c", "QDRANT_API_KEY": "qk-d3m0-51e2b8"}


@pytest.mark.slow
def test_demo_runs_the_whole_chain_and_prints_linked_keywords(tmp_path):
    """The whole demo with credentials in the environment: linked keywords printed, every process
    stopped, and neither secret in its output or in any file it wrote (logs, reports, dead
    letters, the Airflow metadata DB with its XComs and rendered fields, the stores)."""
    process = _demo(tmp_path, **SECRETS)
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output[-4000:]
    secrets = [SECRETS["ES_PASSWORD"], SECRETS["QDRANT_API_KEY"]]
    assert not [secret for secret in secrets if secret in output]
    leaked = [
        (path, secret)
        for path in (tmp_path / "var").rglob("*")
        if path.is_file()
        for secret in secrets
        if secret.encode() in path.read_bytes()
    ]
    assert leaked == []
    assert "keyword_index: 800 rows read, status ok" in output
    assert "product_link: 90 rows read, status ok" in output
    injected = re.findall(r"\(the generator injected (\d+)\)", output)
    reasons = re.findall(r"dead letters by reason: ([^(]*)\(", output)
    assert len(injected) == 2 and int(injected[0]) > 0
    counted = sum(int(n) for n in re.findall(r" (\d+)", reasons[0]))
    assert counted == int(injected[0])
    # Three products, each with five ranked keywords read back from ES.
    assert output.count("keywords  10 (showing 5)") == 3
    assert output.count("search hnsw_ef 256") == 3  # recorded; local mode is exact and says nothing
    assert "Local mode performs exact" not in output
    assert len(re.findall(r"^\s+5\s+[01]\.\d{4}\s+\S", output, flags=re.MULTILINE)) == 3
    # me5-small reads Japanese: the shown keywords are about the product (labels: same category at
    # least), and the sampled lists score well against the generator's labels.
    from embedding_pipeline.sample.labels import grade, read_labels, truths

    products = re.findall(r"^\s+product\s+(\d+)", output, flags=re.MULTILINE)
    shown = re.findall(r"^\s+\d+\s+[01]\.\d{4}\s+.*?\s(\d{14})$", output, flags=re.MULTILINE)
    assert len(products) == 3 and len(shown) == 15, output[-3000:]
    keyword_labels = truths(read_labels(tmp_path / "data" / "keywords"))
    product_labels = truths(read_labels(tmp_path / "data" / "products"))  # ids overlap the keywords
    grades = [grade(product_labels.get(products[i // 5]), keyword_labels.get(k)) for i, k in enumerate(shown)]
    assert sum(g >= 1 for g in grades) >= 12 and 2 in grades, grades
    metrics = re.search(r"relevance labels \((\d+) products\): nDCG@10 ([\d.]+)", output)
    assert metrics and int(metrics[1]) >= 80 and float(metrics[2]) > 0.5, output[-3000:]
    # The fourth night runs incrementally: 8 keyword texts changed, 4 deleted, 8 new (1% of 800).
    assert "[6/6] a fourth night dt=" in output
    night = re.search(
        r"keyword_index: 20 rows read: embedded (\d+), fields only 0, unchanged (\d+), deleted 4", output
    )
    assert night, output[-3000:]
    embedded, unchanged = int(night[1]), int(night[2])
    assert 8 <= embedded <= 16 and embedded + unchanged + 4 == 20  # a swapped text may equal its own
    assert re.search(
        r"product_link: 7 rows read: embedded \d+, fields only 0, unchanged \d+, deleted 1", output
    )
    assert "every process started here was stopped" in output
    started = _started_pids(output)
    assert len(started) == 2  # the ES emulator and the inference server
    assert not [pid for pid in started if _alive(pid)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "to_group", "returncode"),
    [(signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)],
    ids=["ctrl-c", "sigterm"],
)
def test_an_interrupt_mid_chain_stops_at_once_and_leaves_nothing_running(
    tmp_path, signum, to_group, returncode
):
    """Ctrl-C (SIGINT to the terminal's whole foreground group) or a SIGTERM to the demo while the
    chain runs: no task succeeds after the signal (dag.test() in-process turns the interrupt into one
    task's failure and carries on with every runnable task), both services it started are stopped,
    and the run it left is marked failed in the metadata DB, so that a scheduler on that DB is not
    blocked by a max_active_runs=1 run that never ends."""
    log = tmp_path / "demo.log"
    # MiniLM: its export is the chain's first task, 3x quicker than me5-small's; the model is not
    # what this test is about.
    process = _demo(tmp_path, log, ("--source", "minilm", "--name", "minilm"))
    database = tmp_path / "var" / "airflow" / "airflow.db"
    deadline = time.monotonic() + 300
    while not _succeeded_tasks(database):  # the chain is under way
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    sent = datetime.now(UTC)
    if to_group:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    assert process.wait(timeout=120) == returncode, log.read_text()[-3000:]
    output = log.read_text()
    started = _started_pids(output)
    assert len(started) == 2 and not [pid for pid in started if _alive(pid)], output[-3000:]
    assert re.search(r"embedding_chain run \S+ was interrupted: marked failed", output)
    assert "[5/5]" not in output
    with sqlite3.connect(database) as db:
        runs = db.execute("SELECT state FROM dag_run WHERE dag_id = 'embedding_chain'").fetchall()
        unfinished = db.execute(
            "SELECT task_id, state FROM task_instance WHERE dag_id = 'embedding_chain' "
            "AND (state IS NULL OR state NOT IN ('success', 'failed', 'skipped', 'upstream_failed'))"
        ).fetchall()
    assert runs == [("failed",)] and unfinished == []
    # Tasks that succeeded did so before the signal: nothing went on running after it.
    assert max(_succeeded_tasks(database)) < sent
