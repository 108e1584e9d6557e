"""The embedded Qdrant engine, decided by measurement: Qdrant's own engine in-process (qdrant-edge,
``stores/qdrant/edge.py``) against qdrant-client's local mode, on the store contract the stages use.

Both engines run the store's own functions on disk, in alternating pairs (who goes first swaps):

1. ``upsert``: ``ensure_collection`` then ``upsert_chunk`` of staged keyword chunks, one client per
   chunk as the Qdrant tasks open one (latest-dt-wins reads and conditional writes included).
2. ``open + count``: a new client on the filled store and ``count_points`` (what every Qdrant task
   and ``finalize`` pay before any work).
3. ``search``: the linker's shape, ``search`` top-30 in batches of 64, each query filtered to one
   category; and the same unfiltered.
4. ``present``: every id looked up (what incremental runs and agreement checks do).
5. ``scan``: ``iter_vectors`` over every point (quality checks, relinks).
6. ``alias swap``: ``create_generation`` of an empty next generation and ``swap_alias`` to it.

Both answer every search with the same ids (exact search on both: compared, a difference fails
the run) and hold the same number of points. ``--demo`` also times the whole demo once per engine.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from harness import (
    BENCH_DIR,
    PROJECT_ROOT,
    Measurement,
    Meter,
    NoiseBudget,
    alternate,
    installed,
    md_table,
    pair_cells,
    pair_summary,
    pipeline_machine_info,
    scratch_dir,
    write_results,
)

log = logging.getLogger("bench")

ENGINES = ("edge", "python")  # pipeline side, reference side
ALIAS = "keywords"
DIM = 384
CATEGORIES = [f"category-{i}" for i in range(20)]
TOP_K, SEARCH_BATCH = 30, 64


def stage(folder: Path, points: int, chunks: int) -> list[Path]:
    """Staged keyword chunks as the embed task writes them: random unit vectors, ja-like texts."""
    from embedding_pipeline.runs.staging import StagedChunkWriter

    rng = np.random.default_rng(7)
    paths, per_chunk = [], points // chunks
    for c in range(chunks):
        writer = StagedChunkWriter(folder / f"c{c}.parquet", DIM, "keywords", "minilm", 1)
        for start in range(c * per_chunk, (c + 1) * per_chunk, 1000):
            ids = [f"k{i:07d}" for i in range(start, min(start + 1000, (c + 1) * per_chunk))]
            vectors = rng.standard_normal((len(ids), DIM)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            payloads = [
                {"category": CATEGORIES[int(i[1:]) % len(CATEGORIES)], "dt": "2024-05-01"} for i in ids
            ]
            writer.write(ids, vectors, [f"キーワード {i}" for i in ids], payloads)
        paths.append(writer.close())
    return paths


class Engine:
    """One engine's store folder and the timed operations on it."""

    def __init__(self, name: str, root: Path, meter: Meter) -> None:
        from embedding_pipeline.stores.qdrant.settings import QdrantSettings

        self.name, self.meter = name, meter
        self.settings = lambda: QdrantSettings(path=root / name, local_engine=name)
        self.answers: list[list[tuple[str, float]]] = []

    def upsert(self, chunks: list[Path], scratch: Path, points: int) -> Measurement:
        import shutil

        from embedding_pipeline.runs.dead_letter import DeadLetterWriter
        from embedding_pipeline.stages.keywords.documents import KEYWORD_POINTS
        from embedding_pipeline.stores.qdrant.client import open_client
        from embedding_pipeline.stores.qdrant.collections import ensure_collection, staged_model
        from embedding_pipeline.stores.qdrant.upsert import upsert_chunk

        shutil.rmtree(self.settings().local_path, ignore_errors=True)
        with self.meter.measure(f"{self.name} upsert", points) as m:
            for i, chunk in enumerate(chunks):
                with open_client(self.settings()) as client:
                    if i == 0:
                        ensure_collection(client, ALIAS, **staged_model(chunk), schema=KEYWORD_POINTS)
                    dead = DeadLetterWriter(scratch / "dead" / self.name, "qdrant_upsert", chunk.stem)
                    result = upsert_chunk(client, ALIAS, chunk, dead, schema=KEYWORD_POINTS)
                    if result.dead_lettered:
                        raise RuntimeError(f"{self.name}: {result.dead_lettered} points dead-lettered")
        return m

    def open_count(self, points: int) -> Measurement:
        from embedding_pipeline.stores.qdrant.client import open_client
        from embedding_pipeline.stores.qdrant.collections import count_points

        with self.meter.measure(f"{self.name} open + count", 1) as m, open_client(self.settings()) as client:
            counted = count_points(client, ALIAS)
        if counted != points:
            raise RuntimeError(f"{self.name} holds {counted} points, {points} were upserted")
        m.extra["seconds_per_open"] = round(m.seconds, 3)
        return m

    def search(self, queries: np.ndarray, filtered: bool) -> Measurement:
        from embedding_pipeline.stores.qdrant.client import open_client
        from embedding_pipeline.stores.qdrant.search import SearchOptions, search

        filters = [{"category": CATEGORIES[i % len(CATEGORIES)]} for i in range(len(queries))]
        label = f"{self.name} search{' filtered' if filtered else ''}"
        with open_client(self.settings()) as client, self.meter.measure(label, len(queries)) as m:
            hits = search(
                client,
                ALIAS,
                queries,
                SearchOptions(top_k=TOP_K, batch_size=SEARCH_BATCH),
                query_filters=filters if filtered else None,
            )
        self.answers = [[(h.payload["keyword_id"], h.score) for h in row] for row in hits]
        m.extra["ms_per_query"] = round(1000 * m.seconds / len(queries), 2)
        return m

    def present(self, ids: list[str]) -> Measurement:
        from embedding_pipeline.runs.staging import point_id
        from embedding_pipeline.stores.qdrant.client import open_client
        from embedding_pipeline.stores.qdrant.collections import collection_target
        from embedding_pipeline.stores.qdrant.points import present

        point_ids = [point_id("keywords", i) for i in ids]
        with (
            open_client(self.settings()) as client,
            self.meter.measure(f"{self.name} present", len(ids)) as m,
        ):
            found = present(client, collection_target(client, ALIAS).name, point_ids)
        if len(found) != len(ids):
            raise RuntimeError(f"{self.name} found {len(found)} of {len(ids)} ids")
        return m

    def scan(self, points: int) -> Measurement:
        from embedding_pipeline.stores.qdrant.client import open_client
        from embedding_pipeline.stores.qdrant.search import iter_vectors

        with open_client(self.settings()) as client, self.meter.measure(f"{self.name} scan", points) as m:
            seen = sum(len(v) for v, _ in iter_vectors(client, ALIAS, with_payload=["keyword_id"]))
        if seen != points:
            raise RuntimeError(f"{self.name} scanned {seen} of {points} points")
        return m

    def swap(self, generation: int) -> Measurement:
        from embedding_pipeline.stages.keywords.documents import KEYWORD_POINTS
        from embedding_pipeline.stores.qdrant.client import open_client
        from embedding_pipeline.stores.qdrant.collections import create_generation, resolve_alias
        from embedding_pipeline.stores.qdrant.generations import swap_alias

        with open_client(self.settings()) as client, self.meter.measure(f"{self.name} alias swap", 1) as m:
            target = create_generation(
                client,
                ALIAS,
                generation,
                dim=DIM,
                model_name="minilm",
                model_version=1,
                schema=KEYWORD_POINTS,
            )
            swap_alias(client, ALIAS, target.name)
            if resolve_alias(client, ALIAS) != target.name:
                raise RuntimeError(f"{self.name}: the alias did not move to {target.name}")
        m.extra["ms"] = round(1000 * m.seconds, 1)
        return m


