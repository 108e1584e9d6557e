"""Finalize: check the accounting identity per sink, write the run report, enforce the threshold.

Identity, per sink S: ``rows_read == written_S + unchanged + deleted_S + dead_lettered_embed +
dead_lettered_S`` (``unchanged``: rows an incremental run had nothing to write for), and every
mapped task balanced on its own (``rows_in == indexed + unchanged + deleted + dead_lettered``).
A mismatch is silent loss somewhere: the run fails after writing the report, so the numbers are
there to debug it.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from embedding_pipeline.errors import PipelineError
from embedding_pipeline.runs.accounting import StageResult
from embedding_pipeline.runs.storage import StoragePath, as_path, write_text

log = logging.getLogger(__name__)


class AccountingError(PipelineError):
    """Rows went missing between stages, or too many rows were dead-lettered."""


def _rate(rows: int, seconds: float) -> float | None:
    return round(rows / seconds, 1) if seconds > 0 else None


def _sum_numeric_extras(results: list[StageResult]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for result in results:
        for key, value in result.extra.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                totals[key] = round(totals.get(key, 0.0) + value, 3)
    return totals


def stage_summary(results: list[StageResult]) -> dict[str, Any]:
    reasons: Counter[str] = Counter()
    for result in results:
        reasons.update(result.dead_letters_by_reason)
    seconds = sum(r.seconds for r in results)
    indexed = sum(r.indexed for r in results)
    return {
        "tasks": len(results),
        "rows_in": sum(r.rows_in for r in results),
        "indexed": indexed,
        "unchanged": sum(r.unchanged for r in results),
        "deleted": sum(r.deleted for r in results),
        "dead_lettered": sum(r.dead_lettered for r in results),
        "dead_letters_by_reason": dict(reasons),
        "task_seconds": round(seconds, 3),
        "rows_per_task_second": _rate(indexed, seconds),
        "unbalanced_tasks": [r.chunk for r in results if not r.balanced],
        "extra": _sum_numeric_extras(results),
        # Per mapped task (at most max_chunks of them): the report view's throughput chart.
        "per_task": [
            {"chunk": r.chunk, "rows_in": r.rows_in, "indexed": r.indexed, "seconds": r.seconds}
            for r in results
        ],
        "dead_letter_paths": sorted(r.dead_letter_path for r in results if r.dead_letter_path),
    }


def build_report(
    embed: list[StageResult],
    sinks: dict[str, list[StageResult]],
    meta: dict[str, Any],
    max_dead_letter_ratio: float,
) -> dict[str, Any]:
    embed_summary = stage_summary(embed)
    rows_read = embed_summary["rows_in"]
    problems: list[str] = []
    if embed_summary["unbalanced_tasks"]:
        problems.append(f"embed tasks do not balance: {embed_summary['unbalanced_tasks']}")
    sink_summaries = {}
    for sink, results in sinks.items():
        summary = stage_summary(results)
        if summary["unbalanced_tasks"]:
            problems.append(f"{sink} tasks do not balance: {summary['unbalanced_tasks']}")
        staged = embed_summary["indexed"] + embed_summary["deleted"]
        if summary["rows_in"] != staged:
            problems.append(f"{sink} received {summary['rows_in']} rows but {staged} were staged")
        # Per store: rows_read == written + unchanged + deleted + dead-lettered (embed's and the store's)
        accounted = (
            summary["indexed"]
            + embed_summary["unchanged"]
            + summary["deleted"]
            + summary["dead_lettered"]
            + embed_summary["dead_lettered"]
        )
        if accounted != rows_read:
            problems.append(
                f"{sink}: rows_read {rows_read} != written {summary['indexed']} + unchanged "
                f"{embed_summary['unchanged']} + deleted {summary['deleted']} + dead letters "
                f"{summary['dead_lettered'] + embed_summary['dead_lettered']}"
            )
        dead = summary["dead_lettered"] + embed_summary["dead_lettered"]
        summary["dead_letter_ratio"] = round(dead / rows_read, 6) if rows_read else 0.0
        if rows_read and dead / rows_read > max_dead_letter_ratio:
            problems.append(
                f"{sink}: dead-letter ratio {dead / rows_read:.4f} exceeds the threshold "
                f"{max_dead_letter_ratio}"
            )
        sink_summaries[sink] = summary
    return {
        **meta,
        "finished_at": datetime.now(UTC).isoformat(),
        "status": "failed" if problems else ("no_data" if rows_read == 0 else "ok"),
        "problems": problems,
        "rows_read": rows_read,
        "embed": embed_summary,
        "sinks": sink_summaries,
        "max_dead_letter_ratio": max_dead_letter_ratio,
    }


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Run report: {report.get('dag_id', '')} {report.get('partitions', '')}",
        "",
        f"status **{report['status']}**, rows read {report['rows_read']}, model "
        f"{report.get('model_name')} v{report.get('model_version')}",
        "",
        "| stage | tasks | rows in | written | unchanged | deleted | dead letters | task-seconds "
        "| rows/task-s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, summary in [("embed", report["embed"]), *report["sinks"].items()]:
        lines.append(
            f"| {name} | {summary['tasks']} | {summary['rows_in']} | {summary['indexed']} | "
            f"{summary['unchanged']} | {summary['deleted']} | {summary['dead_lettered']} | "
            f"{summary['task_seconds']} | {summary['rows_per_task_second']} |"
        )
    extra = report["embed"]["extra"]
    if report.get("input_kind"):
        lines += [
            "",
            f"Incremental ({report['input_kind']}): embedded {int(extra.get('embedded', 0))}, fields "
            f"updated {int(extra.get('fields_updated', 0))}, unchanged {report['embed']['unchanged']} "
            f"(superseded by a later date {int(extra.get('superseded', 0))}, tombstones for unknown ids "
            f"{int(extra.get('unknown_deletes', 0))}), deleted {report['embed']['deleted']} of "
            f"{report.get('live_before', 0)} stored ids.",
        ]
    lines += ["", *_identity_lines(report)]
    reasons: Counter[str] = Counter(report["embed"]["dead_letters_by_reason"])
    for summary in report["sinks"].values():
        reasons.update(summary["dead_letters_by_reason"])
    if reasons:
        lines += ["", "Dead letters by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))]
    relink = report.get("relink")
    if relink:
        extra = relink["extra"]
        lines += [
            "",
            f"Relinked {relink['indexed']} stored products ({report.get('relink_reason')}): lists "
            f"unchanged {int(extra.get('unchanged_lists', 0))}, deleted keywords dropped "
            f"{int(extra.get('dropped_deleted_keywords', 0))}, dead letters {relink['dead_lettered']}.",
        ]
    if report.get("agreement"):
        agreement = report["agreement"]
        lines += ["", f"Stores agree: {'yes' if agreement['ok'] else '**no**'} ({agreement['detail']})."]
    if report.get("generation"):
        lines += ["", *_generation_lines(report["generation"])]
    if report["problems"]:
        lines += ["", "Problems:", *[f"- {p}" for p in report["problems"]]]
    return "\n".join(lines) + "\n"


def _identity_lines(report: dict[str, Any]) -> list[str]:
    """Per store, where every row read went (what finalize checks), with the embed step's dead
    letters named: "read 6667 = written 6622 + ... + dead letters 45 (embed 45, es 0)"."""
    embed = report["embed"]
    return [
        f"- {name}: read {report['rows_read']} = written {part['indexed']} + unchanged "
        f"{embed['unchanged']} + deleted {part['deleted']} + dead letters "
        f"{embed['dead_lettered'] + part['dead_lettered']} (embed {embed['dead_lettered']}, "
        f"{name} {part['dead_lettered']})"
        for name, part in report["sinks"].items()
    ]


def _generation_lines(section: dict[str, Any]) -> list[str]:
    """The full rebuild: which generation was built beside which, the gate, the swap, retention."""
    live = ", ".join(f"{store} -> {name}" for store, name in section["live_before"].items())
    lines = [
        f"Full rebuild: generation {section['generation']} ({', '.join(section['new'].values())}), "
        f"live before: {live}; **{section.get('status', 'built')}**",
        "",
        "| gate check | ok | numbers |",
        "|---|---|---|",
        *[f"| {c['name']} | {'yes' if c['ok'] else '**no**'} | {c['detail']} |" for c in section["checks"]],
    ]
    after = [f"Gate: {section['gate_seconds']} s."] if "gate_seconds" in section else []
    if section["swapped"]:
        moved = "; ".join(f"{m['store']} {m['from']} -> {m['to']}" for m in section["swapped"])
        after.append(f"Aliases moved: {moved} ({section.get('swap_seconds')} s).")
    if section["dropped"]:
        after.append("Old generations dropped: " + ", ".join(section["dropped"]))
    if section.get("error"):
        after.append(f"Error: {section['error']}")
    return [*lines, "", *after] if after else lines


def read_report(run_dir: str | StoragePath) -> dict[str, Any]:
    """The ``report.json`` a finalize task wrote into ``run_dir``."""
    return json.loads((as_path(run_dir) / "report.json").read_text())


def write_report(run_dir: str | StoragePath, report: dict[str, Any]) -> None:
    """``report.json`` / ``report.md`` into ``run_dir``, and the Markdown into the log (the task
    log, where operators look first)."""
    run_dir = as_path(run_dir)
    markdown = render_markdown(report)
    write_text(run_dir / "report.json", json.dumps(report, indent=2, ensure_ascii=False))
    write_text(run_dir / "report.md", markdown)
    log.info("run report (%s):\n%s", run_dir / "report.md", markdown)


def finalize(
    run_dir: str | StoragePath,
    embed: list[StageResult],
    sinks: dict[str, list[StageResult]],
    meta: dict[str, Any],
    max_dead_letter_ratio: float,
) -> dict[str, Any]:
    """Write the report (:func:`write_report`); raise ``AccountingError`` on problems."""
    report = build_report(embed, sinks, meta, max_dead_letter_ratio)
    write_report(run_dir, report)
    if report["problems"]:
        raise AccountingError(
            "; ".join(report["problems"]) + f" (report: {as_path(run_dir) / 'report.json'})"
        )
    return report


def summary(report: dict[str, Any], run_dir: str | StoragePath) -> dict[str, Any]:
    """The part of a report that goes to XCom: enough that the identity reads off it - per store,
    ``rows_read == indexed + embed.unchanged + deleted + embed.dead_lettered + dead_lettered`` -
    with every dead letter's reason, and where the full report is."""

    def dead(part: dict[str, Any]) -> dict[str, Any]:
        return {
            "dead_lettered": part["dead_lettered"],
            "dead_letters_by_reason": part["dead_letters_by_reason"],
        }

    generation = report.get("generation")
    return (
        {k: report.get(k) for k in ("status", "rows_read", "partitions", "missing_partitions")}
        | {
            "embed": {"unchanged": report["embed"]["unchanged"], **dead(report["embed"])},
            "sinks": {
                name: {"indexed": s["indexed"], "deleted": s["deleted"], **dead(s)}
                for name, s in report["sinks"].items()
            },
            "report": str(as_path(run_dir) / "report.md"),
        }
        | (
            {"generation": {k: generation[k] for k in GENERATION_SUMMARY if k in generation}}
            if generation
            else {}
        )
    )


