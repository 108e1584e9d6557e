"""Render and validate Triton ``config.pbtxt`` files with Triton's own protobuf schema.

``model_config_pb2`` ships inside ``tritonclient``. It is loaded by file path, not by importing
``tritonclient.grpc``: that package also registers the v2 gRPC service protos, which clash with
KServe's copies (``duplicate symbol 'inference.ServerLiveRequest'``) inside the local server process.
Parsing catches unknown fields and bad enum values; values inside strings (``backend``, tensor
names) parse whatever they hold, so they are checked here explicitly.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

from embedding_pipeline.errors import RepositoryError
from embedding_pipeline.model.onnx_export import INPUT_NAMES, OUTPUT_NAME

CONFIG_FILENAME = "config.pbtxt"
BACKEND = "onnxruntime"


@dataclass(frozen=True)
class ServingContract:
    """What a served embedding model accepts and returns (the client checks the same)."""

    name: str
    max_batch_size: int
    dim: int
    input_names: tuple[str, ...] = INPUT_NAMES
    output_name: str = OUTPUT_NAME


@cache
def model_config_pb2() -> ModuleType:
    """Triton's ``model_config_pb2`` module, loaded by path (see module docstring)."""
    existing = sys.modules.get("tritonclient.grpc.model_config_pb2")
    if existing is not None:
        return existing
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        raise RepositoryError("tritonclient is not installed; it provides Triton's model_config schema")
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("tritonclient.grpc.model_config_pb2", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    sys.modules["tritonclient.grpc.model_config_pb2"] = module
    return module


def render_config(
    contract: ServingContract,
    preferred_batch_sizes: tuple[int, ...] = (16, 32, 64),
    max_queue_delay_us: int = 2000,
    instance_count: int = 1,
    parameters: dict[str, str] | None = None,
) -> str:
    """Render ``config.pbtxt`` for the onnxruntime backend with dynamic batching."""
    preferred = [b for b in preferred_batch_sizes if b <= contract.max_batch_size] or [
        contract.max_batch_size
    ]
    inputs = ",\n".join(
        f'  {{\n    name: "{name}"\n    data_type: TYPE_INT64\n    dims: [ -1 ]\n  }}'
        for name in contract.input_names
    )
    params = "".join(
        f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{_escape(value)}" }}\n}}\n'
        for key, value in sorted((parameters or {}).items())
    )
    text = (
        f'name: "{contract.name}"\n'
        f'backend: "{BACKEND}"\n'
        f"max_batch_size: {contract.max_batch_size}\n"
        f"input [\n{inputs}\n]\n"
        "output [\n"
        f'  {{\n    name: "{contract.output_name}"\n    data_type: TYPE_FP32\n'
        f"    dims: [ {contract.dim} ]\n  }}\n"
        "]\n"
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(str(b) for b in preferred)} ]\n"
        f"  max_queue_delay_microseconds: {max_queue_delay_us}\n"
        "}\n"
        f"instance_group [\n  {{\n    count: {instance_count}\n    kind: KIND_AUTO\n  }}\n]\n"
        "version_policy: { latest: { num_versions: 1 } }\n"
        f"{params}"
    )
    parse_config(text)  # never write a config Triton would refuse
    return text


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def parse_config(text: str, source: str = CONFIG_FILENAME):
    """Parse and check ``text``; return the ``ModelConfig`` message or raise ``RepositoryError``."""
    from google.protobuf import text_format

    pb2 = model_config_pb2()
    try:
        config = text_format.Parse(text, pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise RepositoryError(f"{source}: not a valid Triton model config: {exc}") from exc
    problems = []
    if config.backend not in ("", BACKEND) or config.platform not in ("", "onnxruntime_onnx"):
        problems.append(f"backend {config.backend!r} / platform {config.platform!r} is not onnxruntime")
    if config.max_batch_size < 1:
        problems.append("max_batch_size must be >= 1 (the embedding client batches requests)")
    input_names = tuple(tensor.name for tensor in config.input)
    if sorted(input_names) != sorted(INPUT_NAMES):
        problems.append(f"inputs are {input_names}, expected {INPUT_NAMES}")
    int64 = pb2.DataType.Value("TYPE_INT64")
    if any(tensor.data_type != int64 for tensor in config.input):
        problems.append("inputs must be TYPE_INT64")
    outputs = [tensor for tensor in config.output if tensor.name == OUTPUT_NAME]
    if len(outputs) != 1:
        problems.append(f"output {OUTPUT_NAME!r} is missing")
    elif outputs[0].data_type != pb2.DataType.Value("TYPE_FP32") or len(outputs[0].dims) != 1:
        problems.append(f"output {OUTPUT_NAME!r} must be TYPE_FP32 with dims [ dim ]")
    elif outputs[0].dims[0] < 1:
        problems.append(f"output {OUTPUT_NAME!r} has no fixed embedding dimension")
    if problems:
        raise RepositoryError(f"{source}: " + "; ".join(problems))
    return config


def read_contract(model_dir: Path) -> ServingContract:
    """Read ``<model_dir>/config.pbtxt`` into the serving contract it declares."""
    path = model_dir / CONFIG_FILENAME
    if not path.is_file():
        raise RepositoryError(f"{path} is missing: publish the model first")
    config = parse_config(path.read_text(), str(path))
    if config.name and config.name != model_dir.name:
        raise RepositoryError(f"{path}: name {config.name!r} differs from its directory {model_dir.name!r}")
    output = next(tensor for tensor in config.output if tensor.name == OUTPUT_NAME)
    return ServingContract(
        name=model_dir.name,
        max_batch_size=config.max_batch_size,
        dim=int(output.dims[0]),
        input_names=tuple(tensor.name for tensor in config.input),
    )