def same_answers(edge: Engine, python: Engine, what: str, tolerance: float = 1e-4) -> None:
    """Exact search on both engines: the same scores (float32 rounding apart), and the same ids
    except where two scores are within rounding of each other or of the cut-off (the engines
    break such near-ties differently). Anything else means the run compares unlike things."""
    differ = 0
    for mine, theirs in zip(edge.answers, python.answers, strict=True):
        scores = np.array([s for _, s in mine]), np.array([s for _, s in theirs])
        if len(mine) != len(theirs) or not np.allclose(*scores, atol=tolerance):
            differ += 1
            continue
        cut = min(scores[0][-1], scores[1][-1]) + tolerance if mine else 0.0
        clear = [{i for i, s in row if s > cut} for row in (mine, theirs)]
        differ += clear[0] != clear[1]
    if differ:
        raise RuntimeError(f"{what}: {differ} of {len(edge.answers)} queries answered differently")


def time_demo(engine: str, scratch: Path) -> dict[str, Any]:
    """The whole demo (``embedding-pipeline demo``) on one engine, in its own home: wall seconds."""
    home = scratch / f"demo-{engine}"
    env = {**os.environ, "QDRANT_LOCAL_ENGINE": engine, "EMBEDDING_PIPELINE_HOME": str(home)}
    env.pop("QDRANT_URL", None)
    env.pop("QDRANT_PATH", None)
    started = time.perf_counter()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "embedding-pipeline"), "demo"],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"demo on {engine} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return {"engine": engine, "seconds": round(seconds, 1)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    meter, noise = Meter(), NoiseBudget(args.noise_budget_s)
    started = time.perf_counter()
    with scratch_dir(args.keep, "bench-qdrant-") as scratch:
        chunks = stage(scratch / "staged", args.points, args.chunks)
        rng = np.random.default_rng(11)
        queries = rng.standard_normal((args.queries, DIM)).astype(np.float32)
        ids = [f"k{i:07d}" for i in range(args.points)]
        edge, python = (Engine(name, scratch / "stores", meter) for name in ENGINES)
        rows: dict[str, list[tuple[Measurement, Measurement]]] = {}

        def pair(name: str, i: int, op: Callable[[Engine], Measurement]) -> None:
            result: dict[str, Measurement] = {}
            noise.wait(name)
            alternate(
                i,
                lambda: result.setdefault("edge", op(edge)),
                lambda: result.setdefault("python", op(python)),
            )
            rows.setdefault(name, []).append((result["edge"], result["python"]))

        for i in range(args.rounds):
            pair("upsert", i, lambda e: e.upsert(chunks, scratch, args.points))
            pair("open + count", i, lambda e: e.open_count(args.points))
            for filtered in (True, False):
                name = "search filtered" if filtered else "search"
                pair(name, i, lambda e, f=filtered: e.search(queries, f))
                same_answers(edge, python, name)
            pair("present", i, lambda e: e.present(ids))
            pair("scan", i, lambda e: e.scan(args.points))
            pair("alias swap", i, lambda e, g=i + 2: e.swap(g))
        demo = [time_demo(engine, scratch) for engine in ENGINES] if args.demo else []
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": pipeline_machine_info(),
        "versions_extra": {"qdrant-edge-py": installed("qdrant-edge-py")},
        "points": args.points,
        "chunks": args.chunks,
        "queries": args.queries,
        "rounds": args.rounds,
        "noise": noise.to_dict(),
        "comparisons": {name: pair_summary(name, pairs) for name, pairs in rows.items()},
        "demo": demo,
        "runtime_s": round(time.perf_counter() - started, 1),
    }


