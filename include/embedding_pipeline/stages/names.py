"""The chain's names, light enough for DAG files and trigger forms: the stages in the order the
chain runs them, the default aliases readers address, and which aliases each stage writes.
Physical collections and indices carry a generation (``keywords-g1``) behind an alias; see the
stores."""

from __future__ import annotations

from embedding_pipeline.stores.protocol import StoreAlias

KEYWORD_STAGE = "keyword_index"
PRODUCT_STAGE = "product_link"
STAGES = (KEYWORD_STAGE, PRODUCT_STAGE)  # chain order: products link against the keywords

KEYWORD_ALIAS = "keywords"  # the keyword collection (Qdrant) and the keyword index (Elasticsearch)
PRODUCT_ALIAS = "products"  # the product index with nested keyword links (Elasticsearch)


def stage_aliases(keyword_qdrant: str, keyword_es: str, product: str) -> dict[str, list[StoreAlias]]:
    """The aliases of each stage: keyword index (Qdrant + ES), product link (Qdrant + ES)."""
    return {
        KEYWORD_STAGE: [StoreAlias("qdrant", keyword_qdrant), StoreAlias("es", keyword_es)],
        PRODUCT_STAGE: [StoreAlias("qdrant", product), StoreAlias("es", product)],
    }
