"""Publishing into the Triton model repository: atomic, monotonic, pruned, Triton-parseable."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
from embedding_pipeline.errors import RepositoryError
from embedding_pipeline.model.publish import ExportRequest, export_model, gate_model
from embedding_pipeline.model.repository import latest_version, list_versions, publish
from embedding_pipeline.model.triton_config import ServingContract, parse_config, read_contract, render_config


@pytest.fixture(scope="module")
def gated(tiny_models, tmp_path_factory) -> Path:
    staging = export_model(
        ExportRequest(str(tiny_models["bert"]), "fp32", "generic"), tmp_path_factory.mktemp("gated")
    )
    gate_model(staging)
    shutil.rmtree(staging / "_fp32", ignore_errors=True)  # only int8/fp16 exports keep an fp32 copy
    return staging


def test_publish_writes_a_triton_parseable_config_and_complete_version(gated, tmp_path):
    published = publish(gated, tmp_path, "tiny", max_batch_size=16)
    assert published.version == 1
    config = parse_config((tmp_path / "tiny" / "config.pbtxt").read_text())
    assert config.name == "tiny" and config.backend == "onnxruntime" and config.max_batch_size == 16
    assert [i.name for i in config.input] == ["input_ids", "attention_mask"]
    assert list(config.output[0].dims) == [32]
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    assert max(config.dynamic_batching.preferred_batch_size) <= 16
    version_dir = tmp_path / "tiny" / "1"
    assert (version_dir / "model.onnx").is_file() and (version_dir / "tokenizer" / "tokenizer.json").is_file()
    metadata = json.loads((version_dir / "embedding_model.json").read_text())
    assert metadata["version"] == 1 and metadata["dim"] == 32 and len(metadata["sha256"]) == 64
    assert metadata["parity"]["passed"] and metadata["family"]["name"] == "generic"
    assert read_contract(tmp_path / "tiny") == ServingContract("tiny", 16, 32)


def test_versions_are_monotonic_and_old_ones_pruned(gated, tmp_path):
    versions = [publish(gated, tmp_path, "tiny", 8, 2, force_new_version=True).version for _ in range(4)]
    assert versions == [1, 2, 3, 4]
    assert list_versions(tmp_path / "tiny") == [3, 4]
    assert latest_version(tmp_path, "tiny").version == 4
    # Pruning never reuses a number: the next version is 5 even though 1 and 2 are gone.
    assert publish(gated, tmp_path, "tiny", 8, keep_versions=2, force_new_version=True).version == 5


def test_concurrent_publishers_get_distinct_versions(gated, tmp_path):
    results: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                publish(gated, tmp_path, "tiny", 8, 10, force_new_version=True).version
            )
        )
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [1, 2, 3, 4]


def test_failed_copy_leaves_no_partial_version(gated, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(gated, broken)
    (broken / "dangling").symlink_to(tmp_path / "does-not-exist")  # copytree fails on it
    with pytest.raises(RepositoryError, match="failed"):
        publish(broken, tmp_path / "repo", "tiny", 8)
    leftovers = [p.name for p in (tmp_path / "repo" / "tiny").iterdir() if not p.name.startswith(".publish")]
    assert leftovers == []


def test_ungated_or_incomplete_staging_is_refused(gated, tmp_path):
    ungated = tmp_path / "ungated"
    shutil.copytree(gated, ungated)
    metadata = json.loads((ungated / "embedding_model.json").read_text())
    (ungated / "embedding_model.json").write_text(json.dumps({**metadata, "parity": None}))
    with pytest.raises(RepositoryError, match="parity gate"):
        publish(ungated, tmp_path / "repo", "tiny", 8)
    shutil.rmtree(ungated / "tokenizer")
    with pytest.raises(RepositoryError, match="tokenizer"):
        publish(ungated, tmp_path / "repo", "tiny", 8)
    for name in ["", "../escape", "a b", "x" * 65]:
        with pytest.raises(RepositoryError, match="invalid model name"):
            publish(gated, tmp_path / "repo", name, 8)


def test_latest_version_names_the_models_that_exist(gated, tmp_path):
    publish(gated, tmp_path, "present", 8)
    with pytest.raises(RepositoryError, match=r"'absent' has no published version .*present"):
        latest_version(tmp_path, "absent")


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (lambda t: t.replace('backend: "onnxruntime"', 'backend: "onnxruntime_onx"'), "is not onnxruntime"),
        (lambda t: t.replace("KIND_AUTO", "KIND_XPU"), "has no value named KIND_XPU"),
        (lambda t: t.replace("max_batch_size: 8", "max_batch_size: 0"), "max_batch_size must be >= 1"),
        (lambda t: t.replace("TYPE_INT64", "TYPE_INT32", 1), "must be TYPE_INT64"),
        (
            lambda t: t.replace('"sentence_embedding"', '"last_hidden_state"'),
            "output 'sentence_embedding' is missing",
        ),
        (lambda t: t.replace("max_batch_size: 8", 'max_batch_size: "8"'), "not a valid Triton model config"),
    ],
)
def test_config_validation_catches_what_triton_would_not_serve(mutation, message):
    good = render_config(ServingContract("m", 8, 384))
    parse_config(good)
    with pytest.raises(RepositoryError, match=message):
        parse_config(mutation(good))


def test_republishing_identical_weights_keeps_the_latest_version(gated, tmp_path):
    """A re-run of the publish DAG must not mint a version (indexed vectors would look stale)."""
    first = publish(gated, tmp_path, "tiny", 8)
    again = publish(gated, tmp_path, "tiny", 16)
    assert (first.version, first.unchanged) == (1, False)
    assert (again.version, again.unchanged) == (1, True)
    assert list_versions(tmp_path / "tiny") == [1]
    assert read_contract(tmp_path / "tiny").max_batch_size == 16  # serving settings still apply
    changed = tmp_path / "changed"
    shutil.copytree(gated, changed)
    metadata = json.loads((changed / "embedding_model.json").read_text())
    (changed / "embedding_model.json").write_text(json.dumps({**metadata, "sha256": "0" * 64}))
    assert publish(changed, tmp_path, "tiny", 8).version == 2
