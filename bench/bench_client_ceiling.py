"""Client ceiling: how many rows a second can one embed task push when the model costs nothing?

A GPU Triton serves MiniLM far faster than this box's CPU, so the embed task's own work -
tokenizing, building requests, gRPC, decoding, staging Parquet - decides whether one task can feed
it. This benchmark removes the model: a "ceiling" model is published beside MiniLM with MiniLM's
tokenizer and contract (input_ids/attention_mask INT64 -> sentence_embedding FP32 [batch, 384]) but a
graph that only looks up a precomputed, L2-normalised vector per row (Gather on the second token,
modulo a 4096-row table). The real local KServe v2 server process serves it over gRPC.

Measured on the same short Japanese keywords (sample generator), in one run:

1. tokenize: ``TextEncoder.encode`` alone, in request-size batches (the client's lower bound);
2. client: ``EmbeddingClient.embed`` of the same texts (tokenize + requests + decode), for
   ``max_in_flight`` 1 (the default) and more, and request batch sizes;
3. embed stage: ``embed_chunk`` over a planned partition chunk (Parquet in, validation, resume
   slices, staged Parquet out), with a cProfile of where its time goes.

Goal (issue 16): >= 10,000 rows/s per task. Run: ``.venv/bin/python bench/bench_client_ceiling.py``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import pstats
import shutil
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
from harness import BENCH_DIR, md_table, pipeline_machine_info, publish, scratch_dir, write_results

log = logging.getLogger("bench")

CEILING = "ceiling"
TABLE_ROWS = 4096


def ceiling_graph(path: Path, dim: int, seed: int = 0) -> None:
    """input_ids [B, T] -> table[input_ids[:, 1] % 4096]: a valid embedding model of no cost."""
    import onnx
    from embedding_pipeline.model.onnx_export import OUTPUT_NAME
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    table = rng.standard_normal((TABLE_ROWS, dim)).astype(np.float32)
    table /= np.linalg.norm(table, axis=1, keepdims=True)
    nodes = [
        helper.make_node("Gather", ["input_ids", "one"], ["second"], axis=1),  # [B]
        helper.make_node("Mod", ["second", "rows"], ["row"]),
        helper.make_node("Gather", ["table", "row"], [OUTPUT_NAME], axis=0),  # [B, dim]
        helper.make_node("Shape", ["attention_mask"], ["unused_shape"]),
    ]
    graph = helper.make_graph(
        nodes,
        "ceiling",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"]),
        ],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", dim])],
        initializer=[
            numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
            numpy_helper.from_array(np.array(TABLE_ROWS, dtype=np.int64), "rows"),
            numpy_helper.from_array(table, "table"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def publish_ceiling(repository: Path, scratch: Path) -> dict[str, Any]:
    """MiniLM's published version with the ceiling graph in place of its weights."""
    from embedding_pipeline.model.repository import METADATA_FILENAME, latest_version
    from embedding_pipeline.model.repository import publish as publish_dir

    minilm = latest_version(repository, publish("minilm", repository, scratch)["name"])
    staging = scratch / "ceiling-staging"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(minilm.path, staging)
    ceiling_graph(staging / "model.onnx", int(minilm.metadata["dim"]))
    metadata = json.loads((staging / METADATA_FILENAME).read_text())
    metadata["source"] = "bench_client_ceiling (a lookup table, not a model)"
    (staging / METADATA_FILENAME).write_text(json.dumps(metadata))
    published = publish_dir(staging, repository, CEILING, max_batch_size=1024)
    return {"name": CEILING, "version": published.version, "dim": int(metadata["dim"])}


def _keywords(root: Path, rows: int, seed: int) -> list[str]:
    import pyarrow.dataset as ds
    from embedding_pipeline.sample.generate import generate

    generate(root, keywords=rows, products=0, dates=[date(2024, 1, 1)], seed=seed, tables=("keywords",))
    table = ds.dataset(root / "keywords", format="parquet", partitioning="hive").to_table(columns=["keyword"])
    return [t for t in table["keyword"].to_pylist() if isinstance(t, str)]


def _rate(rows: int, seconds: float) -> float:
    return rows / seconds if seconds else float("inf")


