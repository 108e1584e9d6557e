"""Serving benchmark: is going through the inference server almost as fast as ONNX Runtime in-process?

The pipeline embeds every keyword and product through the v2 inference server (the local KServe
server here, Triton in production). That buys one serving contract for every deployment, but it
costs a serialisation + gRPC hop per batch and client-side tokenization on the same box. This
benchmark measures what that costs, per (precision, text length, batch size) cell, as sentences/s:

``bare``
    ``onnx_export.ort_session(path, threads=T)`` in this process, ``session.run`` on pre-tokenized
    arrays. The ceiling: pure model compute with the same session options the server uses.
``arrays``
    ``EmbeddingClient.infer_arrays`` with the *same* pre-tokenized arrays, one request at a time.
    ``arrays / bare`` isolates transport (protobuf, gRPC, the server's Python request path).
``embed``
    ``EmbeddingClient.embed(texts)`` end to end (length sort, tokenization, batching, transport)
    with ``max_in_flight=1``. ``embed / bare`` is the headline ratio; the target is >= 0.9.
``embed_if2``
    The same with ``max_in_flight=2`` (an extra column: on 2 cores, two requests in flight compete
    with the server's two ORT threads and the client's tokenizer for the same CPUs).
``tokenize``
    Diagnostic only: the tokenization ``embed`` does (token lengths, sort, ``encode`` per batch)
    with no inference, so the embed gap can be split into tokenization vs transport.

Why the method looks like this: the machine is a small VM shared with other jobs, so every number
is a median of repeated runs; all variants of a cell are measured back to back inside each repeat
(in an order that rotates between repeats), so a noisy neighbour hits the variants being compared
alike, and ratios are medians of the per-repeat paired ratios. Before each cell's round the run
waits (within a bounded total) for other processes to go quiet, and records, beside every timed
run, how many cores other processes took meanwhile: one busy neighbour on 2 cores slows ORT by up
to 3x, which no statistic fixes after the fact. The server is always a child process: ``kserve``
must never be imported here (its v2 protos clash with ``tritonclient.grpc``).

Run: ``.venv/bin/python bench/bench_serving.py`` (see bench/README.md); ``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bundled MiniLM needs no network; never try the Hub

import numpy as np
from embedding_pipeline.errors import RepositoryError
from embedding_pipeline.model.onnx_export import OUTPUT_NAME, ort_session
from embedding_pipeline.model.publish import ExportRequest, export_model, gate_model, publish_model
from embedding_pipeline.model.registry import Precision
from embedding_pipeline.model.tokenization import TextEncoder
from embedding_pipeline.serving.client import EmbeddingClient
from embedding_pipeline.serving.process import LocalServer
from embedding_pipeline.settings import ServerSettings
from harness import (
    BENCH_DIR,
    NoiseBudget,
    loadavg,
    machine_busy,
    machine_info,
    md_table,
    tree_cpu,
    write_results,
)

log = logging.getLogger("bench_serving")

VARIANTS: tuple[str, ...] = ("bare", "arrays", "embed", "embed_if2", "tokenize")
RATIOS: dict[str, tuple[str, str]] = {
    "arrays/bare": ("arrays", "bare"),
    "embed/bare": ("embed", "bare"),
    "embed_if2/bare": ("embed_if2", "bare"),
}
HEADLINE_RATIO = "embed/bare"
MIN_QUIET = 3  # quiet repeats a statistic needs before noisy ones are left out of it
TARGET_RATIO = 0.9
TARGET_MIN_BATCH = 32
SEED = 20240601


# -- inputs ------------------------------------------------------------------------------------
def single_token_words(encoder: TextEncoder) -> list[str]:
    """Whole, lowercase ASCII words that are one token each in the model's vocabulary.

    Building sentences from these makes the token count exact by construction (n words + the
    special tokens), so "~16 tokens" is a fact checked by the tokenizer rather than a guess.
    """
    vocab = encoder.tokenizer.get_vocab()
    words = sorted(w for w in vocab if w.isascii() and w.isalpha() and w.islower() and 3 <= len(w) <= 10)
    single = special_tokens(encoder) + 1
    one = [w for w, n in zip(words, encoder.token_lengths(words), strict=True) if n == single]
    if len(one) < 100:
        raise RuntimeError(f"tokenizer has only {len(one)} single-token words; cannot build synthetic texts")
    return one


def special_tokens(encoder: TextEncoder) -> int:
    """How many tokens the tokenizer adds around any text ([CLS] and [SEP] for BERT-like models)."""
    return encoder.token_lengths(["a"])[0] - 1


def synthetic_texts(encoder: TextEncoder, tokens: int, count: int, seed: int = SEED) -> list[str]:
    """``count`` deterministic pseudo-sentences of exactly ``tokens`` tokens (special tokens included)."""
    specials = special_tokens(encoder)
    n_words = tokens - specials
    if n_words < 1:
        raise ValueError(f"{tokens} tokens leave no room for words next to {specials} special tokens")
    words = single_token_words(encoder)
    rng = random.Random(f"{seed}-{tokens}")
    texts = []
    for _ in range(count):
        sentence = rng.choices(words, k=n_words)
        sentence[0] = sentence[0].capitalize()  # uncased model: same tokens, reads like a sentence
        texts.append(" ".join(sentence))
    return texts


@dataclass(frozen=True)
class Batches:
    """Pre-tokenized inputs exactly as ``EmbeddingClient.embed`` would batch them (length sorted)."""

    arrays: list[tuple[np.ndarray, np.ndarray]]

    @classmethod
    def of(cls, encoder: TextEncoder, texts: Sequence[str], batch_size: int) -> Batches:
        return cls([(b.input_ids, b.attention_mask) for b in tokenize_like_embed(encoder, texts, batch_size)])


def tokenize_like_embed(encoder: TextEncoder, texts: Sequence[str], batch_size: int) -> list[Any]:
    """The client-side work of ``embed`` minus inference (mirrors embedding_client.embed)."""
    lengths = np.array(encoder.token_lengths(texts, None))
    order = np.argsort(lengths, kind="stable")
    return [
        encoder.encode([texts[i] for i in order[start : start + batch_size]], None)
        for start in range(0, len(order), batch_size)
    ]


# -- models and server -------------------------------------------------------------------------
def prepare_models(
    source: str, precisions: Sequence[str], repository: Path, staging: Path
) -> dict[str, dict]:
    """Export, gate and publish one model per precision (``minilm_fp32``, ``minilm_int8``...).

    Goes through the real publish path (parity gate included) so the benchmark serves exactly what
    the pipeline would; an existing published model in ``repository`` is reused (``--repository``).
    """
    from embedding_pipeline.model.repository import latest_version

    models: dict[str, dict] = {}
    for precision in precisions:
        name = f"minilm_{precision}"
        try:
            published = latest_version(repository, name)
            log.info("reusing %s v%s from %s", name, published.version, repository)
        except RepositoryError:
            started = time.perf_counter()
            request = ExportRequest(source, cast(Precision, precision))
            stage = export_model(request, staging / f"stage-{precision}")
            exported = time.perf_counter()
            gate_model(stage)
            gated = time.perf_counter()
            published = publish_model(stage, repository, name, max_batch_size=128)
            log.info("%s: export %.1fs, gate %.1fs", name, exported - started, gated - exported)
        parity = published.metadata.get("parity") or {}
        models[precision] = {
            "name": name,
            "version": published.version,
            "path": str(published.path / "model.onnx"),
            "size_bytes": (published.path / "model.onnx").stat().st_size,
            "sha256": published.metadata.get("sha256"),
            "dim": published.metadata.get("dim"),
            "parity_passed": parity.get("passed"),
        }
    return models


# -- measurement -------------------------------------------------------------------------------
@dataclass
class Cell:
    """One (precision, tokens, batch) combination and everything measured for it."""

    precision: str
    tokens: int
    batch: int
    sentences: int
    quiet_cores: float  # a run is "quiet" when other processes took at most this many cores
    min_quiet: int = MIN_QUIET  # quiet repeats a statistic needs before noisy ones are left out
    runs: dict[str, list[float]] = field(default_factory=lambda: {v: [] for v in VARIANTS})
    client_cpu: dict[str, list[float]] = field(default_factory=lambda: {v: [] for v in VARIANTS})
    server_cpu: dict[str, list[float]] = field(default_factory=lambda: {v: [] for v in VARIANTS})
    # cores busy with other processes (plus hypervisor steal) during each run: the noise next to each number
    other_cores: dict[str, list[float]] = field(default_factory=lambda: {v: [] for v in VARIANTS})
    max_abs_diff: float | None = None

    @property
    def key(self) -> str:
        return f"{self.precision}/{self.tokens}tok/b{self.batch}"

    def other_load(self) -> float:
        """Median cores other processes took during this cell's timed runs."""
        loads = [x for xs in self.other_cores.values() for x in xs]
        return statistics.median(loads) if loads else 0.0

    def quiet(self, variant: str, index: int) -> bool:
        return self.other_cores[variant][index] <= self.quiet_cores

    def medians(self) -> dict[str, float]:
        """Median sentences/s per variant over its quiet runs (all runs when there are too few)."""
        out = {}
        for variant, xs in self.runs.items():
            quiet = [x for i, x in enumerate(xs) if self.quiet(variant, i)]
            if xs:
                out[variant] = statistics.median(quiet if len(quiet) >= self.min_quiet else xs)
        return out

    def pairs(self, name: str) -> tuple[list[float], list[float]]:
        """(quiet, all) per-repeat ratios; a pair is quiet when both of its runs were."""
        top, bottom = RATIOS[name]
        quiet, every = [], []
        for i, (a, b) in enumerate(zip(self.runs[top], self.runs[bottom], strict=True)):
            every.append(a / b)
            if self.quiet(top, i) and self.quiet(bottom, i):
                quiet.append(a / b)
        return quiet, every

    def ratios(self) -> dict[str, float]:
        """Median of per-repeat paired ratios: both sides of each pair saw the same machine state.

        Pairs measured while other processes were busy are left out when enough quiet ones exist:
        a neighbour's burst lands on one side of a pair far more often than on both.
        """
        out = {}
        for name in RATIOS:
            quiet, every = self.pairs(name)
            if every:
                out[name] = statistics.median(quiet if len(quiet) >= self.min_quiet else every)
        return out

    def needs_more(self) -> bool:
        """Too few quiet pairs for some ratio: worth another round if the noise budget allows."""
        return any(len(self.pairs(name)[0]) < self.min_quiet for name in RATIOS)

    def to_dict(self) -> dict[str, Any]:
        n = self.sentences
        return {
            "precision": self.precision,
            "tokens": self.tokens,
            "batch": self.batch,
            "sentences": n,
            "median_sentences_per_s": {k: round(v, 1) for k, v in self.medians().items()},
            "ratio": {k: round(v, 3) for k, v in self.ratios().items()},
            "repeats": len(self.runs[VARIANTS[0]]),
            "quiet_pairs": {name: len(self.pairs(name)[0]) for name in RATIOS},
            "runs_sentences_per_s": {k: [round(x, 1) for x in xs] for k, xs in self.runs.items()},
            # CPU-seconds per 1000 sentences: what each side of the wire spends, per variant
            "client_cpu_s_per_1k": {
                k: round(1000 * statistics.median(xs) / n, 3) for k, xs in self.client_cpu.items() if xs
            },
            "server_cpu_s_per_1k": {
                k: round(1000 * statistics.median(xs) / n, 3) for k, xs in self.server_cpu.items() if xs
            },
            "other_load_cores": {k: [round(x, 2) for x in xs] for k, xs in self.other_cores.items()},
            "other_load_cores_median": round(self.other_load(), 2),
            "max_abs_diff_server_vs_bare": self.max_abs_diff,
        }


