"""The run report as one HTML page: what the Airflow UI's "Pipeline report" tab shows for a DAG run
(``plugins/pipeline_report``), rendered from the files the finalize tasks wrote.

Plain HTML and inline SVG, no script: Airflow shows external views in a sandboxed iframe that runs
none. Every value is escaped; only counts, reasons, paths and a few dead-letter rows are shown - no
setting, URL or credential is in a report, and none is read here. Each number carries a
``data-field`` with its place in ``report.json`` (``keyword_index.sinks.qdrant.indexed``), so a
test, or a scraper, can check the page against the file.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from html import escape
from typing import Any

from embedding_pipeline.runs.dead_letter import DEAD_LETTER_DIRNAME
from embedding_pipeline.runs.plan import run_dir_for
from embedding_pipeline.runs.report import read_report
from embedding_pipeline.runs.storage import StoragePath

STAGES = ("keyword_index", "product_link")
EXAMPLES_PER_REASON = 3
MAX_SCANNED_LETTERS = 5000  # dead-letter lines read for examples, whatever the run's size
MAX_BARS = 64  # mapped tasks drawn per chart; the table keeps the totals
COLORS = {"written": "#2f855a", "unchanged": "#a0aec0", "deleted": "#805ad5", "dead letters": "#c53030"}


@dataclass
class StagePage:
    """One stage's part of the page: its run folder, its report (None until finalize wrote it) and a
    few dead letters per reason."""

    stage: str
    run_dir: StoragePath
    report: dict[str, Any] | None
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def stage_pages(dag_id: str, run_id: str) -> list[StagePage]:
    """The stages a run of ``dag_id`` reports on: a stage DAG its own, the chain (or any DAG built
    from the stage task groups) each stage's folder."""
    pages = []
    for stage in STAGES:
        if dag_id in STAGES and dag_id != stage:
            continue
        run_dir = run_dir_for(dag_id, run_id, stage)
        if not run_dir.exists():  # the stage has not started (or this DAG does not run it)
            continue
        report = read_report(run_dir) if (run_dir / "report.json").exists() else None
        pages.append(StagePage(stage, run_dir, report, dead_letter_examples(run_dir) if report else {}))
    return pages


def dead_letter_examples(run_dir: StoragePath) -> dict[str, list[dict[str, Any]]]:
    """Up to ``EXAMPLES_PER_REASON`` dead letters per reason, reading at most
    ``MAX_SCANNED_LETTERS`` lines in all (a run may have dead-lettered millions)."""
    folder = run_dir / DEAD_LETTER_DIRNAME
    examples: dict[str, list[dict[str, Any]]] = {}
    if not folder.exists():
        return examples
    scanned = 0
    for path in sorted(folder.glob("*.jsonl"), key=str):
        with path.open("r", encoding="utf-8") as lines:
            for line in lines:
                scanned += 1
                if scanned > MAX_SCANNED_LETTERS:
                    return examples
                if not line.strip():
                    continue
                letter = json.loads(line)
                kept = examples.setdefault(letter["reason"], [])
                if len(kept) < EXAMPLES_PER_REASON:
                    kept.append(letter)
    return examples


def _num(value: Any, path: str) -> str:
    shown = "-" if value is None else (f"{value:,}" if isinstance(value, int) else f"{value:,.1f}")
    return f'<td class="n" data-field="{escape(path)}" data-value="{escape(str(value))}">{shown}</td>'