def _profile_top(profiler: cProfile.Profile, limit: int = 14) -> list[dict[str, Any]]:
    """Cumulative time of the calls that matter, as a list (function, cumulative s, own s)."""
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (filename, line, name), (_, _, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = filename.split("site-packages/")[-1].split("include/")[-1]
        rows.append({"function": f"{where}:{line} {name}", "cumulative_s": cumulative, "own_s": own})
    rows.sort(key=lambda r: -r["own_s"])
    return [
        {**r, "cumulative_s": round(r["cumulative_s"], 3), "own_s": round(r["own_s"], 3)}
        for r in rows[:limit]
    ]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from embedding_pipeline.runs.partitions import KEYWORDS, Chunk
    from embedding_pipeline.runs.plan import plan
    from embedding_pipeline.serving.client import EmbeddingClient
    from embedding_pipeline.serving.process import LocalServer
    from embedding_pipeline.settings import ServerSettings
    from embedding_pipeline.stages.embed import embed_chunk

    with scratch_dir(args.keep) as scratch:
        repository = scratch / "model_repository"
        model = publish_ceiling(repository, scratch)
        texts = _keywords(scratch / "data", args.rows, args.seed)
        results: dict[str, Any] = {"rows": len(texts), "model": model}
        with LocalServer(repository, threads=args.server_threads, log_path=scratch / "server.log") as server:

            def settings(**overrides: Any) -> ServerSettings:
                return ServerSettings(
                    host="127.0.0.1",
                    grpc_port=server.grpc_port,
                    http_port=server.http_port,
                    model_repository=repository,
                    model_name=CEILING,
                    timeout_s=60,
                ).with_overrides(**overrides)

            with EmbeddingClient(settings()) as client:
                client.check_ready()
                started = time.perf_counter()
                for i in range(0, len(texts), 64):
                    client.encoder.encode(texts[i : i + 64], "passage")
                results["tokenize_rows_per_s"] = _rate(len(texts), time.perf_counter() - started)
            client_rows = []
            for batch_size in args.batch_sizes:
                for in_flight in args.in_flight:
                    with EmbeddingClient(settings(batch_size=batch_size, max_in_flight=in_flight)) as client:
                        client.embed(texts[:2000])  # warm: connection, first requests
                        started = time.perf_counter()
                        client.embed(texts)
                        seconds = time.perf_counter() - started
                    client_rows.append(
                        {
                            "batch_size": batch_size,
                            "max_in_flight": in_flight,
                            "rows_per_s": _rate(len(texts), seconds),
                        }
                    )
                    log.info(
                        "client batch %d in flight %d: %.0f rows/s",
                        batch_size,
                        in_flight,
                        client_rows[-1]["rows_per_s"],
                    )
            results["client"] = client_rows

            run_dir = scratch / "run"
            planned = plan(KEYWORDS, scratch / "data", ["2024-01-01"], run_dir, args.rows + 1, 1)
            (chunk,) = planned["chunks"]
            stage_rows = []
            for in_flight in args.in_flight:
                shutil.rmtree(run_dir / "staged", ignore_errors=True)
                profiler = cProfile.Profile()
                with EmbeddingClient(settings(max_in_flight=in_flight)) as client:
                    client.check_ready()
                    started = time.perf_counter()
                    profiler.enable()
                    output = embed_chunk(Chunk.from_xcom(chunk), KEYWORDS, "keyword", client, run_dir)
                    profiler.disable()
                    seconds = time.perf_counter() - started
                counts = output.result
                stage_rows.append(
                    {
                        "max_in_flight": in_flight,
                        "rows_in": counts.rows_in,
                        "rows_per_s": _rate(counts.rows_in, seconds),
                        "embed_seconds": counts.extra["embed_seconds"],
                        "seconds": round(seconds, 3),
                        "profile": _profile_top(profiler),
                    }
                )
                log.info("embed stage, in flight %d: %.0f rows/s", in_flight, stage_rows[-1]["rows_per_s"])
            results["stage"] = stage_rows
    return {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": pipeline_machine_info(),
        "settings": {"rows": args.rows, "server_threads": args.server_threads},
        **results,
    }


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# Client ceiling{' (' + report['label'] + ')' if report.get('label') else ''}, {report['date']}",
        "",
        f"{report['rows']} short ja keywords; model `ceiling` (MiniLM's tokenizer and contract, a lookup "
        f"table instead of a network) on the local KServe v2 server over gRPC; {m['cpu_count']} cores, "
        f"{m['cpu_model']}. Goal: 10,000 rows/s per embed task.",
        "",
        f"Tokenizer alone (batches of 64): **{report['tokenize_rows_per_s']:.0f} rows/s**.",
        "",
        "EmbeddingClient.embed:",
        "",
        *md_table(
            ["request batch", "max_in_flight", "rows/s"],
            [[r["batch_size"], r["max_in_flight"], f"{r['rows_per_s']:.0f}"] for r in report["client"]],
            "rrr",
        ),
        "",
        "embed stage (embed_chunk: Parquet in, validation, resume slices, staged Parquet out):",
        "",
        *md_table(
            ["max_in_flight", "rows", "rows/s", "of which in client.embed (s)", "total (s)"],
            [
                [r["max_in_flight"], r["rows_in"], f"{r['rows_per_s']:.0f}", r["embed_seconds"], r["seconds"]]
                for r in report["stage"]
            ],
            "rrrrr",
        ),
        "",
        "Where the embed stage's time goes (first run, cProfile, own time, top calls):",
        "",
        *md_table(
            ["function", "own s", "cumulative s"],
            [[r["function"], r["own_s"], r["cumulative_s"]] for r in report["stage"][0]["profile"]],
            "lrr",
        ),
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--server-threads", type=int, default=0)
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[64, 256])
    parser.add_argument("--in-flight", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4])
    parser.add_argument("--quick", action="store_true", help="10k rows: a smoke run")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--label", default="", help="before|after: names the results file")
    parser.add_argument("--output-dir", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows = 10_000
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    name = f"client-ceiling-{args.label}" if args.label else "client-ceiling"
    write_results(args.output_dir, name, args.quick, run(args) | {"label": args.label}, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
