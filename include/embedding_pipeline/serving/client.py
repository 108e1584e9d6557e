"""The one module that talks to the inference server (Triton or the local KServe server).

Texts are tokenized here with the tokenizer published beside the model, sorted by length so each
request pads little, cut into batches no larger than the server's ``max_batch_size``, and sent with
a bounded number of requests in flight. Transient failures (UNAVAILABLE, DEADLINE_EXCEEDED,
RESOURCE_EXHAUSTED, HTTP 429/502/503/504) are retried with exponential backoff and full jitter;
everything else becomes a typed error with a message that says what to fix.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from embedding_pipeline.errors import (
    ContractMismatchError,
    InferenceServerError,
    InvalidInputError,
    ModelNotReadyError,
    ServerUnavailableError,
)
from embedding_pipeline.model.onnx_export import INPUT_NAMES, OUTPUT_NAME
from embedding_pipeline.model.publish import encoder_for
from embedding_pipeline.model.registry import ROLES, Role
from embedding_pipeline.model.repository import PublishedModel, latest_version
from embedding_pipeline.model.tokenization import TextEncoder, validate_texts
from embedding_pipeline.model.triton_config import ServingContract, read_contract
from embedding_pipeline.retry import RetriesExhausted
from embedding_pipeline.settings import ServerSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

_RETRYABLE_GRPC = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.RESOURCE_EXHAUSTED"}
_RETRYABLE_HTTP = {"429", "502", "503", "504"}


@dataclass(frozen=True)
class EmbeddingResult:
    """L2-normalised vectors in input order, and how many inputs were truncated."""

    vectors: np.ndarray
    truncated: int
    requests: int


def is_transient(exc: BaseException) -> bool:
    """Whether a tritonclient/network error is worth retrying."""
    status = str(getattr(exc, "status", lambda: None)() or "")
    if status in _RETRYABLE_GRPC or status in _RETRYABLE_HTTP:
        return True
    if isinstance(exc, ConnectionError | TimeoutError | OSError):
        return True
    message = str(exc).lower()
    return any(s in message for s in ("connection refused", "failed to connect", "timed out", "deadline"))


class EmbeddingClient:
    """Embeds texts through a KServe v2 server with the model's published tokenizer and contract."""

    def __init__(self, settings: ServerSettings | None = None) -> None:
        self.settings = settings or ServerSettings.from_env()
        self.published: PublishedModel = latest_version(
            self.settings.model_repository, self.settings.model_name
        )
        self.contract: ServingContract = read_contract(
            self.settings.model_repository / self.settings.model_name
        )
        self.encoder: TextEncoder = encoder_for(self.published.path, self.published.metadata)
        self.dim = int(self.published.metadata["dim"])
        self.batch_size = min(self.settings.batch_size, self.contract.max_batch_size)
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=self.settings.max_in_flight, thread_name_prefix="embed")
        self._checked = False

    # -- transport ---------------------------------------------------------------------------
    def _client(self) -> Any:
        """One tritonclient per thread (the HTTP client is not thread-safe; gRPC ones are cheap)."""
        client = getattr(self._local, "client", None)
        if client is None:
            s = self.settings
            if s.protocol == "grpc":
                import tritonclient.grpc as grpcclient

                client = grpcclient.InferenceServerClient(
                    s.grpc_url, ssl=s.ssl, root_certificates=s.ca_certs or None
                )
            else:
                client = _http_client(s, s.timeout_s)
            self._local.client = client
        return client

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        s = self.settings
        try:
            return s.retry.call(what, call, is_transient)
        except RetriesExhausted as exc:
            budget = f" (retry budget {s.retry_deadline_s:g} s)" if s.retry_deadline_s else ""
            raise ServerUnavailableError(
                f"{what} failed after {exc.attempts} attempts{budget} against {s.protocol}://{s.url}: "
                f"{exc.last}"
            ) from exc.last

    # -- checks ------------------------------------------------------------------------------
    def check_ready(self) -> None:
        """Fail clearly if the server is down, the model is not ready, or its contract differs."""
        s = self.settings
        client = self._client()
        try:
            live = self._retrying("server liveness check", client.is_server_live)
        except ServerUnavailableError:
            raise
        except Exception as exc:
            raise ServerUnavailableError(
                f"inference server at {s.protocol}://{s.url} is not reachable: {exc}"
            ) from exc
        if not live:
            raise ServerUnavailableError(f"inference server at {s.protocol}://{s.url} is not live")
        if not self._model_ready(s.model_name):
            raise ModelNotReadyError(
                f"model {s.model_name!r} is not ready on {s.protocol}://{s.url}; served models: "
                f"{self.served_models() or 'none'} (publish it and load it: `embedding-pipeline publish`)"
            )
        self._check_metadata(self._metadata())
        self._checked = True

    def _model_ready(self, name: str) -> bool:
        """Readiness as a bool: Triton answers False for unknown models, KServe gRPC NOT_FOUND."""
        try:
            return bool(self._retrying("model readiness check", lambda: self._client().is_model_ready(name)))
        except InferenceServerError:
            raise
        except Exception as exc:
            if isinstance(self._classify(exc), ModelNotReadyError):
                return False
            raise self._classify(exc) from exc

    def served_models(self) -> list[str]:
        try:
            if self.settings.protocol == "grpc":
                index = self._client().get_model_repository_index(as_json=True).get("models", [])
            else:
                index = self._client().get_model_repository_index()
            return sorted({m["name"] for m in index})
        except Exception:
            return []  # KServe does not route the index API; the caller's message stays useful

    def _metadata(self) -> dict:
        client, name = self._client(), self.settings.model_name
        if self.settings.protocol == "grpc":
            return self._retrying("model metadata", lambda: client.get_model_metadata(name, as_json=True))
        return self._retrying("model metadata", lambda: client.get_model_metadata(name))

    def _check_metadata(self, metadata: dict) -> None:
        inputs = {t["name"]: t for t in metadata.get("inputs", [])}
        outputs = {t["name"]: t for t in metadata.get("outputs", [])}
        problems = []
        if sorted(inputs) != sorted(INPUT_NAMES):
            problems.append(f"inputs {sorted(inputs)} != {sorted(INPUT_NAMES)}")
        elif any(t["datatype"] != "INT64" for t in inputs.values()):
            problems.append("inputs are not INT64")
        output = outputs.get(OUTPUT_NAME)
        if output is None:
            problems.append(f"no output {OUTPUT_NAME!r} (outputs: {sorted(outputs)})")
        else:
            served_dim = int(output["shape"][-1])
            if output["datatype"] != "FP32" or served_dim != self.dim:
                problems.append(
                    f"output is {output['datatype']}{output['shape']}, expected FP32[-1, {self.dim}] "
                    f"(published v{self.published.version})"
                )
        if problems:
            raise ContractMismatchError(
                f"model {self.settings.model_name!r} contract mismatch: " + "; ".join(problems)
            )

    # -- embedding ---------------------------------------------------------------------------
    def embed(self, texts: Sequence[object], role: Role | None = "passage") -> EmbeddingResult:
        """Embed ``texts`` (validated) with the role's prefix; vectors come back in input order."""
        if role is not None and role not in ROLES:
            raise InvalidInputError(f"role must be one of {ROLES} or None, got {role!r}")
        valid = validate_texts(texts)
        if not valid:
            return EmbeddingResult(np.zeros((0, self.dim), dtype=np.float32), truncated=0, requests=0)
        if not self._checked:
            self.check_ready()
        # Tokenized once: lengths for the length-sorted batches, then each batch padded from them.
        encodings = self.encoder.tokenize(valid, role)
        lengths = np.array([len(encoding.ids) for encoding in encodings])
        order = np.argsort(lengths, kind="stable")
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        vectors = np.empty((len(valid), self.dim), dtype=np.float32)
        truncated = 0
        # A sliding window of max_in_flight requests: tokenizing batch i+1 overlaps inference of
        # batch i, and never more than max_in_flight encoded batches are held (flat memory).
        window: deque[tuple[np.ndarray, Future[np.ndarray], int]] = deque()
        for rows in batches:
            batch = self.encoder.pad([encodings[i] for i in rows])
            window.append(
                (
                    rows,
                    self._pool.submit(self.infer_arrays, batch.input_ids, batch.attention_mask),
                    batch.truncated,
                )
            )
            if len(window) >= self.settings.max_in_flight:
                done_rows, future, cut = window.popleft()
                vectors[done_rows] = future.result()
                truncated += cut
        while window:
            done_rows, future, cut = window.popleft()
            vectors[done_rows] = future.result()
            truncated += cut
        return EmbeddingResult(vectors, truncated=truncated, requests=len(batches))

    def infer_arrays(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """One request with pre-tokenized inputs (exposed for benchmarks and contract tests)."""
        s = self.settings
        if s.protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        inputs = []
        for name, array in zip(INPUT_NAMES, (input_ids, attention_mask), strict=True):
            tensor = module.InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(np.ascontiguousarray(array, dtype=np.int64))
            inputs.append(tensor)
        outputs = [module.InferRequestedOutput(OUTPUT_NAME)]
        client = self._client()
        if s.protocol == "grpc":
            call = lambda: client.infer(s.model_name, inputs, outputs=outputs, client_timeout=s.timeout_s)  # noqa: E731
        else:
            call = lambda: client.infer(s.model_name, inputs, outputs=outputs)  # noqa: E731
        try:
            response = self._retrying(f"infer on {s.model_name!r}", call)
        except InferenceServerError:
            raise
        except Exception as exc:
            raise self._classify(exc) from exc
        # The protobuf's field: as_json would base64 the whole output tensor (~1 ms a 128-row reply).
        served_version = (
            response.get_response().model_version
            if s.protocol == "grpc"
            else response.get_response().get("model_version", "")
        )
        if served_version and str(served_version) != str(self.published.version):
            raise ContractMismatchError(
                f"server answered with {s.model_name!r} v{served_version} but this client tokenizes for "
                f"v{self.published.version}; create a new client after (re)loading a model"
            )
        result = response.as_numpy(OUTPUT_NAME)
        if result is None or result.shape != (input_ids.shape[0], self.dim):
            raise ContractMismatchError(
                f"server returned {None if result is None else result.shape}, "
                f"expected ({input_ids.shape[0]}, {self.dim})"
            )
        return result

    def _classify(self, exc: Exception) -> InferenceServerError:
        message = str(exc)
        lowered = message.lower()
        if any(s in lowered for s in ("not found", "not ready", "unknown model", "does not exist")):
            return ModelNotReadyError(f"model {self.settings.model_name!r}: {message}")
        # KServe and Triton word a batch over max_batch_size differently ("batch-size must be <=").
        refused = ("max_batch_size", "batch-size must be", "expects inputs", "must be int64")
        if any(s in lowered for s in refused):
            return ContractMismatchError(f"request refused by the server: {message}")
        return InferenceServerError(f"inference failed: {message}")

    # -- repository control ------------------------------------------------------------------
    def load_model(self, name: str | None = None) -> None:
        """Ask the server to (re)load ``name`` from its repository and wait until it is ready.

        Uses the HTTP repository API: KServe's gRPC repository calls are broken (the model name
        arrives empty), while REST works on both KServe and Triton.
        """
        s = self.settings
        name = name or s.model_name
        client = _http_client(s, s.ready_timeout_s)
        try:
            self._retrying(f"load of {name!r}", lambda: client.load_model(name))
        except InferenceServerError:
            raise
        except Exception as exc:
            raise ModelNotReadyError(f"server at http://{s.http_url} could not load {name!r}: {exc}") from exc
        finally:
            client.close()
        self.wait_until_ready(name)

    def wait_until_ready(self, name: str | None = None) -> None:
        name = name or self.settings.model_name
        deadline = time.monotonic() + self.settings.ready_timeout_s
        while time.monotonic() < deadline:
            try:
                if self._model_ready(name):
                    return
            except ServerUnavailableError:
                pass
            time.sleep(0.5)
        raise ModelNotReadyError(
            f"model {name!r} not ready on {self.settings.url} after {self.settings.ready_timeout_s}s"
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        client = getattr(self._local, "client", None)
        if client is not None:
            client.close()

    def __enter__(self) -> EmbeddingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _http_client(s: ServerSettings, timeout_s: float) -> Any:
    """A tritonclient HTTP client; with TLS it checks the server's certificate against
    ``s.ca_certs`` when given (geventhttpclient otherwise uses certifi's bundle)."""
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(
        s.http_url,
        ssl=s.ssl,
        ssl_options={"ca_certs": s.ca_certs} if s.ssl and s.ca_certs else None,
        connection_timeout=timeout_s,
        network_timeout=timeout_s,
    )
