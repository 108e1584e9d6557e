"""Params -> the typed options the library takes (input kind, link options, how a full rebuild
publishes), and the rules between Params the form's schema cannot state, checked by a run's first
task."""

from __future__ import annotations

from typing import Any

from pipeline_stages.runtime import no_retry_on_setup_errors, store_settings


def check_params(params: dict) -> None:
    """The rules between Params that the form's schema cannot state (``dt_end`` after ``dt`` and at
    most a year on, the link options together, the input kind and delete ratio), checked
    by a run's first task: every broken rule in one line, and the run fails at once instead of
    minutes later in the stage that trips over it."""
    from airflow.sdk.exceptions import AirflowFailException
    from embedding_pipeline.errors import SetupError
    from embedding_pipeline.runs.plan import check_range

    checks = [lambda: check_range(params.get("dt"), params.get("dt_end"))]
    if "input_kind" in params:
        checks.append(lambda: input_spec(params))
    if "link_mode" in params:
        checks.append(lambda: link_options(params))
    problems = []
    for check in checks:
        try:
            check()
        except (SetupError, AirflowFailException) as exc:  # the latter wraps a SetupError
            problems.append(str(exc.__cause__ or exc))
    if problems:
        raise AirflowFailException("Params rejected: " + "; ".join(problems))


def input_spec(params: dict) -> Any:
    """How partitions are read and how much a run may delete (Params; runs.changes)."""
    from embedding_pipeline.runs.input_kinds import InputSpec

    with no_retry_on_setup_errors():
        return InputSpec(params["input_kind"], params["tombstone_column"] or None, params["max_delete_ratio"])


def publish_options(params: dict) -> Any:
    """How a full rebuild gates, swaps and retains (Params ``gate_*``, ``keep_generations``)."""
    from embedding_pipeline.generations.rules import GateRules, Publish

    settings = store_settings()
    with no_retry_on_setup_errors():
        rules = GateRules(
            canaries=params["gate_canaries"],
            min_recall=params["gate_min_recall"],
            recall_tolerance=params["gate_recall_tolerance"],
            quality_sample=params["gate_quality_sample"],
            max_shrink=params["max_delete_ratio"],
        )
        return Publish(rules, params["keep_generations"], settings)


def link_options(params: dict) -> Any:
    from embedding_pipeline.stages.products.options import LinkOptions

    with no_retry_on_setup_errors():
        return LinkOptions(
            keyword_alias=params["qdrant_alias"],
            product_alias=params["product_alias"],
            top_k=params["top_k"],
            score_threshold=params["score_threshold"],
            match_fields=tuple(params["match_fields"] or ()),
            keyword_filter=params["keyword_filter"] or {},
            role=None if params["product_role"] == "none" else params["product_role"],
            hnsw_ef=params["search_hnsw_ef"],
            exact=params["search_exact"],
            link_mode=params["link_mode"],
            keyword_index=params["es_alias"],
            dense_weight=params["dense_weight"],
            lexical_weight=params["lexical_weight"],
            rrf_k=params["rrf_k"],
            fusion_depth=params["fusion_depth"],
        )
