"""A real NVIDIA Triton Inference Server (2.51, from the ``nvidia-pytriton`` wheel) for the tests.

The wheel's ``tritonserver`` has the python backend only, and pins numpy < 2: it lives in its own
virtualenv, ``.venv-triton`` (``scripts/bootstrap.sh``; ``TRITON_VENV`` points elsewhere). It serves
a *view* of our model repository: per model the published ``config.pbtxt`` with the backend swapped
for ``python`` (everything else - I/O, ``max_batch_size``, dynamic batching, version policy - as
published), and per version ``model.py`` (``tests/triton_python_model.py``, ONNX Runtime) beside a
link to the version's ``model.onnx``. ``sync()`` mirrors the repository again after a publish.

The server starts with the flags of the compose file's ``triton`` service (EXPLICIT model control,
``--load-model=*``, no exit on a model error, non-strict readiness) plus its ports and paths, and
is stopped by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from embedding_pipeline.model.repository import list_versions
from embedding_pipeline.model.triton_config import CONFIG_FILENAME
from embedding_pipeline.serving.process import free_port
from embedding_pipeline.settings import PROJECT_ROOT

MODEL_PY = Path(__file__).with_name("triton_python_model.py")
COMPOSE_FILE = PROJECT_ROOT / "docker-compose.airflow.yml"
# What the Triton virtualenv's interpreter is: its "major.minor" (which stub) and its lib/ (libpython).
_PYTHON_FACTS = (
    "import sys, sysconfig; "
    "print(f'{sys.version_info[0]}.{sys.version_info[1]}', sysconfig.get_config_var('LIBDIR'))"
)
# Set by the compose file to container paths or ports: given here per server instead.
_OWN_FLAGS = ("--model-repository", "--http-port", "--grpc-port", "--metrics-port")


def triton_venv() -> Path:
    venv = Path(os.environ.get("TRITON_VENV", PROJECT_ROOT / ".venv-triton"))
    if not (venv / "bin" / "python").exists():
        raise RuntimeError(f"no Triton virtualenv at {venv}: run scripts/bootstrap.sh (make setup)")
    return venv


def _site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3.*/site-packages"))


def compose_flags() -> list[str]:
    """The ``tritonserver`` flags of the compose file's ``triton`` service, minus paths and ports."""
    command = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["triton"]["command"]
    assert command[0] == "tritonserver", command
    return [flag for flag in command[1:] if not flag.startswith(_OWN_FLAGS)]


def python_backend_config(config_text: str) -> str:
    """Our ``config.pbtxt`` served by the python backend instead of onnxruntime (nothing else)."""
    onnx = 'backend: "onnxruntime"'
    assert config_text.count(onnx) == 1, config_text
    return config_text.replace(onnx, 'backend: "python"')


class RealTriton:
    """``with RealTriton(repository, root) as triton:`` serves a view of ``repository``."""

    def __init__(self, repository: Path, root: Path, models: list[str] | None = None) -> None:
        self.repository = repository
        self.root = root
        self.view = root / "python-backend-repository"
        self.models = models  # None: every model in the repository
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.log_path = root / "tritonserver.log"
        self.process: subprocess.Popen[bytes] | None = None

    # -- the served repository -------------------------------------------------------------------
    def sync(self) -> None:
        """Mirror the repository's models and complete versions into the view (drop removed ones)."""
        names = (
            self.models
            if self.models is not None
            else [d.name for d in self.repository.iterdir() if (d / CONFIG_FILENAME).exists()]
        )
        for name in names:
            source, target = self.repository / name, self.view / name
            target.mkdir(parents=True, exist_ok=True)
            config = python_backend_config((source / CONFIG_FILENAME).read_text())
            (target / CONFIG_FILENAME).write_text(config)
            versions = {str(v) for v in list_versions(source)}
            for stale in [d for d in target.iterdir() if d.is_dir() and d.name not in versions]:
                shutil.rmtree(stale)
            for version in versions:
                folder = target / version
                folder.mkdir(exist_ok=True)
                shutil.copyfile(MODEL_PY, folder / "model.py")
                link = folder / "model.onnx"
                if not link.exists():
                    link.symlink_to(source / version / "model.onnx")

    # -- the process --------------------------------------------------------------------------------
    def start(self, timeout_s: float = 120.0) -> RealTriton:
        venv = triton_venv()
        dist = _site_packages(venv) / "pytriton" / "tritonserver"
        stub = dist / "backends" / "python" / "triton_python_backend_stub"
        python_version, base_lib = subprocess.run(
            [str(venv / "bin" / "python"), "-c", _PYTHON_FACTS],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if not stub.exists():  # the wheel keeps one stub per Python version aside (as pytriton does)
            shutil.copy(dist / "python_backend_stubs" / python_version / "triton_python_backend_stub", stub)
        self.sync()
        env = {
            **os.environ,
            # The stub links libpython3.x from the interpreter's lib/ (else it picks up a foreign one).
            "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [base_lib, os.environ.get("LD_LIBRARY_PATH")])),
            "PYTHONPATH": str(_site_packages(venv)),
        }
        command = [
            str(dist / "bin" / "tritonserver"),
            f"--model-repository={self.view}",
            f"--backend-directory={dist / 'backends'}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            *compose_flags(),
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while not self._answers("/v2/health/live"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tritonserver did not start:\n{self.log_tail()}")
            time.sleep(0.3)
        return self

    def _answers(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=2) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout_s: float = 40.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(line for line in text.splitlines() if not line.startswith(("+", "|")))[-6000:]

    def __enter__(self) -> RealTriton:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
