"""The Triton model repository on disk: atomic, monotonic, pruned publishes.

Layout (what Triton and the local server both read)::

    <root>/<name>/config.pbtxt                  serving contract (committed for the demo model)
    <root>/<name>/<version>/model.onnx          weights (git-ignored)
    <root>/<name>/<version>/tokenizer/...        tokenizer the client must use with this version
    <root>/<name>/<version>/embedding_model.json source, hash, dim, family, prefixes, parity numbers

A version directory appears by ``rename`` of a fully written sibling, so a reader never sees half a
model; a lock file serialises concurrent publishers so versions stay strictly increasing.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from embedding_pipeline.errors import RepositoryError
from embedding_pipeline.model.onnx_export import MODEL_FILENAME
from embedding_pipeline.model.triton_config import CONFIG_FILENAME, ServingContract, render_config

METADATA_FILENAME = "embedding_model.json"
TOKENIZER_DIRNAME = "tokenizer"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class PublishedModel:
    name: str
    version: int
    path: Path
    metadata: dict
    unchanged: bool = False  # True when an identical model was already the latest version


def validate_model_name(name: str) -> str:
    """Model names become directory names and Triton URLs: keep them to a safe alphabet."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise RepositoryError(
            f"invalid model name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a "
            "letter or digit"
        )
    return name


def list_versions(model_dir: Path) -> list[int]:
    """Complete versions (weights + metadata present), ascending."""
    if not model_dir.is_dir():
        return []
    versions = []
    for child in model_dir.iterdir():
        complete = (child / METADATA_FILENAME).is_file() and (child / MODEL_FILENAME).is_file()
        if child.is_dir() and child.name.isdigit() and complete:
            versions.append(int(child.name))
    return sorted(versions)


def latest_version(root: Path, name: str) -> PublishedModel:
    """The newest complete version of ``name`` or a clear error naming what is missing."""
    model_dir = root / validate_model_name(name)
    versions = list_versions(model_dir)
    if not versions:
        known = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise RepositoryError(
            f"model {name!r} has no published version under {root} (models there: {known or 'none'})"
        )
    return load_version(root, name, versions[-1])


def load_version(root: Path, name: str, version: int) -> PublishedModel:
    path = root / name / str(version)
    try:
        metadata = json.loads((path / METADATA_FILENAME).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RepositoryError(f"{path / METADATA_FILENAME} is unreadable: {exc}") from exc
    return PublishedModel(name=name, version=version, path=path, metadata=metadata)


@contextmanager
def _publish_lock(model_dir: Path) -> Iterator[None]:
    model_dir.mkdir(parents=True, exist_ok=True)
    with open(model_dir / ".publish.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


_IDENTITY_KEYS = ("sha256", "precision", "dim", "max_length", "pad_token_id", "family", "source")


def _same_model(a: dict, b: dict) -> bool:
    return all(a.get(key) == b.get(key) for key in _IDENTITY_KEYS)


def _write_config(
    model_dir: Path, name: str, max_batch_size: int, instance_count: int, metadata: dict
) -> None:
    contract = ServingContract(name=name, max_batch_size=max_batch_size, dim=int(metadata["dim"]))
    config = render_config(
        contract,
        instance_count=instance_count,
        parameters={
            "family": str(metadata["family"]["name"]),
            "precision": str(metadata["precision"]),
            "source": str(metadata["source"]),
        },
    )
    _write_atomic(model_dir / CONFIG_FILENAME, config)


def publish(
    staging_dir: Path,
    root: Path,
    name: str,
    max_batch_size: int,
    keep_versions: int = 3,
    instance_count: int = 1,
    force_new_version: bool = False,
) -> PublishedModel:
    """Copy a gated staging dir into ``root/name/<next version>`` atomically and prune old versions.

    ``staging_dir`` must hold ``model.onnx``, ``tokenizer/`` and ``embedding_model.json`` with a
    passed parity report; anything else would let an ungated model reach the server.
    """
    validate_model_name(name)
    if max_batch_size < 1:
        raise RepositoryError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if keep_versions < 1:
        raise RepositoryError(f"keep_versions must be >= 1, got {keep_versions}")
    metadata_path = staging_dir / METADATA_FILENAME
    if not (staging_dir / MODEL_FILENAME).is_file() or not metadata_path.is_file():
        raise RepositoryError(f"{staging_dir} is not an exported model (model.onnx + metadata expected)")
    if not (staging_dir / TOKENIZER_DIRNAME / "tokenizer.json").is_file():
        raise RepositoryError(f"{staging_dir} has no tokenizer/tokenizer.json")
    metadata = json.loads(metadata_path.read_text())
    parity = metadata.get("parity")
    if not parity or not parity.get("passed"):
        raise RepositoryError(f"{staging_dir} has not passed the parity gate; refusing to publish")

    model_dir = root / name
    with _publish_lock(model_dir):
        existing = list_versions(model_dir)
        if existing and not force_new_version:
            latest = load_version(root, name, existing[-1])
            if _same_model(latest.metadata, metadata):
                # Re-publishing identical weights (a re-run, a retry) must not mint a version that
                # would make the indexed vectors look stale: keep the latest and say so.
                _write_config(model_dir, name, max_batch_size, instance_count, latest.metadata)
                return PublishedModel(name, latest.version, latest.path, latest.metadata, unchanged=True)
        numbered = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
        version = max([0, *existing, *numbered]) + 1
        metadata = {**metadata, "name": name, "version": version}
        incoming = model_dir / f".incoming-{uuid.uuid4().hex}"
        try:
            shutil.copytree(staging_dir, incoming)
            (incoming / METADATA_FILENAME).write_text(json.dumps(metadata, indent=2, ensure_ascii=False))
            os.rename(incoming, model_dir / str(version))
        except OSError as exc:
            shutil.rmtree(incoming, ignore_errors=True)
            raise RepositoryError(f"publishing {name} v{version} into {model_dir} failed: {exc}") from exc
        _write_config(model_dir, name, max_batch_size, instance_count, metadata)
        for old in existing[: max(0, len(existing) + 1 - keep_versions)]:
            shutil.rmtree(model_dir / str(old), ignore_errors=True)
    return PublishedModel(name=name, version=version, path=model_dir / str(version), metadata=metadata)
