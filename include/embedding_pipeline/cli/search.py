"""``search`` and ``quality`` subcommands: look at what the pipeline stored, from a terminal.

    search text QUERY [--size N] [--alias keywords]        keywords by text (Elasticsearch)
    search meaning QUERY [--top-k N] [--role query|passage] [--alias keywords] [--model NAME]
                                                           keywords by meaning (embed, then Qdrant)
    search product PRODUCT_ID [--alias products] [--top N] a product and its linked keywords
    quality [--sample N] [--seed S] [--top-k K] [--product-alias] [--keyword-alias] [--model]
                                                           recall@K of the stored links vs exact search

Handlers only open clients, through a :class:`~embedding_pipeline.cli.services.Services` object,
and pass them to functions that take clients and return the text to print (:func:`search_text`,
:func:`search_meaning`, :func:`show_product`, :func:`show_keyword_products`; ``quality`` renders
:func:`~embedding_pipeline.stages.products.quality.check_link_quality`). Where the services come from
(settings from the environment by default) thus stays out of the work, and a caller can wrap or
replace it. Errors are :class:`~embedding_pipeline.errors.PipelineError` subclasses, which
``cli.main`` prints as ``error: ...`` with a non-zero exit code. A recall below 1 is a
measurement, not an error.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from elasticsearch import Elasticsearch
from qdrant_client.client_base import QdrantBase

from embedding_pipeline.cli.format import clip, format_table
from embedding_pipeline.cli.services import Services
from embedding_pipeline.errors import PipelineError
from embedding_pipeline.model.registry import ROLES, Role
from embedding_pipeline.serving.client import EmbeddingClient
from embedding_pipeline.settings import data_root
from embedding_pipeline.stages.keywords.documents import search_keywords
from embedding_pipeline.stages.names import KEYWORD_ALIAS, PRODUCT_ALIAS
from embedding_pipeline.stages.products.documents import products_linked_to, search_setting
from embedding_pipeline.stages.products.quality import check_link_quality, render_report
from embedding_pipeline.stages.products.relevance import has_labels, render, score_lists, stored_lists
from embedding_pipeline.stores.elasticsearch.read import MAX_RESULT_WINDOW, get_document, sample_documents
from embedding_pipeline.stores.qdrant.collections import collection_target_retrying
from embedding_pipeline.stores.qdrant.search import SearchOptions, search


class ProductNotFoundError(PipelineError):
    """No product document with the requested id behind the alias."""


def _keyword_table(hits: Sequence[tuple[Mapping[str, Any], float]]) -> list[str]:
    rows = [
        [
            str(rank),
            f"{score:.4f}",
            clip(payload.get("keyword", "")),
            str(payload.get("keyword_id", "")),
            clip(payload.get("category") or "-", 24),
            str(payload.get("lang") or "-"),
        ]
        for rank, (payload, score) in enumerate(hits, start=1)
    ]
    return format_table(
        ["rank", "score", "keyword", "keyword_id", "category", "lang"], rows, frozenset({0, 1})
    )


# --------------------------------------------------------------------------------------------------
# The work: functions that take clients and return what to print
# --------------------------------------------------------------------------------------------------


def search_text(es: Elasticsearch, query: str, *, alias: str = KEYWORD_ALIAS, size: int = 10) -> str:
    """Keywords whose text matches ``query`` (Elasticsearch, ``cjk`` analyzer), best first."""
    docs = search_keywords(es, alias, query, size=size)
    if not docs:
        return f"no keyword in {alias!r} matches {query!r}"
    title = f"{len(docs)} keyword(s) in {alias!r} matching {query!r} (Elasticsearch score):"
    return "\n".join([title, *_keyword_table([(d, float(d["_score"])) for d in docs])])


def search_meaning(
    qdrant: QdrantBase,
    embedder: EmbeddingClient,
    query: str,
    *,
    alias: str = KEYWORD_ALIAS,
    top_k: int = 10,
    role: Role = "query",
) -> str:
    """Keywords nearest in meaning to ``query``: embedded with ``role``'s prefix, searched in Qdrant.

    The collection is resolved before embedding so a missing alias fails fast, and the search
    passes the client's model so vectors of another model are refused rather than compared.
    """
    target = collection_target_retrying(qdrant, alias)
    vectors = embedder.embed([query], role=role).vectors
    model = f"{embedder.settings.model_name} v{embedder.published.version}"
    options = SearchOptions(
        top_k, model_name=embedder.settings.model_name, model_version=embedder.published.version
    )
    hits = search(qdrant, alias, vectors, options)[0]
    title = (
        f"{len(hits)} keyword(s) nearest to {query!r} in {alias!r} -> {target.name} ({model}, role {role}):"
    )
    return "\n".join([title, *_keyword_table([(h.payload, h.score) for h in hits])])


def _link_summary(doc: Mapping[str, Any]) -> str:
    link = doc.get("link") or {}
    keyword_filter = link.get("keyword_filter")
    parts = [
        f"{doc.get('model_name')} v{doc.get('model_version')}",
        f"role {link.get('role') or 'none'}",
        f"top_k {link.get('top_k')}",
        f"threshold {'none' if link.get('score_threshold') is None else link['score_threshold']}",
        f"match_fields {','.join(link.get('match_fields') or []) or 'none'}",
        f"filter {keyword_filter if keyword_filter not in (None, '', '{}') else 'none'}",
        f"search {search_setting(link)}",
        f"collection {link.get('keyword_collection')}",
    ]
    return ", ".join(parts)


def show_product(es: Elasticsearch, product_id: str, *, alias: str = PRODUCT_ALIAS, top: int = 10) -> str:
    """One product document: its fields, how it was linked, and its first ``top`` keywords."""
    doc = get_document(es, alias, product_id)
    if doc is None:
        raise ProductNotFoundError(f"no product {product_id!r} in {alias!r}")
    keywords = sorted(doc.get("keywords") or [], key=lambda k: k.get("rank", 0))
    fields = [
        ["product", f"{doc.get('product_id')}  {clip(doc.get('product_name', ''), 80)}"],
        *[[name, clip(doc[name], 80)] for name in ("category", "brand", "dt") if doc.get(name) is not None],
        ["linked", f"{doc.get('linked_at')} with {_link_summary(doc)}"],
        ["keywords", f"{len(keywords)}" + (f" (showing {top})" if len(keywords) > top else "")],
    ]
    lines = format_table(["", ""], fields, frozenset())[1:]
    if keywords:
        rows = [
            [
                str(k.get("rank")),
                f"{float(k.get('score', 0.0)):.4f}",
                clip(k.get("keyword", "")),
                str(k.get("keyword_id")),
            ]
            for k in keywords[:top]
        ]
        lines += format_table(["rank", "score", "keyword", "keyword_id"], rows, frozenset({0, 1}))
    return "\n".join(lines)


def show_keyword_products(
    es: Elasticsearch,
    keyword_id: str,
    *,
    product_alias: str = PRODUCT_ALIAS,
    keyword_alias: str = KEYWORD_ALIAS,
    size: int = 10,
) -> str:
    """A keyword and the products linked to it (the reverse of ``search product``), best link first."""
    keyword = get_document(es, keyword_alias, keyword_id)
    total, products = products_linked_to(es, product_alias, keyword_id, size=size)
    if keyword:
        name = f"{keyword_id}  {clip(keyword.get('keyword', ''), 80)}"
    else:  # links may outlive a keyword (its index rebuilt without it): still show them
        name = f"{keyword_id} (not in {keyword_alias!r})"
    title = f"keyword {name}: linked from {total} product(s) in {product_alias!r}"
    if not products:
        return title
    rows = [
        [
            str(p.get("rank")),
            f"{float(p.get('score') or 0.0):.4f}",
            clip(p.get("product_name", "")),
            str(p.get("product_id")),
        ]
        for p in products
    ]
    shown = f" (showing {len(products)})" if total > len(products) else ""
    return "\n".join(
        [title + shown, *format_table(["rank", "score", "product", "product_id"], rows, frozenset({0, 1}))]
    )


# --------------------------------------------------------------------------------------------------
# Argument parsing and handlers
# --------------------------------------------------------------------------------------------------


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


_COUNT = _bounded_int(1, MAX_RESULT_WINDOW)


def _text(services: Services, args: argparse.Namespace) -> int:
    with services.elasticsearch() as es:
        print(search_text(es, args.query, alias=args.alias, size=args.size))
    return 0


def _collection_model(qdrant: QdrantBase, alias: str, given: str | None) -> str | None:
    """The model to embed with: the one asked for, else the one that embedded the collection (the
    environment's default model would fail the model check on any other collection)."""
    if given is not None:
        return given
    return str(collection_target_retrying(qdrant, alias).model_name or "") or None


def _meaning(services: Services, args: argparse.Namespace) -> int:
    with (
        services.qdrant() as qdrant,
        services.embedding(_collection_model(qdrant, args.alias, args.model)) as embedder,
    ):
        print(
            search_meaning(qdrant, embedder, args.query, alias=args.alias, top_k=args.top_k, role=args.role)
        )
    return 0


def _product(services: Services, args: argparse.Namespace) -> int:
    with services.elasticsearch() as es:
        print(show_product(es, args.product_id, alias=args.alias, top=args.top))
    return 0


def _keyword(services: Services, args: argparse.Namespace) -> int:
    with services.elasticsearch() as es:
        text = show_keyword_products(
            es, args.keyword_id, product_alias=args.alias, keyword_alias=args.keyword_alias, size=args.size
        )
        print(text)
    return 0


def _quality(services: Services, args: argparse.Namespace) -> int:
    with (
        services.elasticsearch() as es,
        services.qdrant() as qdrant,
        services.embedding(_collection_model(qdrant, args.keyword_alias, args.model)) as embedder,
    ):
        report = check_link_quality(
            es,
            qdrant,
            embedder,
            args.product_alias,
            args.keyword_alias,
            sample=args.sample,
            seed=args.seed,
            top_k=args.top_k,
        )
        print(render_report(report))
        labels = _labels_root(args.labels)
        if labels is not None:
            docs = sample_documents(es, args.product_alias, args.sample, args.seed, id_field="product_id")
            print(render(score_lists(stored_lists(docs), labels)))
    return 0


def _labels_root(given: Path | None) -> Path | None:
    """The sample data root whose relevance labels score the lists: the one given (which must hold
    labels), else the configured data root when it holds them."""
    if given is not None:
        if not has_labels(given):
            raise SystemExit(f"--labels {given}: no keywords/ and products/ partitions with _labels files")
        return given
    return data_root() if has_labels(data_root()) else None


def register(subparsers: argparse._SubParsersAction, services: Services | None = None) -> None:
    """Add ``search {text,meaning,product,keyword}`` and ``quality`` to a CLI's subparsers.

    ``services`` provides the clients (default: :class:`Services`, settings from the environment).
    """
    services = services or Services()
    model_help = "model name on the inference server (default: the model that embedded the keywords)"

    search = subparsers.add_parser("search", help="search keywords by text or meaning, show a product")
    kinds = search.add_subparsers(dest="search_kind", required=True)

    p = kinds.add_parser("text", help="keywords whose text matches QUERY (Elasticsearch)")
    p.add_argument("query")
    p.add_argument("--size", type=_COUNT, default=10)
    p.add_argument("--alias", default=KEYWORD_ALIAS, help="Elasticsearch keyword alias")
    p.set_defaults(func=partial(_text, services))

    p = kinds.add_parser("meaning", help="keywords nearest in meaning to QUERY (embedding + Qdrant)")
    p.add_argument("query")
    p.add_argument("--top-k", type=_COUNT, default=10)
    p.add_argument("--role", choices=ROLES, default="query", help="prefix role the query is embedded with")
    p.add_argument("--alias", default=KEYWORD_ALIAS, help="Qdrant keyword alias")
    p.add_argument("--model", default=None, help=model_help)
    p.set_defaults(func=partial(_meaning, services))

    p = kinds.add_parser("product", help="a product document and its linked keywords")
    p.add_argument("product_id")
    p.add_argument("--alias", default=PRODUCT_ALIAS, help="Elasticsearch product alias")
    p.add_argument("--top", type=_COUNT, default=10, help="keywords to show")
    p.set_defaults(func=partial(_product, services))

    p = kinds.add_parser("keyword", help="a keyword and the products linked to it, best link first")
    p.add_argument("keyword_id")
    p.add_argument("--alias", default=PRODUCT_ALIAS, help="Elasticsearch product alias")
    p.add_argument("--keyword-alias", default=KEYWORD_ALIAS, help="Elasticsearch keyword alias")
    p.add_argument("--size", type=_COUNT, default=10, help="products to show")
    p.set_defaults(func=partial(_keyword, services))

    p = subparsers.add_parser(
        "quality", help="recall@K of the stored product -> keyword links against exact search"
    )
    p.add_argument("--sample", type=_COUNT, default=200, help="product documents to check")
    p.add_argument("--seed", type=int, default=0, help="the same seed checks the same products")
    p.add_argument("--top-k", type=_COUNT, default=None, help="K (default: each product's linked top_k)")
    p.add_argument("--product-alias", default=PRODUCT_ALIAS)
    p.add_argument("--keyword-alias", default=KEYWORD_ALIAS, help="Qdrant keyword alias or collection")
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="sample data root with relevance labels (default: EMBEDDING_DATA_ROOT when it has them)",
    )
    p.set_defaults(func=partial(_quality, services))
