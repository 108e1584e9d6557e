"""Local inference server: the embedded stand-in for Triton, speaking KServe v2 over REST and gRPC.

It serves every model under a Triton model repository with ONNX Runtime and honours the same
contract as the published ``config.pbtxt`` (tensor names, dtypes, dims, ``max_batch_size``), so the
embedding client cannot tell it from Triton. Production points the same client at Triton.

Run it as its own process (``embedding-pipeline serve`` or ``python -m
embedding_pipeline.serving.server``): ``kserve`` and ``tritonclient.grpc`` cannot be imported in
one process (their copies of the v2 protos clash), so nothing else in this package imports this
module.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from embedding_pipeline.errors import PipelineError
from embedding_pipeline.model.onnx_export import INPUT_NAMES, OUTPUT_NAME, ort_session
from embedding_pipeline.model.repository import PublishedModel, latest_version
from embedding_pipeline.model.triton_config import ServingContract, read_contract

log = logging.getLogger("embedding_pipeline.serving.server")


def _check_graph(name: str, published: PublishedModel, contract: ServingContract, session: Any) -> int:
    """The graph's embedding dim, after checking its inputs and dim against ``config.pbtxt``."""
    graph_inputs = sorted(i.name for i in session.get_inputs())
    if graph_inputs != sorted(contract.input_names):
        raise PipelineError(
            f"{name} v{published.version}: graph inputs {graph_inputs} differ from "
            f"config.pbtxt {sorted(contract.input_names)}"
        )
    dim = int(published.metadata["dim"])
    if dim != contract.dim:
        raise PipelineError(
            f"{name} v{published.version}: graph dim {dim} differs from config.pbtxt dims [{contract.dim}]"
        )
    return dim


def _request_arrays(name: str, max_batch_size: int, tensors: list[Any]) -> dict[str, np.ndarray]:
    """The request's INT64 [batch, sequence] inputs by name; ValueError says what is wrong."""
    names = sorted(tensor.name for tensor in tensors)
    if names != sorted(INPUT_NAMES):
        raise ValueError(f"{name} expects inputs {list(INPUT_NAMES)}, got {names}")
    arrays: dict[str, np.ndarray] = {}
    for tensor in tensors:
        if tensor.datatype != "INT64":
            raise ValueError(f"input {tensor.name!r} must be INT64, got {tensor.datatype}")
        array = tensor.as_numpy()
        if array.ndim != 2:
            raise ValueError(f"input {tensor.name!r} must be [batch, sequence], got {list(array.shape)}")
        arrays[tensor.name] = array.astype(np.int64, copy=False)
    shapes = {array.shape for array in arrays.values()}
    if len(shapes) != 1:
        raise ValueError(f"inputs differ in shape: {sorted(shapes)}")
    batch = next(iter(shapes))[0]
    if batch > max_batch_size:
        raise ValueError(f"batch size {batch} exceeds max_batch_size {max_batch_size} of {name}")
    return arrays


def build_server_classes():
    """Define the KServe classes lazily so importing this module does not import kserve."""
    import kserve
    from kserve import InferOutput, InferRequest, InferResponse
    from kserve.errors import InvalidInput

    class OnnxEmbeddingModel(kserve.Model):
        """One published model version behind the v2 protocol."""

        def __init__(self, root: Path, name: str, threads: int) -> None:
            super().__init__(name)
            self.root = root
            self.threads = threads
            self.contract: ServingContract | None = None
            self.published: PublishedModel | None = None
            self.session = None

        def load(self) -> bool:
            self.contract = read_contract(self.root / self.name)
            self.published = latest_version(self.root, self.name)
            self.session = ort_session(self.published.path / "model.onnx", threads=self.threads)
            dim = _check_graph(self.name, self.published, self.contract, self.session)
            self.ready = True
            log.info("loaded %s version %s (dim %s)", self.name, self.published.version, dim)
            return self.ready

        def get_input_types(self) -> list[dict]:
            return [{"name": name, "datatype": "INT64", "shape": [-1, -1]} for name in INPUT_NAMES]

        def get_output_types(self) -> list[dict]:
            assert self.contract is not None
            return [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, self.contract.dim]}]

        def _check(self, payload: InferRequest) -> dict[str, np.ndarray]:
            assert self.contract is not None
            try:
                return _request_arrays(self.name, self.contract.max_batch_size, payload.inputs)
            except ValueError as exc:
                raise InvalidInput(str(exc)) from None

        async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
            arrays = self._check(payload)
            if next(iter(arrays.values())).shape[0] == 0:
                result = np.zeros((0, self.contract.dim), dtype=np.float32)
            else:
                (result,) = await asyncio.to_thread(self.session.run, [OUTPUT_NAME], arrays)
            output = InferOutput(name=OUTPUT_NAME, shape=list(result.shape), datatype="FP32")
            output.set_data_from_numpy(
                result.astype(np.float32, copy=False), binary_data=payload.use_binary_outputs
            )
            return InferResponse(
                response_id=payload.id or str(uuid.uuid4()),
                model_name=self.name,
                model_version=str(self.published.version) if self.published else None,
                infer_outputs=[output],
                use_binary_outputs=payload.use_binary_outputs,
            )

    class LocalModelRepository(kserve.ModelRepository):
        """Loads models from a Triton repository; reloading swaps a new version in atomically."""

        def __init__(self, root: Path, threads: int) -> None:
            super().__init__(str(root))
            self.root = root
            self.threads = threads

        async def load(self, name: str) -> bool:
            # Build the new model off the event loop, then swap: requests in flight finish on the old one.
            model = OnnxEmbeddingModel(self.root, name, self.threads)
            await asyncio.to_thread(model.load)
            self.update(model)
            return model.ready

        def load_model(self, name: str) -> bool:
            model = OnnxEmbeddingModel(self.root, name, self.threads)
            model.load()
            self.update(model)
            return model.ready

    return OnnxEmbeddingModel, LocalModelRepository


def discover_models(root: Path) -> list[str]:
    """Model directories that hold a config.pbtxt (unpublished dirs are skipped)."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "config.pbtxt").is_file())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument(
        "--model", action="append", default=None, help="model(s) to load at start (default: all)"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = all cores)"
    )
    parser.add_argument("--grpc-threads", type=int, default=8, help="gRPC handler threads")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sys.argv = sys.argv[:1]  # kserve parses sys.argv at import; keep our flags away from it
    import kserve

    _, repository_cls = build_server_classes()
    root = args.model_repository.resolve()
    repository = repository_cls(root, args.threads)
    names = args.model or discover_models(root)
    for name in names:
        try:
            repository.load_model(name)
        except PipelineError as exc:
            # A broken model must not keep the others (or the load API) from serving.
            log.error("could not load %s: %s", name, exc)
    server = kserve.ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        registered_models=repository,
        max_threads=args.grpc_threads,
        enable_latency_logging=False,
        grace_period=30,
    )
    log.info(
        "serving %s from %s (http %s, grpc %s)",
        list(repository.get_models()),
        root,
        args.http_port,
        args.grpc_port,
    )
    server.start(list(repository.get_models().values()))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