# What XCom carries of a full rebuild's report section (the approval step shows it).
GENERATION_SUMMARY = ("generation", "status", "new", "live_before", "checks", "swapped")
# What a stage's prepare task hands its teardown, not a result: kept out of the report.
TEARDOWN_STATE = ("es_previous_settings", "generation")


def finalize_run(
    planned: dict[str, Any],
    prepared: dict[str, Any],
    embedded: list[dict[str, Any]],
    sinks: dict[str, list[dict[str, Any]]],
    meta: dict[str, Any],
    max_dead_letter_ratio: float,
) -> dict[str, Any]:
    """:func:`finalize` from what the tasks passed through XCom: the plan, what the prepare task
    set up (model, physical index and collection names), the embed tasks' outputs and each sink's
    ``StageResult`` dicts. The finalize task of every stage calls it."""
    meta = {
        **meta,
        **{key: value for key, value in prepared.items() if key not in TEARDOWN_STATE},
        "partitions": planned["partitions"],
        "missing_partitions": planned["missing_partitions"],
        "rejected_files": planned["rejected_files"],
        "chunks": len(planned["chunks"]),
    }
    return finalize(
        planned["run_dir"],
        [StageResult.from_xcom(e["result"]) for e in embedded],
        {name: [StageResult.from_xcom(r) for r in results] for name, results in sinks.items()},
        meta,
        max_dead_letter_ratio,
    )
