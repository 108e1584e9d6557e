"""int8 against fp32, end to end: is the speed worth what it does to the links?

For each language with the model the demo uses for it (ja: me5-small, en: MiniLM), both precisions
are exported, gated and published (the publish DAG's path) and served by the local server. On the
sample generator's data (keywords, products, relevance labels):

- **throughput**: keywords embedded through the server (the embed stage's client), fp32 and int8
  back to back, alternating who goes first, ``--rounds`` times; medians and their ratio;
- **links**: each product's exact top-K keywords by cosine (what the link stage stores with
  local-mode Qdrant) from int8 vectors against those from fp32 vectors: recall@K (the share of the
  fp32 list int8 keeps), and nDCG@10 / P@10 / MRR of both against the labels;
- **re-check**: the same products embedded again in another batch composition (one at a time, as
  ``embedding-pipeline quality`` or a relink may), their top-K against the stored lists of the same
  precision: what the quality check reports when nothing changed. int8's dynamic quantization scales
  activations per request, so an int8 vector depends on its batch neighbours; fp32's does not;
- **batch invariance**: cosine of a text's vector alone vs inside a batch (min and median).

Run: ``.venv/bin/python bench/bench_int8.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
from contextlib import ExitStack
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
from harness import (
    BENCH_DIR,
    MODELS,
    Meter,
    NoiseBudget,
    alternate,
    md_table,
    pair_summary,
    pipeline_machine_info,
    publish,
    scratch_dir,
    write_results,
)

log = logging.getLogger("bench")

CASES = (("ja", "me5-small"), ("en", "minilm"))
TOP_K = 30  # the link stage's default top_k
EMBED_BATCH = 64  # the embed stage's client batch
RECHECK = 100  # products re-embedded one at a time


def _precision_kinds(model: str) -> dict[str, str]:
    """harness.MODELS keys of both precisions of ``model`` (int8 entries added here)."""
    source, family, name, _ = MODELS[model]
    MODELS[f"{model}-int8"] = (source, family, name.replace("_fp32", "_int8"), "int8")
    return {"fp32": model, "int8": f"{model}-int8"}


def _cpu_int8_flags() -> list[str]:
    """The CPU's vector extensions that decide ONNX Runtime's int8 kernels (VNNI or not)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return ["unknown"]
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return [f"{flag} {'yes' if flag in flags else 'no'}" for flag in wanted]


def _publish_both(model: str, repository: Path, scratch: Path) -> dict[str, dict]:
    """Both precisions through export -> gate -> publish. An int8 export the parity gate refuses is
    a result, not an error: int8 accuracy depends on the CPU's int8 instructions (ONNX Runtime's
    u8s8 kernels can saturate without VNNI), and the gate runs on this machine's."""
    from embedding_pipeline.errors import ParityGateError

    kinds = _precision_kinds(model)
    both = {"fp32": publish(kinds["fp32"], repository, scratch)}
    try:
        both["int8"] = publish(kinds["int8"], repository, scratch)
    except ParityGateError as exc:
        log.warning("%s", exc)
        both["int8"] = {"refused": str(exc)}
    return both


def _embed(client: Any, texts: list[str], role: str, batch: int = EMBED_BATCH) -> np.ndarray:
    return np.concatenate(
        [client.embed(texts[i : i + batch], role=role).vectors for i in range(0, len(texts), batch)]
    )


def _top(keywords: np.ndarray, products: np.ndarray) -> np.ndarray:
    """Each product's exact top-K keyword rows by cosine (vectors are normalised)."""
    scores = products @ keywords.T
    top = np.argpartition(-scores, TOP_K, axis=1)[:, :TOP_K]
    order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, axis=1)