@dataclass
class Runner:
    """Holds the sessions, clients and inputs, and times one variant of one cell."""

    sessions: dict[str, Any]
    clients: dict[tuple[str, int, int], EmbeddingClient]
    texts: dict[int, list[str]]
    batches: dict[tuple[int, int], Batches]
    server_pid: int

    def call(self, cell: Cell, variant: str, batches: int | None = None) -> Callable[[], object]:
        """A no-argument callable doing one timed unit of work (``batches`` limits it, for warm-up)."""
        texts = self.texts[cell.tokens][: None if batches is None else batches * cell.batch]
        arrays = self.batches[(cell.tokens, cell.batch)].arrays[:batches]
        if variant == "bare":
            session = self.sessions[cell.precision]
            feeds = [{"input_ids": i, "attention_mask": m} for i, m in arrays]
            return lambda: [session.run([OUTPUT_NAME], f) for f in feeds]
        if variant == "arrays":
            client = self.clients[(cell.precision, cell.batch, 1)]
            return lambda: [client.infer_arrays(i, m) for i, m in arrays]
        if variant in ("embed", "embed_if2"):
            client = self.clients[(cell.precision, cell.batch, 2 if variant == "embed_if2" else 1)]
            return lambda: client.embed(texts, role=None)
        if variant == "tokenize":
            encoder = self.clients[(cell.precision, cell.batch, 1)].encoder
            return lambda: tokenize_like_embed(encoder, texts, cell.batch)
        raise ValueError(variant)

    def measure(self, cell: Cell, variant: str) -> None:
        run = self.call(cell, variant)
        cpu0, srv0, (busy0, steal0) = tree_cpu(None), tree_cpu(self.server_pid), machine_busy()
        started = time.perf_counter()
        run()
        elapsed = time.perf_counter() - started
        client, server = tree_cpu(None) - cpu0, tree_cpu(self.server_pid) - srv0
        busy, steal = (now - before for now, before in zip(machine_busy(), (busy0, steal0), strict=True))
        cell.runs[variant].append(cell.sentences / elapsed)
        cell.client_cpu[variant].append(client)
        cell.server_cpu[variant].append(server)
        cell.other_cores[variant].append(max(0.0, busy - client - server + steal) / elapsed)

    def check_same_answer(self, cell: Cell) -> None:
        """The server and the bare session must compute the same thing, or the ratio means nothing."""
        ids, mask = self.batches[(cell.tokens, cell.batch)].arrays[0]
        (bare,) = self.sessions[cell.precision].run([OUTPUT_NAME], {"input_ids": ids, "attention_mask": mask})
        served = self.clients[(cell.precision, cell.batch, 1)].infer_arrays(ids, mask)
        cell.max_abs_diff = float(np.abs(bare - served).max())
        if cell.max_abs_diff > 1e-4:
            raise RuntimeError(f"{cell.key}: server and bare ORT differ by {cell.max_abs_diff}")

    def warm_up(self, cell: Cell) -> None:
        """One untimed batch of every variant: first calls pay for arena growth and gRPC channel setup."""
        self.check_same_answer(cell)
        for variant in VARIANTS:
            self.call(cell, variant, batches=1)()


