"""Scale: what a night costs as the index grows, with the ledger in a database (issue 35).

Every measured step runs in its own process (``--child``), which reports its wall time, peak RSS
and the bytes it read (``/proc/self/io`` ``rchar``; for state calls, the bytes read inside them).

1. **Ledger** at each N (``--sizes``, default 1M 3M 10M stored ids; 14-digit ids, random 64-bit
   hashes): the state of N ids, then the look-up of one 50k-id chunk (half known) and the commit
   of a 250k-row delta (100k changed, 50k deleted, 100k new) - in the Parquet state file of the
   previous release (``runs/state.py`` at ``LEGACY_COMMIT``, read from git), in SQLite (the
   embedded default) and in PostgreSQL (a server started here; ``--no-postgres`` leaves it out).
2. **Nights** at each N, stores off: the real ``keyword_index`` tasks - ``plan`` (runs.plan),
   ``prepare`` (runs.changes.prepare_changes: model check, lease, deletes and the guard),
   ``embed`` per chunk (stages.embed.embed_task through the local inference server, with the
   *ceiling* model: MiniLM's contract at no model cost) and ``finalize`` (runs.changes.
   commit_changes) - against a SQLite state of N ids, for a night of a fixed size: 10k changed,
   5k deleted (tombstones), 10k new rows. The same night at every N: the cost that grows with N
   is the state's.
3. **Stores on** (``--stores-n``, default 200k): the whole keyword_index path including the
   embedded Qdrant engine and the ES emulator, through the inline runner (one process): the full
   first run and a 1%-churn night. Larger N with the stores here: see the note in the results.

Run: ``.venv/bin/python bench/bench_scale.py`` (``make bench-scale``; ``--quick``: 20k/50k ids,
stores 5k, no PostgreSQL). Results: ``bench/results/scale-<date>.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
import types
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from harness import (
    BENCH_DIR,
    PROJECT_ROOT,
    embedded_stores,
    md_table,
    pipeline_machine_info,
    scratch_dir,
    write_results,
)

log = logging.getLogger("bench")
LEGACY_COMMIT = "0269784"  # the last release with the Parquet state file
IDENTITY = {"model_name": "ceiling", "model_version": 1, "role": "passage"}
NIGHT = {"changed": 10_000, "deleted": 5_000, "new": 10_000}
DT_SEED, DT_NIGHT = "2024-01-01", "2024-01-02"
NAMES = {"qdrant": "keywords-g1"}


def _id(i: np.ndarray) -> list[str]:
    return [f"{x:014d}" for x in i]


def peak_rss_mb() -> float:
    """This process's peak RSS (``VmHWM``: reset at exec, unlike ``ru_maxrss``, which a child
    inherits from the parent it was forked from)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


# --- the child side: one step per process ------------------------------------------------------


def _legacy_state_module() -> types.ModuleType:
    source = subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), "show", f"{LEGACY_COMMIT}:include/embedding_pipeline/runs/state.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType("legacy_state")
    sys.modules["legacy_state"] = module  # dataclasses look their module up
    exec(compile(source, "legacy_state.py", "exec"), module.__dict__)
    return module


def _delta(ids: list[str], version: int, deleted: bool, change: str, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = len(ids)
    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "dt_version": pa.array(np.full(n, version, np.int32)),
            "text_hash": pa.array(rng.integers(-(2**62), 2**62, n)),
            "fields_hash": pa.array(rng.integers(-(2**62), 2**62, n)),
            "deleted": pa.array(np.full(n, deleted)),
            "change": pa.array([change] * n, pa.string()),
        }
    )


def _state(args: dict[str, Any]) -> Any:
    if args["backend"] == "parquet":
        return _legacy_state_module().IndexState(Path(args["path"]))
    from embedding_pipeline.runs.state import IndexState
    from embedding_pipeline.runs.state_db import StateSettings

    return IndexState.of(StateSettings(args["url"], "bench"), "keywords", args.get("names", NAMES))


def child_seed(args: dict[str, Any]) -> dict[str, Any]:
    """The state after a full run of N ids (ids 0, 2, 4, ... x 7: every other id is new later)."""
    state, n = _state(args), args["n"]
    if args["backend"] == "parquet":
        state.commit(_delta(_id(np.arange(n) * 14), 20240101, False, "upsert", 0), IDENTITY)
    else:
        for start in range(0, n, 1_000_000):
            part = np.arange(start, min(n, start + 1_000_000)) * 14
            state.commit(_delta(_id(part), 20240101, False, "upsert", start), IDENTITY)
    return {"rows": n}


