"""The ledger's database, for real: SQLite (the embedded default) and a PostgreSQL server started by
this module. The merge rule for any sequence of commits, change logs, atomic commits (also under
SIGKILL), leases between processes, unreachable databases, and the import of the Parquet state of
earlier releases."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from embedding_pipeline.local.postgres import PostgresServer
from embedding_pipeline.runs.state import (
    SCHEMA,
    ChangeLog,
    GenerationBusyError,
    IndexState,
    change_logs,
    delta_table,
    forget_generations,
    known_states,
)
from embedding_pipeline.runs.state_db import StateAccessError, StateSettings, StateUnavailableError
from embedding_pipeline.runs.state_migrate import migrate_parquet_state
from embedding_pipeline.serving.process import free_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

IDENTITY = {"model_name": "m", "model_version": 1, "role": "passage"}
PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def postgres(tmp_path_factory) -> PostgresServer:
    with PostgresServer(tmp_path_factory.mktemp("pg") / "postgres.log", databases=("state",)) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path) -> StateSettings:
    if request.param == "sqlite":
        return StateSettings(f"sqlite:///{tmp_path / 'state.db'}", "test")
    return StateSettings(request.getfixturevalue("postgres").url("state"), "test")


def fresh(db: StateSettings, table: str = "keywords") -> IndexState:
    return IndexState.of(db, table, {"qdrant": f"kw-{uuid.uuid4().hex[:8]}-g1"})


rows_strategy = st.lists(
    st.tuples(
        st.sampled_from([f"id{i}" for i in range(12)]),
        st.integers(20240101, 20240106),
        st.integers(-5, 5),
        st.booleans(),
    ),
    max_size=15,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(commits=st.lists(rows_strategy, min_size=1, max_size=5))
def test_any_sequence_of_commits_keeps_the_latest_version_of_every_id(db, commits):
    """Per id the greatest ``dt_version`` wins; on a tie the later row (of a commit, or of the
    later commit); the live count follows the tombstones."""
    state = fresh(db)
    expected: dict[str, tuple[int, int, bool]] = {}
    for commit in commits:
        state.commit(
            delta_table([(i, v, h, h, d, "delete" if d else "upsert") for i, v, h, d in commit]), IDENTITY
        )
        for row_id, version, h, deleted in commit:
            if row_id not in expected or version >= expected[row_id][0]:
                expected[row_id] = (version, h, deleted)
    found = state.lookup([f"id{i}" for i in range(12)])
    assert {i: (p.dt_version, p.text_hash, p.deleted) for i, p in found.items()} == expected
    live = {i for i, (_, _, deleted) in expected.items() if not deleted}
    assert state.live_count() == len(live)
    assert set(state.live()["id"].to_pylist()) == live
    assert state.identity() == {"model_name": "m", "model_version": "1", "role": "passage"}


def test_change_logs_record_each_commit_after_the_first_fill_and_answer_since(db):
    state, log = fresh(db), f"log-{uuid.uuid4().hex[:8]}"
    first = state.commit(delta_table([("a", 1, 1, 1, False, "upsert")]), IDENTITY, change_log=log)
    assert first is None  # a generation's first fill: the product stage relinks all anyway
    n1 = state.commit(
        delta_table([("a", 2, 2, 1, False, "upsert"), ("b", 2, 1, 1, False, "upsert")]),
        IDENTITY,
        change_log=log,
    )
    n2 = state.commit(
        delta_table([("a", 3, 2, 1, True, "delete"), ("c", 3, 1, 1, False, "unchanged")]),
        IDENTITY,
        change_log=log,
    )
    assert (n1, n2) == (1, 2)
    changes, end = ChangeLog(db, log).since(0)
    assert dict(zip(changes["id"].to_pylist(), changes["change"].to_pylist(), strict=True)) == {
        "a": "delete",
        "b": "upsert",
    }
    assert end == 2
    changes, end = ChangeLog(db, log).since(2)
    assert (changes.num_rows, end) == (0, 2)
    assert change_logs(db)[log] == 2


def test_a_failed_commit_leaves_rows_metadata_and_log_as_they_were(db):
    """Rows, metadata and the log entry are one transaction: a row the database rejects half-way
    through (NULL version, after a full batch) writes none of them."""
    state, log = fresh(db), f"log-{uuid.uuid4().hex[:8]}"
    state.commit(delta_table([("a", 1, 1, 1, False, "upsert")]), IDENTITY, {"applied": "x#1"}, change_log=log)
    good = [(f"n{i}", 2, 1, 1, False, "upsert") for i in range(6000)]
    bad = pa.concat_tables([delta_table(good), delta_table([("zz", 2, 1, 1, False, "upsert")])])
    bad = bad.set_column(1, "dt_version", pa.array([2] * 6000 + [None], pa.int32()))
    with pytest.raises(Exception, match=r"(?i)null|not-null|constraint"):
        state.commit(bad, IDENTITY, {"applied": "x#2"}, change_log=log)
    assert state.lookup(["n0", "n5999"]) == {}
    assert state.metadata() == {"applied": "x#1"}
    assert state.live_count() == 1
    assert ChangeLog(db, log).latest() == 0


def test_forgetting_a_generation_removes_its_state_and_its_collections_change_log(db):
    name = f"kw-{uuid.uuid4().hex[:8]}"
    old = IndexState.of(db, "keywords", {"qdrant": f"{name}-g1", "es": f"{name}-g1"})
    kept = IndexState.of(db, "keywords", {"qdrant": f"{name}-g2", "es": f"{name}-g2"})
    for state, log in ((old, f"{name}-g1"), (kept, f"{name}-g2")):
        state.commit(delta_table([("a", 1, 1, 1, False, "upsert")]), IDENTITY, change_log=log)
        state.commit(delta_table([("a", 2, 2, 1, False, "upsert")]), IDENTITY, change_log=log)
    assert forget_generations(db, [("qdrant", f"{name}-g1"), ("es", f"{name}-g1")]) == 2
    keys = {s["key"] for s in known_states(db)}
    assert old.key not in keys and kept.key in keys
    assert f"{name}-g1" not in change_logs(db) and change_logs(db)[f"{name}-g2"] == 1
    assert old.lookup(["a"]) == {} and kept.lookup(["a"])["a"].dt_version == 2


def test_a_lease_refuses_a_second_run_and_is_taken_over_when_its_holder_ended(db):
    state = fresh(db)
    state.acquire("keyword_index/run-1")
    state.acquire("keyword_index/run-1")  # a retry of the same run
    with pytest.raises(GenerationBusyError, match=r"held by run keyword_index/run-1 .*state release"):
        IndexState(db, state.key).acquire("embedding_chain/run-2")
    # The holder failed: Airflow says it no longer runs, so the next run takes the lease over...
    ended = StateSettings(db.url, db.source, run_active=lambda owner: owner != "keyword_index/run-1")
    IndexState(ended, state.key).acquire("embedding_chain/run-2")
    # ... and the first run's late commit is refused, committing nothing.
    with pytest.raises(GenerationBusyError, match=r"held by run embedding_chain/run-2.*nothing of this run"):
        state.commit(delta_table([("a", 1, 1, 1, False, "upsert")]), IDENTITY, owner="keyword_index/run-1")
    assert state.lookup(["a"]) == {}
    state.commit(delta_table([("b", 1, 1, 1, False, "upsert")]), IDENTITY, owner="embedding_chain/run-2")
    state.acquire("keyword_index/run-3")  # the commit released it
    assert state.release("keyword_index/run-3") and not state.release()


def _lease_and_commit(url: str, key: str, owner: str, start: float, queue) -> None:
    state = IndexState(StateSettings(url, "test"), key)
    time.sleep(max(0.0, start - time.time()))
    try:
        state.acquire(owner)
        time.sleep(0.5)
        rows = [(f"{owner}-{i}", 1, 1, 1, False, "upsert") for i in range(2000)]
        state.commit(
            delta_table([*rows, ("shared", 1, hash(owner) % 1000, 1, False, "upsert")]), IDENTITY, owner=owner
        )
        queue.put((owner, "ok"))
    except GenerationBusyError as exc:
        queue.put((owner, str(exc)))


def _commit_without_lease(url: str, key: str, name: str, version: int, start: float, queue) -> None:
    state = IndexState(StateSettings(url, "test"), key)
    time.sleep(max(0.0, start - time.time()))
    rows = [(f"{name}-{i}", version, 1, 1, False, "upsert") for i in range(5000)]
    state.commit(delta_table([*rows, ("shared", version, version, 1, False, "upsert")]), IDENTITY)
    queue.put(name)


def _in_processes(target, args_list) -> list:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=target, args=(*args, queue)) for args in args_list]
    for process in processes:
        process.start()
    results = [queue.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    return results


def test_two_processes_writing_one_generation_at_once_one_is_refused_naming_the_other(db):
    state = fresh(db)
    state.commit(delta_table([("seed", 1, 1, 1, False, "upsert")]), IDENTITY)  # tables exist
    start = time.time() + 3
    results = dict(
        _in_processes(_lease_and_commit, [(db.url, state.key, f"dag/run-{n}", start) for n in (1, 2)])
    )
    winners = [owner for owner, result in results.items() if result == "ok"]
    assert len(winners) == 1, results
    loser = next(owner for owner in results if owner != winners[0])
    assert f"held by run {winners[0]}" in results[loser]
    assert state.live_count() == 1 + 2000 + 1
    assert len(state.lookup(f"{winners[0]}-{i}" for i in range(2000))) == 2000
    assert state.lookup(f"{loser}-{i}" for i in range(2000)) == {}


def test_concurrent_commits_without_leases_lose_no_update(db):
    """Commits serialise on the generation's row: both land, and the shared id keeps the greater
    version whatever order they ran in."""
    state = fresh(db)
    state.commit(delta_table([("seed", 1, 1, 1, False, "upsert")]), IDENTITY)
    start = time.time() + 3
    _in_processes(
        _commit_without_lease, [(db.url, state.key, "a", 5, start), (db.url, state.key, "b", 7, start)]
    )
    assert state.live_count() == 1 + 5000 + 5000 + 1
    assert state.lookup(["shared"])["shared"].dt_version == 7


CRASH_LOOP = textwrap.dedent(
    """
    import sys
    from embedding_pipeline.runs.state import IndexState, delta_table
    from embedding_pipeline.runs.state_db import StateSettings
    state = IndexState(StateSettings(sys.argv[1], "test"), sys.argv[2])
    ids = [f"k{i}" for i in range(20000)]
    n = state.metadata().get("n", -1) + 1
    while True:
        rows = [(i, 100 + n, n, 1, False, "upsert") for i in ids]
        state.commit(delta_table(rows), {"model_name": "m"}, {"n": n}, change_log=sys.argv[3])
        print(n, flush=True)
        n += 1
    """
)


def test_a_commit_killed_at_any_moment_leaves_state_and_change_log_in_agreement(db, tmp_path):
    """SIGKILL a process that commits in a loop (rows, metadata and change log entry of each
    commit) at random moments: afterwards every row, the metadata and the log say the same number
    of commits happened - a crash can lose a commit, never part of one."""
    state, log = fresh(db), f"log-{uuid.uuid4().hex[:8]}"
    script = tmp_path / "crash_loop.py"
    script.write_text(CRASH_LOOP)
    env = {**os.environ, "PYTHONPATH": str(PROJECT / "include")}
    rng = random.Random(7)
    for _ in range(4):
        process = subprocess.Popen(
            [sys.executable, str(script), db.url, state.key, log], env=env, stdout=subprocess.PIPE, text=True
        )
        process.stdout.readline()  # one commit landed in this process: the next is under way
        time.sleep(rng.uniform(0.0, 1.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
        n = state.metadata()["n"]
        versions = {p.dt_version for p in state.lookup(f"k{i}" for i in range(20000)).values()}
        assert versions == {100 + n}
        assert ChangeLog(db, log).latest() == n  # commit 0 was the first fill: not logged
        assert state.live_count() == 20000


def test_an_unreachable_or_refusing_database_fails_with_one_line_naming_it(postgres):
    closed = StateSettings(
        f"postgresql+psycopg://u:secret@127.0.0.1:{free_port()}/state", "Connection 'embedding_state'"
    )
    with pytest.raises(StateUnavailableError) as failed:
        IndexState.of(closed, "keywords", {"qdrant": "kw-g1"})
    message = str(failed.value)
    assert "Connection 'embedding_state'" in message and "127.0.0.1" in message and "secret" not in message
    wrong = StateSettings(
        postgres.url("state").replace(postgres.password, "wrong"), "Connection 'embedding_state'"
    )
    with pytest.raises(StateAccessError, match=r"password authentication failed.*credentials") as failed:
        IndexState.of(wrong, "keywords", {"qdrant": "kw-g1"})
    assert "wrong" not in str(failed.value)


def test_the_parquet_state_of_earlier_releases_is_imported_once_with_its_positions(db, tmp_path):
    root = tmp_path / "legacy"
    name = f"kw-{uuid.uuid4().hex[:8]}-g1"
    state_file = root / "products" / f"es=p-g1,qdrant=p-{name}.parquet"
    state_file.parent.mkdir(parents=True)
    table = pa.table(
        {
            "id": ["p1", "p2"],
            "dt_version": [1, 2],
            "text_hash": [5, 6],
            "fields_hash": [7, 8],
            "deleted": [False, True],
        },
        schema=SCHEMA,
    )
    meta = {"model_name": "m", "model_version": "1", "role": "query", "keyword_changes": f"{name}#2"}
    pq.write_table(table.replace_schema_metadata(meta), state_file)
    for number, rows in ((1, [("k1", "upsert")]), (2, [("k1", "delete"), ("k2", "update")])):
        path = root / "changes" / name / f"{number:08d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id": [r[0] for r in rows], "change": [r[1] for r in rows]}), path)

    counts = migrate_parquet_state(db, root)
    assert counts == {"states": 1, "rows": 2, "logs": 1, "log_entries": 2}
    state = IndexState.of(db, "products", {"qdrant": f"p-{name}", "es": "p-g1"})
    assert state.identity() == {"model_name": "m", "model_version": "1", "role": "query"}
    assert state.metadata() == {"keyword_changes": f"{name}#2"}
    assert state.live_count() == 1 and state.lookup(["p2"])["p2"].deleted
    log = ChangeLog(db, name)
    assert log.latest() == 2 and log.since(1)[0].to_pylist() == [
        {"id": "k1", "change": "delete"},
        {"id": "k2", "change": "update"},
    ]
    assert not list(root.rglob("*.parquet")) and len(list(root.rglob("*.parquet.migrated"))) == 3
    assert migrate_parquet_state(db, root) == {"states": 0, "rows": 0, "logs": 0, "log_entries": 0}
