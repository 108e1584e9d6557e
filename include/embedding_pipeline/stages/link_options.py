"""How products are linked to keywords: the options of the link stage and their limits. Light (no
numpy, no clients): the trigger form's Params are built from these limits at DAG parse time."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from embedding_pipeline.errors import ConfigError
from embedding_pipeline.model.registry import ROLES, Role
from embedding_pipeline.stages.names import KEYWORD_ALIAS, PRODUCT_ALIAS

LINK_STAGE = "link"  # the link task: its results and dead letters are reported under this name
MAX_TOP_K = 1000
MAX_HNSW_EF = 4096
# HNSW candidates per query on a Qdrant server. Its own default (ef_construct, 100) gave recall@30
# 0.978 with 13 of 2000 products keeping less than half their list; 256 gave 0.995 for ~0.6 ms a
# query, small next to embedding the product (bench/results/hnsw-recall-2026-12-01.md).
DEFAULT_HNSW_EF = 256
# Product fields a "match" filter may compare with the same keyword payload field (brand: keywords have none).
MATCHABLE_FIELDS = ("category", "lang")  # fields both tables carry


@dataclass(frozen=True)
class LinkOptions:
    """How products are linked; recorded in every product document's ``link`` object."""

    keyword_alias: str = KEYWORD_ALIAS
    product_alias: str = PRODUCT_ALIAS
    top_k: int = 30
    score_threshold: float | None = None
    match_fields: tuple[str, ...] = ()
    keyword_filter: Mapping[str, Any] = field(default_factory=dict)
    role: Role | None = "query"
    hnsw_ef: int | None = DEFAULT_HNSW_EF  # Qdrant server: HNSW candidates per query (None: its default)
    exact: bool = False  # Qdrant server: search without the index (local mode is always exact)
    write_batch: int = 512
    relink_chunk_ids: int = 50_000  # stored products per relink task (link_maintenance)

    def __post_init__(self) -> None:
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise ConfigError(f"top_k must be in 1..{MAX_TOP_K}, got {self.top_k}")
        if self.score_threshold is not None and not -1.0 <= self.score_threshold <= 1.0:
            raise ConfigError(f"score_threshold is a cosine in [-1, 1], got {self.score_threshold}")
        unknown = sorted(set(self.match_fields) - set(MATCHABLE_FIELDS))
        if unknown:
            raise ConfigError(f"match_fields {unknown} unknown; choose from {list(MATCHABLE_FIELDS)}")
        if not isinstance(self.keyword_filter, Mapping) or not all(
            isinstance(v, str | int | bool) or (isinstance(v, list) and v)
            for v in self.keyword_filter.values()
        ):
            raise ConfigError(
                'keyword_filter maps payload fields to a value or a non-empty list, e.g. {"lang": "ja"}; '
                f"got {self.keyword_filter!r}"
            )
        if self.role is not None and self.role not in ROLES:
            raise ConfigError(f"role must be one of {list(ROLES)} or None, got {self.role!r}")
        if self.write_batch < 1 or self.relink_chunk_ids < 1:
            raise ConfigError("write_batch and relink_chunk_ids must be >= 1")
        if self.hnsw_ef is not None and not 1 <= self.hnsw_ef <= MAX_HNSW_EF:
            raise ConfigError(f"hnsw_ef must be in 1..{MAX_HNSW_EF} or None, got {self.hnsw_ef}")

    def to_xcom(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "match_fields": list(self.match_fields),
            "keyword_filter": dict(self.keyword_filter),
        }

    def link_record(self, keyword_collection: str) -> dict[str, Any]:
        """The document's ``link`` object: enough to recompute the list exactly (quality check)."""
        return {
            "top_k": self.top_k,
            "score_threshold": self.score_threshold,
            "match_fields": list(self.match_fields),
            "keyword_filter": json.dumps(dict(self.keyword_filter), ensure_ascii=False, sort_keys=True),
            "role": self.role or "none",
            "keyword_collection": keyword_collection,
            "hnsw_ef": self.hnsw_ef,
            "exact": self.exact,
        }