def child_lookup(args: dict[str, Any]) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    ids = _id(rng.choice(args["n"] * 2, min(50_000, args["n"]), replace=False) * 7)  # half are stored
    state = _state(args)
    read, started = _rchar(), time.perf_counter()
    found = state.lookup(ids)
    return {
        "seconds": time.perf_counter() - started,
        "state_bytes_read": _rchar() - read,
        "found": len(found),
    }


def child_commit(args: dict[str, Any]) -> dict[str, Any]:
    rng = np.random.default_rng(2)
    n = args["n"]
    size = min(250_000, n // 2)  # 40% changed, 20% deleted, 40% new
    stored = rng.choice(n, size * 6 // 10, replace=False) * 14
    new = (rng.choice(n, size * 4 // 10, replace=False) * 2 + 1) * 7
    delta = pa.concat_tables(
        [
            _delta(_id(stored[: size * 4 // 10]), 20240102, False, "upsert", 3),
            _delta(_id(stored[size * 4 // 10 :]), 20240102, True, "delete", 4),
            _delta(_id(new), 20240102, False, "upsert", 5),
        ]
    )
    state = _state(args)
    read, started = _rchar(), time.perf_counter()
    if args["backend"] == "parquet":
        state.commit(delta, IDENTITY)
    else:
        state.commit(delta, IDENTITY, change_log=NAMES["qdrant"])
    return {"seconds": time.perf_counter() - started, "state_bytes_read": _rchar() - read}


def _instrument_state(stats: dict[str, float]) -> None:
    """Count the time and bytes read inside the state's calls (the rest of a task is not the state's)."""
    from embedding_pipeline.runs.state import IndexState

    def measured(name: str) -> None:
        original = getattr(IndexState, name)

        def wrapper(self, *a, **kw):
            read, started = _rchar(), time.perf_counter()
            try:
                result = original(self, *a, **kw)
                if name == "live_batches":
                    result = list(result)
                return result
            finally:
                stats["state_seconds"] += time.perf_counter() - started
                stats["state_bytes_read"] += _rchar() - read

        setattr(IndexState, name, wrapper)

    for name in ("lookup", "live_count", "live_batches", "commit", "acquire", "check_identity"):
        measured(name)


def child_task(args: dict[str, Any]) -> dict[str, Any]:
    """One real task of the keyword_index stage (stores off)."""
    from embedding_pipeline.runs.changes import commit_changes, prepare_changes
    from embedding_pipeline.runs.input_kinds import InputSpec
    from embedding_pipeline.runs.partitions import KEYWORDS
    from embedding_pipeline.runs.plan import PlanRules, plan
    from embedding_pipeline.runs.state_db import StateSettings
    from embedding_pipeline.settings import ServerSettings
    from embedding_pipeline.stages.embed import embed_task
    from embedding_pipeline.stages.keywords.stage import EMBED_SPEC

    stats = {"state_seconds": 0.0, "state_bytes_read": 0}
    _instrument_state(stats)
    state = StateSettings(args["url"], "bench")
    spec = InputSpec(tombstone_column="deleted")
    run_dir = Path(args["run_dir"])
    out: dict[str, Any]
    if args["task"] == "plan":
        table = replace(KEYWORDS, tombstone_column="deleted")
        rules = PlanRules(input_kind="delta")
        out = dict(
            plan(table, Path(args["root"]), [DT_NIGHT], run_dir, 50_000, 64, rules, owner="bench/night")
        )
    elif args["task"] == "prepare":
        planned = json.loads(Path(args["planned"]).read_text())
        model = {**IDENTITY, "dim": args["dim"]}
        changes = prepare_changes("keywords", NAMES, model, planned, spec, "the keyword generation", state)
        out = {**model, **changes}
    elif args["task"] == "embed":
        prepared = json.loads(Path(args["prepared"]).read_text())
        server = ServerSettings(**args["server"], model_repository=Path(args["repository"]))
        out = embed_task(args["chunk"], str(run_dir), prepared, EMBED_SPEC, server, state)
    else:  # finalize: the state commit (with the change log) of what the embed tasks decided
        prepared = json.loads(Path(args["prepared"]).read_text())
        embedded = [json.loads(Path(p).read_text()) for p in args["embedded"]]
        out = {
            "merged": commit_changes(
                {**prepared, "change_log": NAMES["qdrant"]}, embedded, str(run_dir), state
            )
        }
    return {"output": out, **stats}  # the task's own result apart from what was measured


def child_main(task: str, payload: Path) -> None:
    args = json.loads(payload.read_text())
    read, started = _rchar(), time.perf_counter()
    result = {"seed": child_seed, "lookup": child_lookup, "commit": child_commit, "task": child_task}[task](
        args
    )
    result["wall_seconds"] = time.perf_counter() - started
    result["bytes_read"] = _rchar() - read
    result["peak_rss_mb"] = peak_rss_mb()
    Path(args["out"]).write_text(json.dumps(result, default=str))


# --- the parent side -----------------------------------------------------------------------------


def in_process(step: str, scratch: Path, **args: Any) -> dict[str, Any]:
    payload = scratch / f"payload-{time.monotonic_ns()}.json"
    out = payload.with_suffix(".out.json")
    payload.write_text(json.dumps({**args, "out": str(out)}, default=str))
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "include")}
    subprocess.run([sys.executable, str(Path(__file__)), "--child", step, str(payload)], check=True, env=env)
    return json.loads(out.read_text())


def write_night(root: Path, n: int, night: dict[str, int] = NIGHT) -> int:
    """The night's delta partition: changed stored ids, tombstones of stored ids, new ids."""
    rng = np.random.default_rng(9)
    stored = rng.choice(n, night["changed"] + night["deleted"], replace=False) * 14
    new = (rng.choice(n, night["new"], replace=False) * 2 + 1) * 7
    ids = _id(np.concatenate([stored, new]))
    deleted = [False] * night["changed"] + [True] * night["deleted"] + [False] * night["new"]
    table = pa.table(
        {
            "keyword_id": ids,
            "keyword": [f"キーワード {i} 新" for i in ids],
            "category": ["food"] * len(ids),
            "deleted": deleted,
        }
    )
    path = root / "keywords" / f"dt={DT_NIGHT}" / "part-0.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return len(ids)


def ledger(sizes: list[int], backends: dict[str, dict[str, Any]], scratch: Path) -> list[dict[str, Any]]:
    results = []
    for n in sizes:
        for backend, where in backends.items():
            if backend == "parquet" and n > 10_000_000:
                continue
            args = {"backend": backend, "n": n, **where(n)}
            seed = in_process("seed", scratch, **args)
            lookup = in_process("lookup", scratch, **args)
            commit = in_process("commit", scratch, **args)
            results.append({"n": n, "backend": backend, "seed": seed, "lookup": lookup, "commit": commit})
            log.info(
                "ledger %s n=%d: lookup %.2fs commit %.2fs", backend, n, lookup["seconds"], commit["seconds"]
            )
    return results


def warm_up(server: Any, repository: Path) -> None:
    from embedding_pipeline.serving.client import EmbeddingClient
    from embedding_pipeline.settings import ServerSettings

    settings = ServerSettings(
        host="127.0.0.1",
        grpc_port=server.grpc_port,
        http_port=server.http_port,
        model_repository=repository,
        model_name="ceiling",
    )
    with EmbeddingClient(settings) as client:
        client.embed([f"キーワード {i}" for i in range(5000)])


def nights(
    sizes: list[int], night: dict[str, int], scratch: Path, server: Any, repository: Path, dim: int
) -> list[dict[str, Any]]:
    results = []
    for n in sizes:
        base = scratch / f"night-{n}"
        url = f"sqlite:///{base / 'state.db'}"
        in_process("seed", scratch, backend="sqlite", n=n, url=url)
        rows = write_night(base / "data", n, night)
        common = {"url": url, "run_dir": str(base / "run"), "root": str(base / "data")}
        tasks = {"plan": in_process("task", scratch, task="plan", **common)}
        planned = tasks["plan"]["output"]
        planned_path = base / "planned.json"
        planned_path.write_text(json.dumps(planned))
        tasks["prepare"] = in_process(
            "task", scratch, task="prepare", planned=str(planned_path), dim=dim, **common
        )
        prepared_path = base / "prepared.json"
        prepared_path.write_text(json.dumps(tasks["prepare"]["output"]))
        server_args = {
            "host": "127.0.0.1",
            "grpc_port": server.grpc_port,
            "http_port": server.http_port,
            "model_name": "ceiling",
        }
        embeds, embedded_paths = [], []
        for chunk in planned["chunks"] + tasks["prepare"]["output"]["delete_chunks"]:
            result = in_process(
                "task",
                scratch,
                task="embed",
                chunk=chunk,
                prepared=str(prepared_path),
                server=server_args,
                repository=str(repository),
                **common,
            )
            embeds.append(result)
            path = base / f"embedded-{len(embeds)}.json"
            path.write_text(json.dumps(result["output"]))
            embedded_paths.append(str(path))
        tasks["embed"] = {
            "wall_seconds": sum(e["wall_seconds"] for e in embeds),
            "peak_rss_mb": max(e["peak_rss_mb"] for e in embeds),
            "state_seconds": sum(e["state_seconds"] for e in embeds),
            "state_bytes_read": sum(e["state_bytes_read"] for e in embeds),
            "bytes_read": sum(e["bytes_read"] for e in embeds),
            "tasks": len(embeds),
            "embedded": sum(e["output"]["result"]["extra"]["embedded"] for e in embeds),
            "deleted": sum(e["output"]["result"]["deleted"] for e in embeds),
        }
        tasks["finalize"] = in_process(
            "task", scratch, task="finalize", prepared=str(prepared_path), embedded=embedded_paths, **common
        )
        results.append({"n": n, "night_rows": rows, "tasks": tasks})
        log.info("night n=%d: %s", n, {k: round(v["wall_seconds"], 2) for k, v in tasks.items()})
    return results


def write_full(root: Path, n: int) -> None:
    """``n`` keywords in one partition, streamed to disk 200k rows at a time (ids as in the seed)."""
    path = root / "keywords" / f"dt={DT_SEED}" / "part-0.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema(
        [
            ("keyword_id", pa.string()),
            ("keyword", pa.string()),
            ("category", pa.string()),
            ("deleted", pa.bool_()),
        ]
    )
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, n, 200_000):
            ids = _id(np.arange(start, min(n, start + 200_000)) * 14)
            texts = [f"キーワード {i}" for i in ids]
            writer.write_table(pa.table([ids, texts, ["food"] * len(ids), [False] * len(ids)], schema=schema))


def write_churn(root: Path, n: int) -> int:
    """A 1%-changed, 0.5%-deleted, 1%-new delta partition over :func:`write_full`'s ids."""
    return write_night(root, n, {"changed": n // 100, "deleted": n // 200, "new": n // 100})


def child_inline(args: dict[str, Any]) -> dict[str, Any]:
    """One keyword_index run with the stores on (the inline runner: every task in this process)."""
    from embedding_pipeline.local.inline_runner import run_keywords
    from embedding_pipeline.runs.input_kinds import InputSpec

    spec = InputSpec(tombstone_column="deleted")
    report = run_keywords(
        Path(args["root"]), [args["dt"]], Path(args["run_dir"]), "ceiling", spec, "keywords"
    )
    embed = report["embed"]
    return {
        "rows_read": report.get("rows_read"),
        "embedded": int(embed["extra"].get("embedded", 0)),
        "deleted": embed["deleted"],
        "unchanged": embed["unchanged"],
    }


def stores_on(n: int, scratch: Path) -> dict[str, Any]:
    base = scratch / f"stores-{n}"
    write_full(base / "data", n)
    full = in_process("inline", scratch, root=str(base / "data"), dt=DT_SEED, run_dir=str(base / "full"))
    rows = write_churn(base / "data", n)
    night = in_process("inline", scratch, root=str(base / "data"), dt=DT_NIGHT, run_dir=str(base / "night"))
    return {"n": n, "night_rows": rows, "full": full, "night": night}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 3_000_000, 10_000_000])
    parser.add_argument("--stores-n", type=int, default=200_000)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--quick", action="store_true", help="20k/50k ids, stores 5k, no PostgreSQL")
    parser.add_argument("--keep-work", action="store_true")
    parser.add_argument("--output", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--child", nargs=2, metavar=("TASK", "PAYLOAD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child = {"inline": child_inline}.get(args.child[0])
        if child:
            payload = json.loads(Path(args.child[1]).read_text())
            started = time.perf_counter()
            result = {
                **child(payload),
                "wall_seconds": time.perf_counter() - started,
                "peak_rss_mb": peak_rss_mb(),
            }
            Path(payload["out"]).write_text(json.dumps(result, default=str))
        else:
            child_main(args.child[0], Path(args.child[1]))
        return
    if args.quick:
        args.sizes, args.stores_n, args.no_postgres = [20_000, 50_000], 5_000, True
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from contextlib import ExitStack

    from bench_client_ceiling import publish_ceiling
    from embedding_pipeline.local.postgres import PostgresServer
    from embedding_pipeline.serving.process import LocalServer

    with scratch_dir(args.keep_work, "bench-scale-") as scratch, ExitStack() as stack:
        os.environ["EMBEDDING_PIPELINE_HOME"] = str(scratch / "work")
        repository = scratch / "model_repository"
        os.environ["EMBEDDING_MODEL_REPOSITORY"] = str(repository)
        model = publish_ceiling(repository, scratch)
        backends: dict[str, Any] = {
            "parquet": lambda n: {"path": str(scratch / f"legacy-{n}.parquet")},
            "sqlite": lambda n: {"url": f"sqlite:///{scratch / f'ledger-{n}.db'}"},
        }
        if not args.no_postgres:
            pg = stack.enter_context(PostgresServer(scratch / "postgres.log", databases=("state",)))
            backends["postgresql"] = lambda n: {"url": pg.url("state"), "names": {"qdrant": f"keywords-{n}"}}
        ledger_results = ledger(args.sizes, backends, scratch)
        server = stack.enter_context(
            LocalServer(repository, threads=2, log_path=scratch / "server.log", models=[model["name"]])
        )
        warm_up(server, repository)  # the first night must not pay the server's first requests
        night = {k: v // 50 for k, v in NIGHT.items()} if args.quick else NIGHT
        night_results = nights(args.sizes, night, scratch, server, repository, model["dim"])
        embedded_stores(stack, scratch, server)
        stores = stores_on(args.stores_n, scratch)
    report = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": pipeline_machine_info(),
        "legacy_commit": LEGACY_COMMIT,
        "ledger": ledger_results,
        "nights": night_results,
        "night": night,
        "stores_on": stores,
    }
    write_results(args.output, "scale", args.quick, report, markdown)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Scale, {report['date']}",
        "",
        f"Machine: {report['machine']['cpu_model']}, "
        f"{report['machine']['cpu_count']} cores, {report['machine']['memory_gb']} GB.",
        "",
    ]
    lines += ["## Ledger: one 50k-id chunk's look-up, a 250k-row delta's commit", ""]
    rows = []
    for r in report["ledger"]:
        rows.append(
            [
                f"{r['n']:,}",
                r["backend"],
                f"{r['seed']['wall_seconds']:.1f} s / {r['seed']['peak_rss_mb']:.0f} MB",
                f"{r['lookup']['seconds']:.2f} s",
                f"{r['lookup']['peak_rss_mb']:.0f} MB",
                f"{r['lookup']['state_bytes_read'] / 2**20:.0f} MB",
                f"{r['commit']['seconds']:.2f} s",
                f"{r['commit']['peak_rss_mb']:.0f} MB",
            ]
        )
    header = ["stored ids", "ledger", "fill (process)", "look-up 50k", "RSS", "read", "commit 250k", "RSS"]
    lines += [*md_table(header, rows), ""]
    night = report["night"]
    lines += [
        f"## Nights, stores off: {night['changed']:,} changed, {night['deleted']:,} deleted, "
        f"{night['new']:,} new rows, SQLite state",
        "",
        "Per task: wall time / peak RSS / bytes the state calls read (time inside them).",
        "",
    ]
    rows = []
    for r in report["nights"]:
        cells = [f"{r['n']:,}"]
        for name in ("plan", "prepare", "embed", "finalize"):
            t = r["tasks"][name]
            cells.append(
                f"{t['wall_seconds']:.2f} s / {t['peak_rss_mb']:.0f} MB / "
                f"{t['state_bytes_read'] / 2**20:.1f} MB ({t['state_seconds']:.2f} s)"
            )
        cells.append(f"{sum(r['tasks'][k]['wall_seconds'] for k in r['tasks']):.1f} s")
        rows.append(cells)
    header = ["stored ids", "plan", "prepare", "embed (all chunks)", "finalize", "night"]
    lines += [*md_table(header, rows), ""]
    if len(report["nights"]) > 1:
        first, last = report["nights"][0], report["nights"][-1]
        total = lambda r: sum(t["wall_seconds"] for t in r["tasks"].values())  # noqa: E731
        peak = lambda r: max(t["peak_rss_mb"] for t in r["tasks"].values())  # noqa: E731
        lines += [
            f"Night at {last['n']:,} vs {first['n']:,} stored ids: {total(last) / total(first):.2f}x "
            f"the wall time, {peak(last) / peak(first):.2f}x the peak RSS of the largest task.",
            "",
        ]
    s = report["stores_on"]
    lines += [f"## Stores on (embedded Qdrant engine + ES emulator, inline runner): {s['n']:,} keywords", ""]
    lines += md_table(
        ["run", "rows", "embedded", "deleted", "wall", "peak RSS"],
        [
            [
                k,
                f"{s[k]['rows_read']:,}",
                f"{s[k]['embedded']:,}",
                f"{s[k]['deleted']:,}",
                f"{s[k]['wall_seconds']:.1f} s",
                f"{s[k]['peak_rss_mb']:.0f} MB",
            ]
            for k in ("full", "night")
        ],
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH_DIR))
    main()
