"""An optional person in the loop before a full rebuild's aliases move: Airflow 3's
``ApprovalOperator`` (Browse -> Required Actions in the UI, or the HITL REST API), shown the gate's
numbers. Skipped - and the swap goes ahead - unless the run is ``mode=full`` with ``approve_swap``.
"Reject" skips the go_live task after it: no alias moves, the gated generation stays for
inspection, and in the chain the product stage does not run."""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk.exceptions import AirflowSkipException


class SwapApproval(ApprovalOperator):
    """Approve the swap of a gated generation; the body lists the gate checks finalize reported."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(subject="Swap the aliases to the new generation?", **kwargs)

    def execute(self, context: Any) -> Any:
        params = context["params"]
        if params["mode"] != "full" or not params["approve_swap"]:
            raise AirflowSkipException("no approval asked (mode=full with approve_swap only)")
        (finalize_id,) = self.upstream_task_ids
        summary = context["ti"].xcom_pull(task_ids=finalize_id) or {}
        stage = self.task_id.rpartition(".")[0] or context["dag"].dag_id  # the chain's task group
        self.subject, self.body = approval_text(stage, summary)
        return super().execute(context)


def approval_text(stage: str, summary: dict[str, Any]) -> tuple[str, str]:
    """Subject and Markdown body of the request: the generation, what it replaces, the checks."""
    generation = summary.get("generation") or {}
    new = ", ".join((generation.get("new") or {}).values())
    live = ", ".join(f"{k} -> {v}" for k, v in (generation.get("live_before") or {}).items())
    rows = [
        f"| {c['name']} | {'yes' if c['ok'] else 'no'} | {c['detail']} |"
        for c in generation.get("checks", [])
    ]
    body = "\n".join(
        [
            f"**{stage}**: generation {generation.get('generation')} ({new}) passed its gate.",
            f"Live now: {live}.",
            "",
            "| check | ok | numbers |",
            "|---|---|---|",
            *rows,
            "",
            f"Report: `{summary.get('report')}`. Approve moves every alias in one request per store; "
            "Reject leaves them where they are and keeps the new generation for inspection.",
        ]
    )
    return f"Swap {stage} to generation {generation.get('generation')}?", body
