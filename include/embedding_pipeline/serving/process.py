"""Start and stop the local inference server as a child process, by PID.

Used by the CLI, the main job and the tests. The server always runs in its own process because
``kserve`` and ``tritonclient.grpc`` cannot share one (see ``serving.server``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from embedding_pipeline.errors import ServerUnavailableError


def free_port() -> int:
    """A TCP port that is free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalServer:
    """``with LocalServer(repo) as server:`` runs the v2 server until the block ends."""

    def __init__(
        self,
        repository: Path,
        http_port: int | None = None,
        grpc_port: int | None = None,
        threads: int = 0,
        log_path: Path | None = None,
        models: list[str] | None = None,
    ) -> None:
        self.repository = repository
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.threads = threads
        self.log_path = log_path or repository.parent / f"inference-server-{self.http_port}.log"
        self.models = models or []
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120.0) -> LocalServer:
        command = [
            sys.executable,
            "-m",
            "embedding_pipeline.serving.server",
            "--model-repository",
            str(self.repository),
            "--http-port",
            str(self.http_port),
            "--grpc-port",
            str(self.grpc_port),
            "--threads",
            str(self.threads),
        ]
        for model in self.models:
            command += ["--model", model]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerUnavailableError(
                    f"inference server exited with {self.process.returncode} during start; "
                    f"log tail:\n{self.log_tail()}"
                )
            if self.is_live():
                return self
            time.sleep(0.3)
        self.stop()
        raise ServerUnavailableError(
            f"inference server not live after {timeout_s}s; log tail:\n{self.log_tail()}"
        )

    def is_live(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}/v2/health/live", timeout=1
            ) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout_s: float = 40.0) -> int | None:
        """SIGTERM (the server drains in-flight REST requests), then SIGKILL after ``timeout_s``."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
