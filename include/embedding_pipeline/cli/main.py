"""``embedding-pipeline``: the command line (the README's main job, serving, search, quality).

embedding-pipeline demo                      the whole chain on sample data through Airflow, and a report
embedding-pipeline airflow                   Airflow standalone (UI) with the DAGs and local services
embedding-pipeline publish --source minilm   export -> gate -> publish without Airflow
embedding-pipeline serve                     run the local KServe v2 server on model_repository/
embedding-pipeline embed --role query TEXT   embed texts through a running server
embedding-pipeline search text|meaning|product ...   look up keywords and product links
embedding-pipeline quality                   recall@K of the stored links against exact search
embedding-pipeline generations|rebuild|rollback   blue/green generations: list, full rebuild, roll back
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

from embedding_pipeline.cli import generations as generations_cli
from embedding_pipeline.cli import sample as sample_data
from embedding_pipeline.cli import search as search_cli
from embedding_pipeline.cli import state as state_cli
from embedding_pipeline.cli import verify as verify_cli
from embedding_pipeline.errors import PipelineError
from embedding_pipeline.local import airflow_standalone
from embedding_pipeline.model.registry import FAMILIES, PRECISIONS
from embedding_pipeline.model.source import DEFAULT_MODEL_SOURCE
from embedding_pipeline.settings import model_repository_path, work_dir


def _publish(args: argparse.Namespace) -> int:
    from embedding_pipeline.model.publish import ExportRequest, export_model, gate_model, publish_model

    request = ExportRequest(args.source, args.precision, args.family, args.max_length)
    work_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir()) as tmp:
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
    from embedding_pipeline.serving.server import main as serve_main

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
    from embedding_pipeline.serving.client import EmbeddingClient

    settings = search_cli.interactive_server_settings(args.model, protocol=args.protocol)
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
    from embedding_pipeline.cli.demo import run_demo

    return run_demo(args)


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

    p = sub.add_parser("demo", help="the main job: sample data, services, embedding_chain, report")
    model_args(p)
    # The model follows --lang unless given (cli.demo.DEMO_MODELS says which and why).
    p.set_defaults(source=None, name=None, precision=None)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--keywords", type=int, default=20_000, help="sample keywords over --dates")
    p.add_argument("--products", type=int, default=2_000)
    p.add_argument("--dates", nargs="+", default=["2024-01-01", "2024-01-02", "2024-01-03"])
    p.add_argument("--lang", choices=["ja", "en"], default="ja")
    p.add_argument("--bad-rate", type=float, default=0.01, help="share of injected bad rows")
    p.add_argument("--top-k", type=int, default=30, help="keywords linked per product")
    p.set_defaults(func=_demo)

    airflow_standalone.register(sub)
    search_cli.register(sub)
    generations_cli.register(sub)
    verify_cli.register(sub)
    state_cli.register(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like a Ctrl-C so that every command's clean-up (stopping what it started) runs."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Bundled and local models need no Hub; set HF_HUB_OFFLINE=0 to allow downloads of hub ids.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args) or 0)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
