"""How products are linked to keywords: the options of the link stage and their limits. Light (no
numpy, no clients): the trigger form's Params are built from these limits at DAG parse time."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

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
LinkMode = Literal["dense", "hybrid", "lexical"]
LINK_MODES: tuple[LinkMode, ...] = ("dense", "hybrid", "lexical")
DEFAULT_LINK_MODE: LinkMode = "dense"  # chosen by measurement: bench/results/link-relevance-*.md
DEFAULT_RRF_K = 60  # the constant of Cormack et al. and of Qdrant's and Elasticsearch's RRF
MAX_FUSION_DEPTH = 1000
# Product fields a "match" filter may compare with the same keyword payload field (brand: keywords have none).
MATCHABLE_FIELDS = ("category", "lang")  # fields both tables carry


def keyword_conditions(
    keyword_filter: Mapping[str, Any], match_fields: tuple[str, ...], product: Mapping[str, Any]
) -> dict[str, Any] | None:
    """One product's keyword filter: the static ``keyword_filter``, where each matched field with a
    value in ``product`` replaces the static condition on that field (null: no condition)."""
    conditions = dict(keyword_filter)
    conditions |= {name: product[name] for name in match_fields if product.get(name) is not None}
    return conditions or None


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
    relink_chunk_ids: int = 50_000  # stored products per relink task (maintenance)
    # dense: Qdrant's nearest keywords. lexical: Elasticsearch BM25 of the product name over the
    # keyword text. hybrid: both, fused by weighted reciprocal rank fusion (stages.products.fusion).
    link_mode: LinkMode = DEFAULT_LINK_MODE
    keyword_index: str = KEYWORD_ALIAS  # the keyword alias in Elasticsearch (lexical and hybrid)
    dense_weight: float = 1.0
    lexical_weight: float = 1.0
    rrf_k: int = DEFAULT_RRF_K
    fusion_depth: int = 100  # hits taken from each ranking before fusing (>= top_k)

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
        self._check_fusion()

    def _check_fusion(self) -> None:
        if self.link_mode not in LINK_MODES:
            raise ConfigError(f"link_mode must be one of {list(LINK_MODES)}, got {self.link_mode!r}")
        for name in ("dense_weight", "lexical_weight"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value <= 100.0):
                raise ConfigError(f"{name} must be a number in 0..100, got {value!r}")
        if self.link_mode == "hybrid" and not (self.dense_weight > 0 and self.lexical_weight > 0):
            raise ConfigError(
                "link_mode hybrid fuses two rankings: dense_weight and lexical_weight must both be > 0 "
                f"(got {self.dense_weight} and {self.lexical_weight}; use link_mode dense or lexical)"
            )
        if self.link_mode == "lexical" and self.score_threshold is not None:
            raise ConfigError("score_threshold is a cosine floor for dense hits; link_mode lexical has none")
        if not 1 <= self.rrf_k <= 10_000:
            raise ConfigError(f"rrf_k must be in 1..10000, got {self.rrf_k}")
        if not self.top_k <= self.fusion_depth <= MAX_FUSION_DEPTH:
            raise ConfigError(
                f"fusion_depth must be in top_k..{MAX_FUSION_DEPTH} ({self.top_k}..), got {self.fusion_depth}"
            )

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
            # Dense lists record nothing more, so lists linked before link modes existed still
            # compare equal (no relink of every product after an upgrade).
            **({} if self.link_mode == "dense" else self.fusion_record()),
        }

    @property
    def ranking_depth(self) -> int:
        """Hits taken from each ranking: a hybrid list fuses ``fusion_depth`` of each, a dense or
        lexical list is its ranking's first ``top_k``."""
        return self.fusion_depth if self.link_mode == "hybrid" else self.top_k

    def fusion_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"mode": self.link_mode, "keyword_index": self.keyword_index}
        if self.link_mode == "hybrid":
            record |= {"dense_weight": self.dense_weight, "lexical_weight": self.lexical_weight}
        return record | {"rrf_k": self.rrf_k, "fusion_depth": self.fusion_depth}
