"""``model.py`` of a Triton python-backend model that runs ONNX Runtime on the version's model.onnx.

The Triton this project can run here (``nvidia-pytriton``'s ``tritonserver``) has no onnxruntime
backend; this stands in for it with exactly the published contract (INT64 ``input_ids`` /
``attention_mask`` in, FP32 ``sentence_embedding`` out), so the real server's protocol, batching,
repository and readiness handling are what the conformance tests exercise. ``tests/real_triton.py``
copies it into each version folder of the served repository.

Triton's python stub embeds the interpreter and ignores ``PYTHONPATH``: the server's environment
names the virtualenv holding onnxruntime and numpy < 2 there, and it goes first on ``sys.path``.
"""

import os
import sys

sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

INPUTS = ("input_ids", "attention_mask")
OUTPUT = "sentence_embedding"


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            feeds = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in INPUTS}
            (vectors,) = self.session.run([OUTPUT], feeds)
            tensor = pb_utils.Tensor(OUTPUT, np.ascontiguousarray(vectors, dtype=np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses
