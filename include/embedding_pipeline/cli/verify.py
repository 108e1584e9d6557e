"""``verify``: do Qdrant and Elasticsearch hold the same keyword ids, and the same product ids?

embedding-pipeline verify            both pairs behind the default aliases; exit code 1 on a difference
embedding-pipeline verify --json     the same as JSON (counts, up to 20 example ids per store)

Each pair is compared whole (generations.agreement.verify_pair): every id of the live Qdrant
collection against every id of the live ES index. With nothing configured the services are found
or started as for the search commands.
"""

from __future__ import annotations

import argparse
import json

from embedding_pipeline.cli.services import local_services
from embedding_pipeline.stages.names import KEYWORD_ALIAS, PRODUCT_ALIAS

PAIRS = (("keywords", "keyword_id"), ("products", "product_id"))


def _verify(args: argparse.Namespace) -> int:
    from embedding_pipeline.generations.agreement import verify_pair
    from embedding_pipeline.stores.protocol import StoreAlias
    from embedding_pipeline.stores.registry import open_stores

    results = {}
    with local_services(need_es=True), open_stores() as stores:
        for (what, id_field), alias in zip(PAIRS, (args.keyword_alias, args.product_alias), strict=True):
            collection = stores.live(StoreAlias("qdrant", alias))
            index = stores.live(StoreAlias("es", alias))
            if collection is None or index is None:
                results[what] = {"alias": alias, "missing": "qdrant" if collection is None else "es"}
                continue
            pair = (stores["qdrant"], stores["es"])
            results[what] = verify_pair(pair, (collection, index), id_field).to_report()
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    for what, result in [] if args.json else results.items():
        if "missing" in result:
            missing = f"alias {result['alias']!r} has no {result['missing']} side yet"
            print(f"{what}: {missing}: nothing to compare")
        else:
            print(f"{what}: {'OK' if result['ok'] else 'DIFFERENT'}: {result['detail']}")
    return 0 if all(r.get("ok", True) for r in results.values()) else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("verify", help="check that Qdrant and Elasticsearch hold the same ids")
    p.add_argument("--keyword-alias", default=KEYWORD_ALIAS, help="keyword alias (Qdrant and ES)")
    p.add_argument("--product-alias", default=PRODUCT_ALIAS, help="product alias (Qdrant and ES)")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(func=_verify)