def _steps(report: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, report.json path, summary) of the embed step and each store, relink last."""
    steps = [("embed", "embed", report["embed"])]
    steps += [(name, f"sinks.{name}", part) for name, part in report["sinks"].items()]
    if report.get("relink"):
        steps.append(("relink (stored products)", "relink", report["relink"]))
    return steps


def _identity_parts(report: dict[str, Any], key: str, part: dict[str, Any]) -> dict[str, int]:
    """What became of the rows read, per step: the parts sum to ``rows_read`` (finalize checks it),
    so each bar of the chart is as long as the input."""
    embed = report["embed"]
    if key == "embed":
        return {
            "written": part["indexed"],
            "unchanged": part["unchanged"],
            "deleted": part["deleted"],
            "dead letters": part["dead_lettered"],
        }
    return {
        "written": part["indexed"],
        "unchanged": embed["unchanged"],
        "deleted": part["deleted"],
        "dead letters": part["dead_lettered"] + embed["dead_lettered"],
    }


def _funnel_svg(report: dict[str, Any]) -> str:
    """Rows read, and what each step made of them, as stacked bars of equal length."""
    steps = [(label, key, part) for label, key, part in _steps(report) if key != "relink"]
    total = max(report["rows_read"], 1)
    width, label_w, bar_h, gap = 720, 170, 22, 10
    rows = [("read", {"read": report["rows_read"]})]
    rows += [(label, _identity_parts(report, key, part)) for label, key, part in steps]
    height = len(rows) * (bar_h + gap) + 30
    out = [
        f'<svg class="chart" role="img" aria-label="rows per step" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">'
    ]
    for i, (label, parts) in enumerate(rows):
        y, x = i * (bar_h + gap), label_w
        out.append(f'<text x="0" y="{y + 16}">{escape(label)}</text>')
        for name, rows_n in parts.items():
            w = (width - label_w - 10) * rows_n / total
            if w <= 0:
                continue
            color = COLORS.get(name, "#3182ce")
            out.append(
                f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}">'
                f"<title>{escape(label)}: {escape(name)} {rows_n:,}</title></rect>"
            )
            x += w
    legend_y = len(rows) * (bar_h + gap) + 14
    x = label_w
    for name, color in COLORS.items():
        out.append(f'<rect x="{x}" y="{legend_y - 10}" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{x + 16}" y="{legend_y}">{escape(name)}</text>')
        x += 130
    out.append("</svg>")
    return "".join(out)


def _throughput_svg(label: str, tasks: list[dict[str, Any]]) -> str:
    """Rows per second of each mapped task of one step (the slow chunk stands out)."""
    rated = [(t["chunk"], t["rows_in"] / t["seconds"]) for t in tasks if t["seconds"] > 0][:MAX_BARS]
    if not rated:
        return ""
    top = max(rate for _, rate in rated) or 1.0
    bar_w, gap, height = 14, 4, 120
    width = len(rated) * (bar_w + gap) + 60
    out = [
        f"<figure><figcaption>{escape(label)}: rows per second of each mapped task "
        f"(max {top:,.0f})</figcaption>"
        f'<svg class="chart" role="img" aria-label="{escape(label)} rows per second per task" '
        f'width="{width}" height="{height + 4}">'
    ]
    for i, (chunk, rate) in enumerate(rated):
        h = max(1.0, height * rate / top)
        out.append(
            f'<rect x="{i * (bar_w + gap)}" y="{height - h:.1f}" width="{bar_w}" height="{h:.1f}" '
            f'fill="#3182ce"><title>{escape(chunk)}: {rate:,.0f} rows/s</title></rect>'
        )
    if len(tasks) > MAX_BARS:
        out.append(f'<text x="0" y="12">first {MAX_BARS} of {len(tasks)} tasks</text>')
    out.append("</svg></figure>")
    return "".join(out)


def _counts_table(stage: str, report: dict[str, Any]) -> str:
    head = (
        "<tr><th>step</th><th>tasks</th><th>rows in</th><th>written</th><th>unchanged</th>"
        "<th>deleted</th><th>dead letters</th><th>task-seconds</th><th>rows / task-second</th></tr>"
    )
    body = []
    for label, key, part in _steps(report):
        cells = [f"<td>{escape(label)}</td>"]
        for column in (
            "tasks",
            "rows_in",
            "indexed",
            "unchanged",
            "deleted",
            "dead_lettered",
            "task_seconds",
            "rows_per_task_second",
        ):
            cells.append(_num(part[column], f"{stage}.{key}.{column}"))
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table class="counts">{head}{"".join(body)}</table>'


def _dead_letters(stage: str, page: StagePage) -> str:
    report = page.report or {}
    reasons: Counter[str] = Counter()
    paths: list[str] = []
    for _, _, part in _steps(report):
        reasons.update(part["dead_letters_by_reason"])
        paths += part.get("dead_letter_paths", [])
    if not reasons:
        return "<p>No dead letters.</p>"
    rows = []
    for reason, count in sorted(reasons.items()):
        examples = "".join(
            f"<li><code>{escape(str(letter.get('record_id')))}</code> ({escape(letter['stage'])}): "
            f"{escape(letter['error'][:160])}{_row_excerpt(letter.get('row') or {})}</li>"
            for letter in page.examples.get(reason, [])
        )
        rows.append(
            f"<tr><td>{escape(reason)}</td>"
            f'<td class="n" data-field="{escape(stage)}.dead_letters_by_reason.{escape(reason)}">'
            f"{count:,}</td><td><ul>{examples}</ul></td></tr>"
        )
    files = "".join(f"<li><code>{escape(p)}</code></li>" for p in paths)
    return (
        '<table class="dead"><tr><th>reason</th><th>rows</th><th>examples</th></tr>'
        f"{''.join(rows)}</table><details><summary>Dead-letter files ({len(paths)})</summary>"
        f"<ul>{files}</ul></details>"
    )


def _row_excerpt(row: dict[str, Any]) -> str:
    text = next((v for k, v in row.items() if k in ("keyword", "product_name", "text")), None)
    return f" - <q>{escape(str(text)[:80])}</q>" if text not in (None, "") else ""


def _generation(section: dict[str, Any]) -> str:
    checks = "".join(
        f"<tr><td>{escape(c['name'])}</td><td>{'yes' if c['ok'] else '<b>no</b>'}</td>"
        f"<td>{escape(str(c['detail']))}</td></tr>"
        for c in section.get("checks", [])
    )
    moved = "; ".join(f"{m['store']} {m['from']} -> {m['to']}" for m in section.get("swapped", []))
    return (
        f"<h3>Full rebuild: generation {escape(str(section.get('generation')))} - "
        f"{escape(str(section.get('status', 'built')))}</h3>"
        f"<table><tr><th>gate check</th><th>ok</th><th>numbers</th></tr>{checks}</table>"
        + (f"<p>Aliases moved: {escape(moved)}</p>" if moved else "")
    )


def _stage_section(page: StagePage) -> str:
    stage, report = page.stage, page.report
    files = f"<p class=files>Files: <code>{escape(str(page.run_dir))}</code></p>"
    if report is None:
        waiting = "<p>No report yet: the stage has not finished.</p>"
        return f"<section><h2>{escape(stage)}</h2>{waiting}{files}</section>"
    status = report["status"]
    partitions = ", ".join(report.get("partitions") or []) or "none"
    model = f"{report.get('model_name')} v{report.get('model_version')}"
    parts = [
        f'<section id="{escape(stage)}"><h2>{escape(stage)} '
        f'<span class="status {escape(status)}" data-field="{escape(stage)}.status">'
        f"{escape(status)}</span></h2>",
        f"<p>Partitions {escape(partitions)}; model {escape(model)}; rows read "
        f'<b data-field="{escape(stage)}.rows_read">{report["rows_read"]:,}</b>.</p>',
    ]
    if status == "no_data":
        parts.append(
            "<p><b>No data</b>: no partition had rows, nothing was written and no Asset event was sent.</p>"
        )
    parts += [_funnel_svg(report), _counts_table(stage, report)]
    charts = "".join(_throughput_svg(label, part.get("per_task", [])) for label, _, part in _steps(report))
    if charts:
        parts.append(f'<div class="charts">{charts}</div>')
    parts += ["<h3>Dead letters</h3>", _dead_letters(stage, page)]
    if report.get("agreement"):
        agreement = report["agreement"]
        parts.append(
            f"<p>Stores agree: {'yes' if agreement['ok'] else '<b>no</b>'} "
            f"({escape(str(agreement['detail']))}).</p>"
        )
    if report.get("generation"):
        parts.append(_generation(report["generation"]))
    if report.get("problems"):
        parts.append(
            "<h3>Problems</h3><ul>" + "".join(f"<li>{escape(p)}</li>" for p in report["problems"]) + "</ul>"
        )
    parts += [files, "</section>"]
    return "".join(parts)


STYLE = """
body{font-family:system-ui,sans-serif;margin:16px;color:#1a202c;background:#fff}
h1{font-size:1.3em} h2{font-size:1.15em;border-bottom:1px solid #e2e8f0;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0} th,td{border:1px solid #e2e8f0;padding:3px 8px;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.status{font-size:.8em;padding:2px 8px;border-radius:8px}
.ok{background:#c6f6d5} .no_data{background:#fefcbf} .failed{background:#fed7d7}
.chart text{font-size:12px} .charts{display:flex;flex-wrap:wrap;gap:24px} figure{margin:0}
figcaption{font-size:.85em;color:#4a5568} ul{margin:0;padding-left:18px} .files{color:#4a5568}
"""


def render_page(dag_id: str, run_id: str, pages: list[StagePage]) -> str:
    """The whole page for one DAG run."""
    body = "".join(_stage_section(page) for page in pages) or (
        "<p>This run wrote no pipeline report (only the keyword_index and product_link stages do).</p>"
    )
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>Pipeline report</title>'
        f"<style>{STYLE}</style></head><body><h1>Pipeline report: {escape(dag_id)} / {escape(run_id)}</h1>"
        f"{body}</body></html>"
    )
