"""``embedding-pipeline``: command line for the model path (and the README's main job).

embedding-pipeline demo                      export -> gate -> publish (through Airflow) -> serve -> embed
embedding-pipeline publish --source minilm   the same steps without Airflow
embedding-pipeline serve                     run the local KServe v2 server on model_repository/
embedding-pipeline embed --role query TEXT   embed texts through a running server
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from embedding_pipeline import sample_data
from embedding_pipeline.errors import PipelineError
from embedding_pipeline.model_registry import FAMILIES
from embedding_pipeline.model_source import DEFAULT_MODEL_SOURCE
from embedding_pipeline.onnx_export import PRECISIONS
from embedding_pipeline.settings import ServerSettings, model_repository_path, work_dir

DEMO_SENTENCES = (
    ("query", "cheap flights to tokyo"),
    ("passage", "Low-cost airline tickets from Seoul to Tokyo Narita"),
    ("passage", "Stainless steel water bottle, 750 ml"),
    ("query", "reusable drink bottle"),
    ("passage", "Hokkaido winter travel guide: hot springs and snow festivals"),
)


def _publish(args: argparse.Namespace) -> int:
    from embedding_pipeline.model_publish import ExportRequest, export_model, gate_model, publish_model

    request = ExportRequest(args.source, args.precision, args.family, args.max_length)
    with tempfile.TemporaryDirectory(dir=work_dir().mkdir(parents=True, exist_ok=True) or work_dir()) as tmp:
        staging = export_model(request, Path(tmp) / "staging")
        parity = gate_model(staging)
        published = publish_model(
            staging, args.model_repository, args.name, args.max_batch_size, args.keep_versions
        )
    print(
        json.dumps(
            {
                "name": published.name,
                "version": published.version,
                "path": str(published.path),
                "dim": published.metadata["dim"],
                "parity": parity,
            },
            indent=2,
            ensure_ascii=False,
        )
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from embedding_pipeline.inference_server import main as serve_main

    argv = [
        "--model-repository",
        str(args.model_repository),
        "--http-port",
        str(args.http_port),
        "--grpc-port",
        str(args.grpc_port),
        "--threads",
        str(args.threads),
    ]
    serve_main(argv)
    return 0


def _embed(args: argparse.Namespace) -> int:
    from embedding_pipeline.embedding_client import EmbeddingClient

    settings = ServerSettings.from_env().with_overrides(model_name=args.model, protocol=args.protocol)
    with EmbeddingClient(settings) as client:
        result = client.embed(args.texts, role=None if args.role == "none" else args.role)
    for text, vector in zip(args.texts, result.vectors, strict=True):
        print(
            json.dumps(
                {"text": text, "dim": len(vector), "vector": [round(float(v), 6) for v in vector]},
                ensure_ascii=False,
            )
        )
    return 0


def _demo(args: argparse.Namespace) -> int:
    """The main job of this milestone: the model path end to end, through Airflow."""
    import numpy as np

    from embedding_pipeline.airflow_runner import configure_airflow, migrate_db
    from embedding_pipeline.server_process import LocalServer, free_port

    # Airflow logs every task transition at INFO; the demo's own report is the readable output.
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO" if args.verbose else "WARNING")
    home = configure_airflow()
    print(f"[1/4] Airflow metadata DB in {home}")
    migrate_db(home)
    repository = args.model_repository.resolve()
    http_port, grpc_port = free_port(), free_port()
    os.environ.update(
        EMBEDDING_MODEL_REPOSITORY=str(repository),
        EMBEDDING_SERVER_HTTP_PORT=str(http_port),
        EMBEDDING_SERVER_GRPC_PORT=str(grpc_port),
    )
    log_path = work_dir() / "logs" / "inference-server.log"
    print(f"[2/4] starting the local inference server (http {http_port}, grpc {grpc_port}; log {log_path})")
    with LocalServer(repository, http_port, grpc_port, threads=args.threads, log_path=log_path):
        from embedding_pipeline.airflow_runner import run_dag
        from embedding_pipeline.embedding_client import EmbeddingClient

        print(f"[3/4] dag.test(embedding_model_publish) for {args.source} ({args.precision})")
        run = run_dag(
            "embedding_model_publish",
            {"model_source": args.source, "model_name": args.name, "precision": args.precision},
        )
        states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
        print(f"      run {run.run_id}: {run.state} {states}")
        if str(run.state) != "success":
            raise PipelineError(f"embedding_model_publish did not succeed: {states}")
        settings = ServerSettings.from_env().with_overrides(model_name=args.name)
        with EmbeddingClient(settings) as client:
            meta = client.published.metadata
            print(
                f"[4/4] embedding through {settings.protocol}://{settings.url}: "
                f"{args.name} v{client.published.version}"
                f", dim {client.dim}, parity min cosine {meta['parity']['min_cosine']:.6f}"
            )
            vectors = [client.embed([text], role=role).vectors[0] for role, text in DEMO_SENTENCES]
        for (role, text), vector in zip(DEMO_SENTENCES, vectors, strict=True):
            print(f"      {role:<8} {text[:60]:<60} [{', '.join(f'{v:+.4f}' for v in vector[:4])}, ...]")
        sims = np.array(vectors) @ np.array(vectors).T
        print("      cosine similarity of each query to each passage:")
        for i, (role, text) in enumerate(DEMO_SENTENCES):
            if role != "query":
                continue
            best = max(
                (j for j, (r, _) in enumerate(DEMO_SENTENCES) if r == "passage"), key=lambda j: sims[i, j]
            )
            print(f"      {text!r} -> {DEMO_SENTENCES[best][1]!r} ({sims[i, best]:.3f})")
    print("done: the server was stopped; run `make serve` to keep one running.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedding-pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--source", default=DEFAULT_MODEL_SOURCE, help="hub id, local dir or 'minilm'")
        p.add_argument("--name", default="minilm", help="model name in the repository / on the server")
        p.add_argument("--precision", choices=PRECISIONS, default="fp32")
        p.add_argument("--model-repository", type=Path, default=model_repository_path())

    p = sub.add_parser("publish", help="export, gate and publish a model (no Airflow)")
    model_args(p)
    p.add_argument("--family", choices=sorted(FAMILIES), default=None)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--max-batch-size", type=int, default=128)
    p.add_argument("--keep-versions", type=int, default=3)
    p.set_defaults(func=_publish)

    p = sub.add_parser("serve", help="run the local inference server in the foreground")
    p.add_argument("--model-repository", type=Path, default=model_repository_path())
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(func=_serve)

    p = sub.add_parser("embed", help="embed texts through a running server")
    p.add_argument("--model", default="minilm")
    p.add_argument("--role", choices=["query", "passage", "none"], default="query")
    p.add_argument("--protocol", choices=["grpc", "http"], default=None)
    p.add_argument("texts", nargs="+")
    p.set_defaults(func=_embed)

    p = sub.add_parser("sample-data", help="generate partitioned sample keywords/products Parquet")
    sample_data.add_arguments(p)

    p = sub.add_parser("demo", help="the main job: publish through Airflow, serve, embed, print")
    model_args(p)
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1") if not os.environ.get("HF_HUB_ONLINE") else None
    try:
        return int(args.func(args) or 0)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
