"""Link relevance benchmark: which model and which link mode give the best product -> keyword lists?

For each language (ja, en) the sample generator writes keywords and products with relevance labels
(``sample.labels``: 2 = same category and head noun, 1 = same category). For each model (MiniLM,
me5-small, both fp32 as the demo publishes them) the products are linked to the keywords in each
link mode, with the functions the link stage uses:

- dense: exact top-K by cosine (what local-mode Qdrant returns; a server's HNSW at the default
  ``hnsw_ef`` is within recall 0.995 of it, bench/results/hnsw-recall-*.md);
- lexical: Elasticsearch BM25 of the product name over the keyword text (``match_many``, the
  keyword index's ``cjk`` analyzer), on the noida-db emulator;
- hybrid: both fused by ``link_fusion.rrf`` (weights dense:lexical 1:1, 2:1 and 1:2, k 60, depth 100).

Quality: ``link_relevance.score_lists`` (nDCG@10, precision@10, MRR against the labels). Speed:
products/s of one link task's work per product: embedding the name (for dense and hybrid), the
dense search (numpy brute force here; Qdrant's cost is in bench_product_link.py) and the lexical
search (on the emulator, which scans every document per query: a real cluster answers in ms).

Run: ``.venv/bin/python bench/bench_link_relevance.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from contextlib import ExitStack
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
from harness import BENCH_DIR, md_table, pipeline_machine_info, publish, scratch_dir, write_results

log = logging.getLogger("bench")

LANGS = ("ja", "en")
BENCH_MODELS = ("minilm", "me5-small")
HYBRID_WEIGHTS = ((1.0, 1.0), (2.0, 1.0), (1.0, 2.0))
TOP_K = 10  # the metrics look at the first 10
DEPTH = 100  # fusion depth, the link_mode default
RRF_K = 60
EMBED_BATCH = 256


def _read(root: Path, table: str) -> tuple[list[str], list[str], list[str | None]]:
    import pyarrow.dataset as ds

    data = ds.dataset(root / table, format="parquet", partitioning="hive").to_table()
    id_column, text_column = (
        ("keyword_id", "keyword") if table == "keywords" else ("product_id", "product_name")
    )
    return (
        [str(i) for i in data[id_column].to_pylist()],
        data[text_column].to_pylist(),
        data["category"].to_pylist(),
    )


def _index_keywords(es: Any, index: str, ids: list[str], texts: list[str]) -> float:
    from elasticsearch.helpers import bulk
    from embedding_pipeline.stages.keywords.documents import keyword_mappings

    started = time.perf_counter()
    es.indices.create(index=index, mappings=keyword_mappings(model_name="bench", model_version=1, dim=1))
    bulk(
        es,
        ({"_index": index, "_id": i, "keyword_id": i, "keyword": t} for i, t in zip(ids, texts, strict=True)),
    )
    es.indices.refresh(index=index)
    return time.perf_counter() - started


def _embed(client: Any, texts: list[str], role: str) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    parts = [
        client.embed(texts[i : i + EMBED_BATCH], role=role).vectors for i in range(0, len(texts), EMBED_BATCH)
    ]
    return np.concatenate(parts), time.perf_counter() - started


def _ranked(ids: list[str], scores: np.ndarray, depth: int) -> list[tuple[dict[str, Any], float]]:
    """The first ``depth`` keywords by score in the link stage's order (``link_fusion.best``)."""
    from embedding_pipeline.stages.products.fusion import TIE_MARGIN, best

    top = np.argpartition(-scores, min(depth, len(scores) - 1))[: depth + TIE_MARGIN]
    return best([({"keyword_id": ids[j]}, float(scores[j])) for j in top], depth)


def _metrics(lists: dict[str, list[str]], root: Path) -> dict[str, float]:
    from embedding_pipeline.stages.products.relevance import score_lists

    report = score_lists(lists, root, k=TOP_K)
    return {
        "ndcg@10": report.ndcg,
        "precision@10": report.precision,
        "mrr": report.mrr,
        "products": report.products,
    }


