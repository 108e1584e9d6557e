"""Export -> parity gate -> publish, as three steps that each leave their result on disk.

The DAG runs each step as its own task (a failed gate is visible as a red ``parity_gate`` box with
the numbers in its log) and passes only the staging path between them through XCom.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from embedding_pipeline.errors import ConfigError
from embedding_pipeline.model.onnx_export import (
    MODEL_FILENAME,
    ONNX_OPSET,
    PRECISIONS,
    Precision,
    export_fp32,
    graph_embedding_dim,
    make_variant,
)
from embedding_pipeline.model.parity import check_parity, enforce
from embedding_pipeline.model.repository import METADATA_FILENAME, TOKENIZER_DIRNAME, PublishedModel, publish
from embedding_pipeline.model.source import load_model
from embedding_pipeline.model.tokenization import TOKENIZER_FILENAME, TextEncoder

DEFAULT_MAX_BATCH_SIZE = 128


@dataclass(frozen=True)
class ExportRequest:
    """What to export: validated here so a bad trigger Param fails before any heavy work."""

    source: str
    precision: Precision = "fp32"
    family: str | None = None
    max_length: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.max_length is not None and not 8 <= self.max_length <= 8192:
            raise ConfigError(f"max_length must be between 8 and 8192, got {self.max_length}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_metadata(staging_dir: Path) -> dict:
    return json.loads((staging_dir / METADATA_FILENAME).read_text())


def encoder_for(version_dir: Path, metadata: dict) -> TextEncoder:
    """The client-side tokenizer for an exported or published model directory."""
    family = metadata["family"]
    return TextEncoder(
        version_dir / TOKENIZER_DIRNAME / TOKENIZER_FILENAME,
        max_length=int(metadata["max_length"]),
        pad_token_id=int(metadata["pad_token_id"]),
        prefixes={"query": family["query_prefix"], "passage": family["passage_prefix"]},
    )


def export_model(request: ExportRequest, staging_dir: Path) -> Path:
    """Export ``request`` into ``staging_dir`` (model.onnx, tokenizer/, metadata). Returns the dir."""
    loaded = load_model(request.source, request.family)
    model_limit = getattr(loaded.model.config, "max_position_embeddings", None) or 8192
    max_length = request.max_length or loaded.family.max_length
    tokenizer_limit = getattr(loaded.tokenizer, "model_max_length", None)
    max_length = min(
        max_length,
        model_limit,
        tokenizer_limit if tokenizer_limit and tokenizer_limit < 10**6 else max_length,
    )
    if loaded.tokenizer.pad_token_id is None:
        raise ConfigError(f"tokenizer of {request.source!r} has no pad token; cannot batch inputs")

    if staging_dir.exists():
        shutil.rmtree(staging_dir)
    fp32_dir = staging_dir / "_fp32"
    fp32_path = export_fp32(loaded.model, loaded.family.pooling, fp32_dir)
    if request.precision == "fp32":
        shutil.move(str(fp32_path), staging_dir / MODEL_FILENAME)
        for item in fp32_dir.iterdir():  # external-data files of very large graphs
            shutil.move(str(item), staging_dir / item.name)
        shutil.rmtree(fp32_dir)
    else:
        make_variant(fp32_path, request.precision, staging_dir)
    loaded.tokenizer.save_pretrained(str(staging_dir / TOKENIZER_DIRNAME))
    model_path = staging_dir / MODEL_FILENAME
    metadata = {
        "source": request.source,
        "location": loaded.location,
        "architecture": loaded.model.config.model_type,
        "family": loaded.family.to_dict(),
        "precision": request.precision,
        "dim": graph_embedding_dim(model_path),
        "max_length": int(max_length),
        "pad_token_id": int(loaded.tokenizer.pad_token_id),
        "onnx_opset": ONNX_OPSET,
        "sha256": _sha256(model_path),
        "exported_at": datetime.now(UTC).isoformat(),
        "parity": None,
    }
    (staging_dir / METADATA_FILENAME).write_text(json.dumps(metadata, indent=2, ensure_ascii=False))
    return staging_dir


def gate_model(staging_dir: Path) -> dict:
    """Run the parity gate on an exported dir; record the numbers; raise if the gate fails."""
    metadata = read_metadata(staging_dir)
    loaded = load_model(metadata["source"], metadata["family"]["name"])
    encoder = encoder_for(staging_dir, metadata)
    fp32_path = staging_dir / "_fp32" / MODEL_FILENAME
    report = check_parity(
        loaded.model,
        metadata["family"]["pooling"],
        encoder,
        staging_dir / MODEL_FILENAME,
        metadata["precision"],
        fp32_path=fp32_path if fp32_path.is_file() else None,
    )
    metadata["parity"] = report.to_dict()
    (staging_dir / METADATA_FILENAME).write_text(json.dumps(metadata, indent=2, ensure_ascii=False))
    enforce(report, metadata["source"])
    return report.to_dict()


def publish_model(
    staging_dir: Path,
    repository: Path,
    name: str,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    keep_versions: int = 3,
    force_new_version: bool = False,
) -> PublishedModel:
    """Publish a gated export; the fp32 reference copy kept for int8 gating is left behind.

    Identical weights (same sha256, precision, family, limits) as the latest version are not
    published again unless ``force_new_version``: the latest version is returned with ``unchanged``.
    """
    fp32_dir = staging_dir / "_fp32"
    if fp32_dir.exists():
        shutil.rmtree(fp32_dir)
    return publish(
        staging_dir,
        repository,
        name,
        max_batch_size=max_batch_size,
        keep_versions=keep_versions,
        force_new_version=force_new_version,
    )