def _detail(summary: dict[str, Any]) -> str:
    """Per-operation unit next to the rates: seconds per open, ms per query or per swap."""
    first = summary["runs"][0][0].get("extra", {})
    for key, unit in (("seconds_per_open", "s"), ("ms_per_query", "ms/query"), ("ms", "ms")):
        if key in first:
            edge = statistics.median(a["extra"][key] for a, _ in summary["runs"])
            python = statistics.median(b["extra"][key] for _, b in summary["runs"])
            return f"{edge:g} vs {python:g} {unit}"
    return ""


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# Embedded Qdrant engines {report['date']}",
        "",
        f"{m['cpu_count']} CPUs ({m['cpu_model']}), Python {m['python']}, qdrant-client "
        f"{m['versions']['qdrant-client']}, qdrant-edge-py {report['versions_extra']['qdrant-edge-py']}; "
        f"runtime {report['runtime_s']}s.",
        "",
        f"{report['points']} keyword points (dim {DIM}, payload as the keyword stage writes it) in "
        f"{report['chunks']} staged chunks, on disk; {report['queries']} queries top-{TOP_K}; "
        f"{report['rounds']} alternating pairs. Both sides run the store's own functions "
        "(`stores/qdrant`); `pipeline` = qdrant-edge, `reference` = qdrant-client local mode, so the "
        "ratio is the engine's speed-up. Every search answered with the same ids on both.",
        "",
        *md_table(
            [
                "operation",
                "edge /s",
                "local mode /s",
                "ratio median / total",
                "quiet pairs",
                "load",
                "other",
                "per op",
            ],
            [
                [*pair_cells(name, summary), _detail(summary)]
                for name, summary in report["comparisons"].items()
            ],
            "lrrrrlrl",
        ),
        "",
    ]
    if report["demo"]:
        lines += [
            "| demo (`embedding-pipeline demo`, wall) | seconds |",
            "|---|---:|",
            *(f"| {d['engine']} | {d['seconds']} |" for d in report["demo"]),
            "",
        ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=40_000)
    parser.add_argument("--chunks", type=int, default=2)
    parser.add_argument("--queries", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--demo", action="store_true", help="also time the whole demo once per engine")
    parser.add_argument("--noise-budget-s", type=float, default=120.0)
    parser.add_argument("--quick", action="store_true", help="4000 points, 64 queries, 1 round")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--output-dir", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.points, args.queries, args.rounds = 4000, 64, 1
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    report = run(args)
    write_results(args.output_dir, "qdrant-engines", args.quick, report, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