def run_lang(
    lang: str, args: argparse.Namespace, scratch: Path, es: Any, server: Any, published: dict[str, dict]
) -> list[dict]:
    from embedding_pipeline.sample.generate import generate
    from embedding_pipeline.serving.client import EmbeddingClient
    from embedding_pipeline.settings import ServerSettings
    from embedding_pipeline.stages.products.fusion import TIE_MARGIN, best, rrf
    from embedding_pipeline.stores.elasticsearch.read import match_many

    root = scratch / f"data-{lang}"
    generate(
        root,
        keywords=args.keywords,
        products=args.products,
        dates=[date(2024, 1, 1)],
        lang=lang,
        seed=args.seed,
    )
    keyword_ids, keyword_texts, _ = _read(root, "keywords")
    product_ids, product_texts, _ = _read(root, "products")
    index = f"bench-keywords-{lang}"
    index_s = _index_keywords(es, index, keyword_ids, keyword_texts)
    started = time.perf_counter()
    lexical = []
    for i in range(0, len(product_texts), 20):
        texts = product_texts[i : i + 20]
        found = match_many(es, index, "keyword", texts, DEPTH + TIE_MARGIN, None, ["keyword_id"])
        lexical += [[({"keyword_id": d["keyword_id"]}, float(d["_score"])) for d in docs] for docs in found]
    lexical_s = (time.perf_counter() - started) / len(product_texts)
    lexical = [best(hits, DEPTH) for hits in lexical]
    rows = [
        {
            "lang": lang,
            "model": "-",
            "mode": "lexical",
            **_metrics(
                {
                    p: [h[0]["keyword_id"] for h in hits[:TOP_K]]
                    for p, hits in zip(product_ids, lexical, strict=True)
                },
                root,
            ),
            "products_per_s": 1.0 / lexical_s,
            "lexical_ms": lexical_s * 1000,
        }
    ]
    log.info(
        "%s: %d keywords indexed in %.1fs; lexical %.1f ms a product",
        lang,
        len(keyword_ids),
        index_s,
        lexical_s * 1000,
    )
    for kind in BENCH_MODELS:
        settings = ServerSettings(
            host="127.0.0.1",
            grpc_port=server.grpc_port,
            http_port=server.http_port,
            model_repository=server.repository,
            model_name=published[kind]["name"],
            timeout_s=120,
        )
        with EmbeddingClient(settings) as client:
            client.wait_until_ready()
            keyword_vectors, keyword_s = _embed(client, keyword_texts, "passage")
            product_vectors, product_s = _embed(client, product_texts, "query")
        started = time.perf_counter()
        dense = [_ranked(keyword_ids, keyword_vectors @ v, DEPTH) for v in product_vectors]
        dense_s = (time.perf_counter() - started) / len(product_ids)
        embed_s = product_s / len(product_ids)
        log.info(
            "%s %s: keywords %.0f rows/s, products %.0f rows/s",
            lang,
            kind,
            len(keyword_texts) / keyword_s,
            1 / embed_s,
        )
        base = {"lang": lang, "model": kind, "keywords_per_s": len(keyword_texts) / keyword_s}
        rows.append(
            {
                **base,
                "mode": "dense",
                **_metrics(
                    {
                        p: [h[0]["keyword_id"] for h in hits[:TOP_K]]
                        for p, hits in zip(product_ids, dense, strict=True)
                    },
                    root,
                ),
                "products_per_s": 1.0 / (embed_s + dense_s),
            }
        )
        for dense_weight, lexical_weight in HYBRID_WEIGHTS:
            started = time.perf_counter()
            fused = [
                rrf([(d, dense_weight), (x, lexical_weight)], RRF_K, TOP_K)
                for d, x in zip(dense, lexical, strict=True)
            ]
            fuse_s = (time.perf_counter() - started) / len(product_ids)
            rows.append(
                {
                    **base,
                    "mode": f"hybrid {dense_weight:g}:{lexical_weight:g}",
                    **_metrics(
                        {
                            p: [h[0]["keyword_id"] for h in hits]
                            for p, hits in zip(product_ids, fused, strict=True)
                        },
                        root,
                    ),
                    "products_per_s": 1.0 / (embed_s + dense_s + lexical_s + fuse_s),
                }
            )
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    from embedding_pipeline.local.es_emulator import EsEmulator
    from embedding_pipeline.serving.process import LocalServer

    with scratch_dir(args.keep) as scratch, ExitStack() as stack:
        repository = args.model_repository or scratch / "model_repository"
        repository.mkdir(parents=True, exist_ok=True)
        published = {kind: publish(kind, repository, scratch) for kind in BENCH_MODELS}
        server = stack.enter_context(LocalServer(repository, threads=0, log_path=scratch / "server.log"))
        emulator = stack.enter_context(EsEmulator(scratch / "es"))
        from elasticsearch import Elasticsearch

        es = Elasticsearch(emulator.url, request_timeout=600)
        rows = [row for lang in LANGS for row in run_lang(lang, args, scratch, es, server, published)]
    return {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": pipeline_machine_info(),
        "settings": {
            "keywords": args.keywords,
            "products": args.products,
            "seed": args.seed,
            "top_k": TOP_K,
            "fusion_depth": DEPTH,
            "rrf_k": RRF_K,
        },
        "rows": rows,
    }


def markdown(report: dict[str, Any]) -> str:
    s, m = report["settings"], report["machine"]
    lines = [
        f"# Link relevance, {report['date']}",
        "",
        f"{s['keywords']} keywords and {s['products']} products per language (sample generator, "
        f"seed {s['seed']}, labels: 2 = same category and head noun, 1 = same category); metrics over "
        f"the first {s['top_k']} links; hybrid = RRF (k {s['rrf_k']}, depth {s['fusion_depth']}) with "
        "weights dense:lexical. Lexical = BM25 on the noida-db emulator (`cjk` analyzer). "
        f"{m['cpu_count']} cores, {m['cpu_model']}.",
        "",
        *md_table(
            ["lang", "model", "mode", "nDCG@10", "P@10", "MRR", "products/s"],
            [
                [
                    r["lang"],
                    r["model"],
                    r["mode"],
                    f"{r['ndcg@10']:.3f}",
                    f"{r['precision@10']:.3f}",
                    f"{r['mrr']:.3f}",
                    f"{r['products_per_s']:.1f}",
                ]
                for r in report["rows"]
            ],
            "lllrrrr",
        ),
        "",
        "Embedding throughput (keywords, passage role, local server, fp32): "
        + ", ".join(
            f"{r['lang']} {r['model']} {r['keywords_per_s']:.0f} rows/s"
            for r in report["rows"]
            if r["mode"] == "dense"
        ),
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keywords", type=int, default=10_000)
    parser.add_argument("--products", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--model-repository", type=Path, default=None, help="reuse published models here")
    parser.add_argument("--quick", action="store_true", help="1000 keywords, 50 products: a smoke run")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--output-dir", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.keywords, args.products = 1000, 50
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("elastic_transport").setLevel(logging.WARNING)
    args = parse_args(argv)
    report = run(args)
    write_results(args.output_dir, "link-relevance", args.quick, report, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
