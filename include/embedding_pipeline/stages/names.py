"""The default aliases readers address. Physical collections and indices carry a generation
(``keywords-g1``) behind them; see the stores."""

KEYWORD_ALIAS = "keywords"  # the keyword collection (Qdrant) and the keyword index (Elasticsearch)
PRODUCT_ALIAS = "products"  # the product index with nested keyword links (Elasticsearch)