def rotated(items: Sequence[str], by: int) -> list[str]:
    """Rotate so no variant always runs first (or right after the same neighbour)."""
    k = by % len(items)
    return [*items[k:], *items[:k]]


# -- output ------------------------------------------------------------------------------------
def serving_machine_info() -> dict[str, Any]:
    # kserve runs in the server child only, but its version is part of what was measured.
    return machine_info(("onnxruntime", "tokenizers", "tritonclient", "grpcio", "kserve"))


def markdown(report: dict[str, Any]) -> str:
    """A short table for reviewers; the JSON holds every repeat, the load beside it and the CPU split."""
    cfg, noise, lines = report["config"], report["noise"], []
    sizes = ", ".join(f"{n} sentences at {t} tokens" for t, n in cfg["sentences_per_cell"].items())
    lines.append(f"# Serving benchmark {report['date']}")
    lines.append("")
    lines.append(
        f"{report['machine']['cpu_count']} CPUs ({report['machine']['cpu_model']}), "
        f"Python {report['machine']['python']}, onnxruntime {report['machine']['versions']['onnxruntime']}; "
        f"ORT threads {cfg['threads']} (bare and server), {cfg['protocol']}; {sizes} per cell and "
        f"repeat, {cfg['repeats']} interleaved repeats; runtime {report['duration_s']:.0f}s."
    )
    lines.append("")
    lines.append(
        "Sentences/s. `bare` = in-process ORT on pre-tokenized arrays; `arrays` = same arrays through "
        "the server; `embed` = `EmbeddingClient.embed` incl. tokenization (in-flight 1); `if2` = "
        "in-flight 2; `tok` = client tokenization alone. Ratios are medians of per-repeat paired "
        f"ratios (target `embed/bare` >= {TARGET_RATIO} at batch >= {TARGET_MIN_BATCH}). `quiet` = "
        f"repeats in which other processes took <= {noise['quiet_cores']} cores during both "
        f"`embed` and `bare` / all repeats; statistics use only quiet repeats when there are >= "
        f"{MIN_QUIET}."
    )
    lines.append("")
    lines.append(
        f"Noise: waited {noise['waited_s']:.0f}s for quiet, {noise['extra_rounds']} extra rounds "
        f"({noise['extra_rounds_s']:.0f}s) for noisy cells, {noise['started_busy']} rounds started "
        f"busy; median other load {noise['other_load_cores_median']} cores; load average "
        f"{report['machine']['loadavg_start']} at start."
    )
    lines.append("")
    headers = ["precision", "tokens", "batch", "bare", "arrays", "embed", "if2", "tok", "arrays/bare"]
    rows = []
    for c in report["cells"]:
        m, r = c["median_sentences_per_s"], c["ratio"]
        flag = " ⚠" if c["batch"] >= TARGET_MIN_BATCH and r[HEADLINE_RATIO] < TARGET_RATIO else ""
        rows.append(
            [
                c["precision"],
                c["tokens"],
                c["batch"],
                f"{m['bare']:.0f}",
                f"{m['arrays']:.0f}",
                f"{m['embed']:.0f}",
                f"{m['embed_if2']:.0f}",
                f"{m['tokenize']:.0f}",
                f"{r['arrays/bare']:.2f}",
                f"**{r['embed/bare']:.2f}**{flag}",
                f"{r['embed_if2/bare']:.2f}",
                f"{c['quiet_pairs'][HEADLINE_RATIO]}/{c['repeats']}",
            ]
        )
    lines += md_table([*headers, "embed/bare", "if2/bare", "quiet"], rows, "l" + "r" * 11)
    target = report["target"]
    lines.append("")
    if target["met"]:
        lines.append(
            f"Target met: `embed/bare` >= {TARGET_RATIO} in every cell with batch >= {TARGET_MIN_BATCH}."
        )
    else:
        lines.append(f"Target **not** met in: {', '.join(target['cells_below'])}.")
    if noise["cells_short_of_quiet_pairs"]:
        lines.append("")
        lines.append(
            f"Fewer than {MIN_QUIET} quiet pairs (numbers from all repeats, treat as noisy): "
            f"{', '.join(noise['cells_short_of_quiet_pairs'])}."
        )
    lines.append("")
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------
def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--token-budget",
        type=int,
        default=8192,
        help="tokens per cell and repeat (default: 512 sentences of 16 tokens; never fewer "
        "than two batches of the largest size, so 256 of 64 tokens)",
    )
    parser.add_argument(
        "--sentences",
        type=int,
        default=None,
        help="fixed sentences per cell and repeat (overrides --token-budget)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (the median is reported)")
    parser.add_argument("--batch-sizes", type=ints, default=[32, 64, 128], help="comma separated")
    parser.add_argument("--tokens", type=ints, default=[16, 64], help="text lengths in tokens, e.g. 16,64")
    parser.add_argument("--precisions", default="fp32,int8", help="comma separated: fp32,int8")
    parser.add_argument("--threads", type=int, default=2, help="ORT intra-op threads, bare and server alike")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--source", default="minilm", help="model source (default: the bundled MiniLM)")
    parser.add_argument(
        "--repository",
        type=Path,
        default=None,
        help="model repository to reuse/keep (default: a fresh temp dir, deleted after)",
    )
    parser.add_argument(
        "--quiet-threshold",
        type=float,
        default=0.3,
        help="a run is quiet when other processes took at most this many cores",
    )
    parser.add_argument(
        "--noise-budget",
        type=float,
        default=120.0,
        help="total seconds to spend waiting for quiet and re-running noisy cells",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where results go (default: bench/results; with --quick: a temp dir, so a "
        "smoke run never lands next to committed results)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny smoke run (fp32, 16 tokens, batch 32, 128 sentences, 2 repeats)",
    )
    args = parser.parse_args(argv)
    args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if args.quick:
        args.sentences, args.token_budget, args.repeats, args.noise_budget = 128, None, 2, 10.0
        args.batch_sizes, args.tokens, args.precisions = [32], [16], ["fp32"]
    if args.output_dir is None:
        quick_dir = Path(tempfile.gettempdir()) / "bench-results"
        args.output_dir = quick_dir if args.quick else BENCH_DIR / "results"
    if min(sentences_for(args, t) for t in args.tokens) < max(args.batch_sizes) or args.repeats < 1:
        parser.error("every cell needs at least one full batch of the largest size, and --repeats >= 1")
    if max(args.batch_sizes) > 128:
        parser.error("batch sizes above 128 exceed the published max_batch_size")
    return args


def sentences_for(args: argparse.Namespace, tokens: int) -> int:
    """Sentences per cell: equal token work per cell keeps long-text cells from eating the time budget."""
    if args.sentences:
        return int(args.sentences)
    return max(args.token_budget // tokens, 2 * max(args.batch_sizes))


@contextmanager
def workspace(repository: Path | None) -> Iterator[tuple[Path, Path]]:
    """(repository, scratch): a throwaway temp dir unless the caller names a repository to keep."""
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        scratch = Path(tmp)
        yield (repository.resolve() if repository else scratch / "model_repository"), scratch


def checked_token_stats(encoder: TextEncoder, texts: dict[int, list[str]]) -> dict[str, Any]:
    """Token lengths of each synthetic set, refusing a set that is not exactly its nominal length."""
    stats = {}
    for t, xs in texts.items():
        lengths = encoder.token_lengths(xs)
        stats[str(t)] = {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)}
        if min(lengths) != t or max(lengths) != t:
            raise RuntimeError(f"synthetic {t}-token texts tokenize to {stats[str(t)]}")
    return stats


def measure_cells(runner: Runner, cells: list[Cell], noise: NoiseBudget, repeats: int) -> None:
    """The planned repeats (variants rotated, each round after waiting for quiet), then extra
    rounds for cells short of quiet pairs while the noise budget lasts."""
    started_all = time.perf_counter()

    def round_of(cell: Cell, rotation: int) -> None:
        noise.wait()
        for variant in rotated(VARIANTS, rotation):
            runner.measure(cell, variant)

    for repeat in range(repeats):
        for index, cell in enumerate(cells):
            round_of(cell, repeat + index)
        log.info("repeat %d/%d done after %.0fs", repeat + 1, repeats, time.perf_counter() - started_all)
    rotation = repeats * len(cells)
    while noise.left_s > 0 and (noisy := [c for c in cells if c.needs_more()]):
        for cell in noisy:
            if noise.left_s <= 0:
                break
            started = time.perf_counter()
            round_of(cell, rotation := rotation + 1)
            noise.extra_rounds += 1
            noise.extra_rounds_s += time.perf_counter() - started
        log.info("extra rounds for noisy cells; %.0fs of the noise budget left", max(0.0, noise.left_s))


def run(args: argparse.Namespace) -> dict[str, Any]:
    started_at = datetime.now(UTC)
    t0 = time.perf_counter()
    load_start = loadavg()
    with workspace(args.repository) as (repository, scratch), ExitStack() as stack:
        models = prepare_models(args.source, args.precisions, repository, scratch)
        prepared = time.perf_counter()
        server = stack.enter_context(
            LocalServer(
                repository,
                threads=args.threads,
                log_path=scratch / "server.log",
                models=[m["name"] for m in models.values()],
            )
        )
        assert server.process is not None
        clients = {
            (precision, batch, in_flight): stack.enter_context(
                EmbeddingClient(
                    ServerSettings(
                        grpc_port=server.grpc_port,
                        http_port=server.http_port,
                        protocol=args.protocol,
                        model_repository=repository,
                        model_name=model["name"],
                        batch_size=batch,
                        max_in_flight=in_flight,
                    )
                )
            )
            for precision, model in models.items()
            for batch in args.batch_sizes
            for in_flight in (1, 2)
        }
        encoder = next(iter(clients.values())).encoder
        texts = {t: synthetic_texts(encoder, t, sentences_for(args, t)) for t in args.tokens}
        token_stats = checked_token_stats(encoder, texts)
        runner = Runner(
            sessions={p: ort_session(Path(m["path"]), threads=args.threads) for p, m in models.items()},
            clients=clients,
            texts=texts,
            batches={(t, b): Batches.of(encoder, texts[t], b) for t in args.tokens for b in args.batch_sizes},
            server_pid=server.process.pid,
        )
        cells = [
            Cell(p, t, b, sentences_for(args, t), args.quiet_threshold, min(MIN_QUIET, args.repeats))
            for p in args.precisions
            for t in args.tokens
            for b in args.batch_sizes
        ]
        for cell in cells:
            runner.warm_up(cell)
        noise = NoiseBudget(
            args.noise_budget,
            threshold_cores=args.quiet_threshold,
            helpers={"server": server.process.pid},
            window_s=0.5,
        )
        measure_cells(runner, cells, noise, args.repeats)
        measured = time.perf_counter()

    below = [
        c.key for c in cells if c.batch >= TARGET_MIN_BATCH and c.ratios()[HEADLINE_RATIO] < TARGET_RATIO
    ]
    return {
        "benchmark": "serving",
        "date": started_at.date().isoformat(),
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - t0, 1),
        "prepare_s": round(prepared - t0, 1),
        "measure_s": round(measured - prepared, 1),
        "machine": {**serving_machine_info(), "loadavg_start": load_start, "loadavg_end": loadavg()},
        "noise": {
            **noise.to_dict(),
            "other_load_cores_median": round(statistics.median(c.other_load() for c in cells), 2),
            "cells_short_of_quiet_pairs": [c.key for c in cells if c.needs_more()],
        },
        "config": {
            "sentences_per_cell": {str(t): sentences_for(args, t) for t in args.tokens},
            "token_budget": args.token_budget if not args.sentences else None,
            "repeats": args.repeats,
            "batch_sizes": args.batch_sizes,
            "tokens": args.tokens,
            "precisions": args.precisions,
            "threads": args.threads,
            "protocol": args.protocol,
            "source": args.source,
            "quick": args.quick,
            "variants": list(VARIANTS),
            "ratio_statistic": f"median of per-repeat ratios over quiet pairs (all pairs if < {MIN_QUIET})",
            "throughput_statistic": f"median over quiet runs (all runs if < {MIN_QUIET})",
        },
        "models": {p: {k: v for k, v in m.items() if k != "path"} for p, m in models.items()},
        "texts_token_lengths": token_stats,
        "target": {
            "ratio": HEADLINE_RATIO,
            "min": TARGET_RATIO,
            "at_batch_at_least": TARGET_MIN_BATCH,
            "met": not below,
            "cells_below": below,
        },
        "cells": [c.to_dict() for c in cells],
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    report = run(args)
    write_results(args.output_dir, "serving", args.quick, report, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
