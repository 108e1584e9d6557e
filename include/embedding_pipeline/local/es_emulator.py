"""Start the ``noida-db`` Elasticsearch emulator as a child process (embedded default, tests).

No Elasticsearch server ships on PyPI, apt or npm, so without an ``elasticsearch_default``
Connection or ``ES_URL`` the main job and the tests use noida-db, an ES-compatible emulator
(reports ES 8.15; works with elasticsearch-py 9). It differs from ES in places (see README); a real
cluster is used whenever one is configured.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from importlib.resources import files
from pathlib import Path

from embedding_pipeline.errors import PipelineError
from embedding_pipeline.serving.process import free_port


def noida_command() -> list[str]:
    """The emulator binary itself if the package ships it, else the ``noida-db`` wrapper script.

    The wrapper runs the binary as a child (``subprocess.call``): stopping only the wrapper would
    orphan the server, which is why :class:`EsEmulator` also starts it in its own process group.
    """
    try:
        binary = Path(str(files("noida_db").joinpath("noida-db")))
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    except ModuleNotFoundError:
        pass
    beside_python = Path(sys.executable).parent / "noida-db"
    found = str(beside_python) if beside_python.exists() else shutil.which("noida-db")
    if not found:
        raise EmulatorError("noida-db is not installed (pip install noida-db==0.2.3)")
    return [found]


class EmulatorError(PipelineError):
    """The emulator is missing or did not start."""


class EsEmulator:
    """A noida-db process serving only Elasticsearch from ``work_dir/noida-data`` (free port by default).

    ``with EsEmulator(tmp_dir) as emulator: emulator.url`` - stopped by PID (its own process group:
    SIGTERM, then SIGKILL after a grace period) when the block ends. A fresh ``work_dir`` gives an
    empty cluster (tests); a reused one keeps its indices, as noida-db restarts on an existing data
    dir (``local.services`` uses one persistent dir). noida-db refuses a second process on one dir.
    """

    def __init__(self, work_dir: Path, port: int | None = None, start_timeout_s: float = 30.0) -> None:
        self.data_dir = work_dir / "noida-data"
        self.log_path = work_dir / "noida.log"
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> EsEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        command = [
            *noida_command(),
            "start",
            "--only",
            "elasticsearch",
            "--data-dir",
            str(self.data_dir),
            "--elasticsearch-port",
            str(self.port),
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Appended: on a reused dir the previous runs' log (and a refused second start) stays readable.
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmulatorError(f"noida-db exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url, timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise EmulatorError(
            f"noida-db did not answer on {self.url} within {self.start_timeout_s}s: {self.log_tail()}"
        )

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        # The group id is the PID of the process started here (start_new_session=True).
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""
