"""What every results file records about the box: CPUs, memory, load and package versions.

Shared by the benchmarks (run as ``python bench/<name>.py``, so this folder is on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any


def installed(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info(packages: tuple[str, ...]) -> dict[str, Any]:
    """What a reader needs to compare two results files: the box and the versions doing the work."""
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {package: installed(package) for package in packages},
    }


def write_results(
    output_dir: Path,
    name: str,
    quick: bool,
    report: dict[str, Any],
    markdown: Callable[[dict[str, Any]], str],
) -> None:
    """``<output_dir>/<name>-<date>[-quick].json`` and ``.md``, the markdown also printed."""
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{report['date']}" + ("-quick" if quick else "")
    text = markdown(report)
    (output_dir / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (output_dir / f"{stem}.md").write_text(text)
    print(text)
    print(f"wrote {output_dir / stem}.json and .md")