def _recall(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """Mean and min share of each reference list the candidate list holds."""
    shares = [len(set(r) & set(c)) / len(r) for r, c in zip(reference, candidate, strict=True)]
    return float(np.mean(shares)), float(np.min(shares))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def run_case(
    lang: str,
    model: str,
    published: dict[str, dict],
    args: argparse.Namespace,
    scratch: Path,
    server: Any,
    meter: Meter,
) -> dict:
    from bench_link_relevance import _read
    from embedding_pipeline.sample.generate import generate
    from embedding_pipeline.serving.client import EmbeddingClient
    from embedding_pipeline.settings import ServerSettings
    from embedding_pipeline.stages.products.relevance import score_lists

    root = scratch / f"data-{lang}"
    generate(
        root, keywords=args.keywords, products=args.products, dates=[date(2024, 1, 1)], lang=lang, seed=7
    )
    keyword_ids, keyword_texts, _ = _read(root, "keywords")
    product_ids, product_texts, _ = _read(root, "products")
    clients = {}
    with ExitStack() as stack:
        for precision, info in published.items():
            settings = ServerSettings(
                host="127.0.0.1",
                grpc_port=server.grpc_port,
                http_port=server.http_port,
                model_repository=server.repository,
                model_name=info["name"],
                timeout_s=300,
            )
            clients[precision] = stack.enter_context(EmbeddingClient(settings))
            clients[precision].wait_until_ready()
        vectors: dict[str, dict[str, np.ndarray]] = {p: {} for p in clients}
        pairs = []
        budget = NoiseBudget(args.noise_budget_s, helpers=meter.helpers)

        def timed(precision: str) -> Any:
            budget.wait(f"{lang} {precision}")
            with meter.measure(f"{lang} {model} {precision} keywords", len(keyword_texts)) as m:
                vectors[precision]["keywords"] = _embed(clients[precision], keyword_texts, "passage")
            return m

        for i in range(args.rounds):
            runs: dict[str, Any] = {}
            alternate(
                i,
                lambda runs=runs: runs.setdefault("int8", timed("int8")),
                lambda runs=runs: runs.setdefault("fp32", timed("fp32")),
            )
            pairs.append((runs["int8"], runs["fp32"]))
        lists, metrics, recheck = {}, {}, {}
        for precision, client in clients.items():
            products = _embed(client, product_texts, "query")
            vectors[precision]["products"] = products
            lists[precision] = _top(vectors[precision]["keywords"], products)
            report = score_lists(
                {
                    p: [keyword_ids[j] for j in row[:10]]
                    for p, row in zip(product_ids, lists[precision], strict=True)
                },
                root,
                k=10,
            )
            metrics[precision] = {"ndcg@10": report.ndcg, "precision@10": report.precision, "mrr": report.mrr}
            alone = np.concatenate([client.embed([t], role="query").vectors for t in product_texts[:RECHECK]])
            cos = _cosines(alone, products[:RECHECK])
            again = _top(vectors[precision]["keywords"], alone)
            mean, worst = _recall(lists[precision][:RECHECK], again)
            exact = sum(int(set(a) == set(b)) for a, b in zip(lists[precision][:RECHECK], again, strict=True))
            recheck[precision] = {
                "batch_cos_min": float(cos.min()),
                "batch_cos_median": float(np.median(cos)),
                "recheck_recall_mean": mean,
                "recheck_recall_min": worst,
                "recheck_lists_identical": exact / RECHECK,
            }
    recall_mean, recall_min = _recall(lists["fp32"], lists["int8"])
    return {
        "lang": lang,
        "model": model,
        "published": published,
        "keywords": len(keyword_texts),
        "products": len(product_texts),
        "throughput": pair_summary(f"{lang} {model} int8 / fp32", pairs),
        "int8_vs_fp32_recall_mean": recall_mean,
        "int8_vs_fp32_recall_min": recall_min,
        "int8_vs_fp32_cos_median": float(
            statistics.median(_cosines(vectors["int8"]["keywords"], vectors["fp32"]["keywords"]))
        ),
        "metrics": metrics,
        "recheck": recheck,
        "budget": budget.to_dict(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from embedding_pipeline.serving.process import LocalServer

    with scratch_dir(args.keep) as scratch, ExitStack() as stack:
        repository = args.model_repository or scratch / "model_repository"
        repository.mkdir(parents=True, exist_ok=True)
        chosen = CASES[1:] if args.quick else CASES  # quick: English only (the me5 conversion is slow)
        published = {model: _publish_both(model, repository, scratch) for _, model in chosen}
        server = stack.enter_context(LocalServer(repository, threads=0, log_path=scratch / "server.log"))
        assert server.process is not None
        meter = Meter(helpers={"server": server.process.pid})
        cases = [
            {"lang": lang, "model": model, "refused": published[model]["int8"]["refused"]}
            if "refused" in published[model]["int8"]
            else run_case(lang, model, published[model], args, scratch, server, meter)
            for lang, model in chosen
        ]
    return {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": pipeline_machine_info(),
        "settings": {
            "keywords": args.keywords,
            "products": args.products,
            "rounds": args.rounds,
            "top_k": TOP_K,
        },
        "cases": cases,
        "cpu_int8": _cpu_int8_flags(),
        "runs": [m.to_dict() for m in meter.runs],
    }


def _both(case: dict[str, Any], metric: str) -> str:
    return f"{case['metrics']['fp32'][metric]:.3f} / {case['metrics']['int8'][metric]:.3f}"


def markdown(report: dict[str, Any]) -> str:
    s, m = report["settings"], report["machine"]
    lines = [
        f"# int8 vs fp32 end to end, {report['date']}",
        "",
        f"{m['cpu_count']} cores, {m['cpu_model']}; local server (ONNX Runtime), gRPC, client batch "
        f"{EMBED_BATCH}. {s['keywords']} keywords and {s['products']} products per language (sample "
        f"generator, labels: 2 = same category and head noun, 1 = same category); top-{s['top_k']} "
        f"exact lists; throughput: {s['rounds']} alternating rounds.",
        "",
        *md_table(
            [
                "lang",
                "model",
                "int8 rows/s",
                "fp32 rows/s",
                "int8/fp32 median / total",
                "quiet pairs",
                f"recall@{s['top_k']} int8 vs fp32 (mean / min)",
                "nDCG@10 fp32 / int8",
                "P@10 fp32 / int8",
            ],
            [
                [
                    c["lang"],
                    c["model"],
                    f"{c['throughput']['median_rows_per_s']['pipeline']:.0f}",
                    f"{c['throughput']['median_rows_per_s']['reference']:.0f}",
                    f"**{c['throughput']['ratio_median']:.2f}** / {c['throughput']['ratio_total']:.2f}",
                    f"{c['throughput']['quiet_pairs']}/{c['throughput']['pairs']}",
                    f"{c['int8_vs_fp32_recall_mean']:.3f} / {c['int8_vs_fp32_recall_min']:.3f}",
                    _both(c, "ndcg@10"),
                    _both(c, "precision@10"),
                ]
                for c in report["cases"]
                if "refused" not in c
            ],
            "llrrrrrrr",
        ),
        "",
        f"Re-check: the first {RECHECK} products embedded again one at a time (another batch "
        "composition), their lists against the stored ones of the same precision - what "
        "`embedding-pipeline quality` reports when nothing changed:",
        "",
        *md_table(
            [
                "lang",
                "model",
                "precision",
                "cos alone vs batched (min / median)",
                f"recall@{s['top_k']} vs stored (mean / min)",
                "lists identical",
            ],
            [
                [
                    c["lang"],
                    c["model"],
                    precision,
                    f"{r['batch_cos_min']:.6f} / {r['batch_cos_median']:.6f}",
                    f"{r['recheck_recall_mean']:.4f} / {r['recheck_recall_min']:.3f}",
                    f"{r['recheck_lists_identical']:.0%}",
                ]
                for c in report["cases"]
                if "refused" not in c
                for precision, r in c["recheck"].items()
            ],
            "lllrrr",
        ),
        "",
        *[
            f"- {c['lang']} {c['model']}: **int8 refused by the parity gate on this CPU** ({c['refused']})"
            for c in report["cases"]
            if "refused" in c
        ],
        "",
        f"CPU flags: {', '.join(report['cpu_int8'])}.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keywords", type=int, default=10_000)
    parser.add_argument("--products", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--noise-budget-s", type=float, default=120.0)
    parser.add_argument("--model-repository", type=Path, default=None, help="reuse published models here")
    parser.add_argument(
        "--quick", action="store_true", help="1000 keywords, 100 products, 1 round, English (MiniLM) only"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--output-dir", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.keywords, args.products, args.rounds = 1000, 100, 1
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    report = run(args)
    write_results(args.output_dir, "int8", args.quick, report, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
