"""Exceptions with messages a pipeline operator can act on.

Library errors (tokenizers, onnxruntime, grpc) are caught at the edge of each module and re-raised
as one of these, so a failed Airflow task shows what went wrong and what to do, not a deep trace.
"""


class PipelineError(Exception):
    """Base class of every error this package raises on purpose."""


class SetupError(PipelineError):
    """The run cannot start as configured, and retrying cannot change that (another model in the
    collection, a conflicting index mapping, a bad setting): the DAGs fail such tasks at once."""


class ConfigError(SetupError):
    """A setting, Param or Connection is missing or invalid."""


class RunFilesChangedError(SetupError):
    """A file the run planned or wrote is gone or no longer the one planned (an input rewritten
    under the run, a cleaned staging directory). A retry of the same task reads the same missing
    file, so it fails at once; re-running the dates plans and stages again from what is there."""


class ModelSourceError(PipelineError):
    """A model cannot be found or loaded from the given source."""


class ExportError(PipelineError):
    """ONNX export or conversion failed."""


class ParityGateError(PipelineError):
    """An exported variant is not close enough to the PyTorch reference to be published."""


class RepositoryError(PipelineError):
    """The model repository is missing, corrupt or cannot be written."""


class InvalidInputError(PipelineError):
    """Input texts or a request do not satisfy the embedding contract."""


class InferenceServerError(PipelineError):
    """The inference server failed a request for a reason that is not the caller's input."""


class ServerUnavailableError(InferenceServerError):
    """The inference server cannot be reached (down, wrong address, or retries exhausted)."""


class ModelNotReadyError(InferenceServerError):
    """The server is up but the requested model is unknown or not ready."""


class ContractMismatchError(InferenceServerError):
    """The served model's inputs/outputs differ from what the client expects."""
