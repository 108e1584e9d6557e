"""Find or start the services a pipeline run needs on one machine: Elasticsearch and the inference server.

Each service is taken from the first of: the environment (``ES_URL``; ``EMBEDDING_SERVER_HOST`` /
``..._HTTP_PORT`` / ``..._GRPC_PORT``), a live service on the embedded default address (so a second
``make airflow`` or a ``make serve`` in another terminal is reused, not doubled), or a process
started here: the noida-db ES emulator on a persistent data dir and the local inference server.
What was started here is stopped here, by PID, when the block ends (also on an exception or
Ctrl-C), and the environment variables set for it are restored.

``ports="fixed"`` starts on the default ports so that processes that do not inherit this
environment (Airflow task processes, another shell) find the services; ``ports="free"`` picks
free ports (tests, or when the defaults are taken) and relies on the exported environment.
"""

from __future__ import annotations

import os
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal
from urllib.parse import urlsplit

from embedding_pipeline.local.es_emulator import EsEmulator
from embedding_pipeline.serving.process import LocalServer
from embedding_pipeline.settings import ServerSettings, model_repository_path, redact_url, work_dir
from embedding_pipeline.stores.elasticsearch.settings import EsSettings

PortsMode = Literal["fixed", "free"]
Action = Literal["started", "reused", "configured"]

# The addresses the pipeline's settings fall back to when nothing is configured: probed before
# anything is started, and the ports used with ports="fixed".
DEFAULT_ES_URL: str = EsSettings.hosts[0]
DEFAULT_SERVER_HOST: str = ServerSettings.host
DEFAULT_SERVER_HTTP_PORT: int = ServerSettings.http_port
DEFAULT_SERVER_GRPC_PORT: int = ServerSettings.grpc_port

SERVER_ENV_KEYS = ("EMBEDDING_SERVER_HOST", "EMBEDDING_SERVER_HTTP_PORT", "EMBEDDING_SERVER_GRPC_PORT")


def es_emulator_dir() -> Path:
    """Persistent root of the ES emulator (data in ``noida-data/``, log ``noida.log``).

    noida-db restarts on an existing data dir with its data, so indices built from the UI survive
    a restart of ``make airflow``; it refuses a second process on the same dir.
    """
    return work_dir() / "es-emulator"


def say(line: str) -> None:
    """Print at once: the lines tell where services are while the process keeps running (and its
    stdout may be a file or a pipe, which Python would buffer)."""
    print(line, flush=True)


@dataclass(frozen=True)
class Service:
    """One resolved service: what was done about it and where it answers."""

    name: str
    action: Action
    where: str
    pid: int | None = None
    detail: str = ""

    def describe(self) -> str:
        verb = {"started": "started", "reused": "reusing", "configured": "using"}[self.action]
        pid = f" (pid {self.pid})" if self.pid is not None else ""
        detail = f"; {self.detail}" if self.detail else ""
        return f"{self.name}: {verb} {self.where}{pid}{detail}"


class LocalServices:
    """``with LocalServices(need_es=True, need_server=True) as services:`` - services for one session.

    ``services.services`` lists what was started, reused or taken from the environment;
    ``report`` gets one line per service on entry and one per stopped process on exit.
    """

    def __init__(
        self,
        need_es: bool = True,
        need_server: bool = True,
        model_repository: Path | None = None,
        ports: PortsMode = "fixed",
        report: Callable[[str], None] = say,
        server_threads: int = 0,
    ) -> None:
        if ports not in ("fixed", "free"):
            raise ValueError(f"ports must be 'fixed' or 'free', got {ports!r}")
        self.need_es = need_es
        self.need_server = need_server
        self.model_repository = (model_repository or model_repository_path()).resolve()
        self.ports = ports
        self.report = report
        self.server_threads = server_threads
        self.services: list[Service] = []
        self._saved_env: dict[str, str | None] = {}
        self._stack: ExitStack | None = None

    def __enter__(self) -> LocalServices:
        self.services = []
        stack = ExitStack()
        # Registered first, so it runs last: the variables point at the services until they are gone.
        stack.callback(self._restore_env)
        try:
            if self.need_es:
                self.services.append(self._resolve_es(stack))
                self.report(self.services[-1].describe())
            if self.need_server:
                self.services.append(self._resolve_server(stack))
                self.report(self.services[-1].describe())
        except BaseException:
            with uninterruptible():
                stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            with uninterruptible():
                stack.close()

    @property
    def started(self) -> list[Service]:
        """The services whose processes belong to this block (stopped on exit)."""
        return [service for service in self.services if service.action == "started"]

    def _set_env(self, **values: str) -> None:
        for key, value in values.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def _restore_env(self) -> None:
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()

    def _stop_callback(self, name: str, owner: EsEmulator | LocalServer) -> Callable[[], None]:
        """Stops ``owner`` by PID and says so; safe before ``start()`` has created the process."""

        def stop() -> None:
            pid = owner.process.pid if owner.process is not None else None
            owner.stop()
            if pid is not None:
                self.report(f"{name}: stopped pid {pid}")

        return stop

    def _resolve_es(self, stack: ExitStack) -> Service:
        name = "Elasticsearch"
        if url := os.environ.get("ES_URL"):
            return Service(name, "configured", f"ES_URL={redact_url(url)}")
        if _answers(DEFAULT_ES_URL):
            self._set_env(ES_URL=DEFAULT_ES_URL)
            return Service(name, "reused", DEFAULT_ES_URL, detail="something already answers there")
        port = urlsplit(DEFAULT_ES_URL).port if self.ports == "fixed" else None
        root = es_emulator_dir()
        root.mkdir(parents=True, exist_ok=True)
        emulator = EsEmulator(root, port=port)
        # Registered before start(): an interrupt during the start must not orphan the process.
        stack.callback(self._stop_callback(name, emulator))
        emulator.start()
        assert emulator.process is not None
        service = Service(
            name,
            "started",
            f"the noida-db emulator at {emulator.url}",
            pid=emulator.process.pid,
            detail=f"data {emulator.data_dir} (not a real ES; set ES_URL for a cluster)",
        )
        self._set_env(ES_URL=emulator.url)
        return service

    def _resolve_server(self, stack: ExitStack) -> Service:
        name = "inference server"
        if any(key in os.environ for key in SERVER_ENV_KEYS):
            settings = ServerSettings.from_env()
            live = _answers(f"http://{settings.host}:{settings.http_port}/v2/health/live", status=200)
            return Service(
                name,
                "configured",
                f"EMBEDDING_SERVER_* = {settings.host} http {settings.http_port} / grpc {settings.grpc_port}",
                detail="live" if live else "NOT answering /v2/health/live yet",
            )
        default_live = f"http://{DEFAULT_SERVER_HOST}:{DEFAULT_SERVER_HTTP_PORT}/v2/health/live"
        if _answers(default_live, status=200):
            self._set_env(
                EMBEDDING_SERVER_HOST=DEFAULT_SERVER_HOST,
                EMBEDDING_SERVER_HTTP_PORT=str(DEFAULT_SERVER_HTTP_PORT),
                EMBEDDING_SERVER_GRPC_PORT=str(DEFAULT_SERVER_GRPC_PORT),
                EMBEDDING_MODEL_REPOSITORY=str(self.model_repository),
            )
            return Service(
                name,
                "reused",
                f"the live server on {DEFAULT_SERVER_HOST} http {DEFAULT_SERVER_HTTP_PORT} "
                f"/ grpc {DEFAULT_SERVER_GRPC_PORT}",
                detail=f"assuming it serves {self.model_repository}",
            )
        fixed = self.ports == "fixed"
        server = LocalServer(
            self.model_repository,
            http_port=DEFAULT_SERVER_HTTP_PORT if fixed else None,
            grpc_port=DEFAULT_SERVER_GRPC_PORT if fixed else None,
            threads=self.server_threads,
            log_path=work_dir() / "logs" / "inference-server.log",
        )
        stack.callback(self._stop_callback(name, server))
        server.start()
        assert server.process is not None
        models = _served_models(self.model_repository)
        service = Service(
            name,
            "started",
            f"the local server on 127.0.0.1 http {server.http_port} / grpc {server.grpc_port}",
            pid=server.process.pid,
            detail=(
                f"repository {self.model_repository} "
                + (f"({', '.join(models)})" if models else "(no model published yet)")
                + f", log {server.log_path}"
            ),
        )
        self._set_env(
            EMBEDDING_SERVER_HOST="127.0.0.1",
            EMBEDDING_SERVER_HTTP_PORT=str(server.http_port),
            EMBEDDING_SERVER_GRPC_PORT=str(server.grpc_port),
            EMBEDDING_MODEL_REPOSITORY=str(self.model_repository),
        )
        return service


@contextmanager
def uninterruptible() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM inside the block (main thread only).

    Used around stopping processes: a second Ctrl-C that aborts a cleanup half-way is exactly how
    orphans are left behind. Every stop is bounded by its own timeouts, so the block ends.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _answers(url: str, status: int | None = None, timeout_s: float = 1.0) -> bool:
    """Whether an HTTP server answers ``url`` (with ``status``, when given) within ``timeout_s``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return status is None or response.status == status
    except urllib.error.HTTPError as exc:  # an answer, if not a happy one (e.g. 401 from a secured ES)
        return status is None or exc.code == status
    except OSError:
        return False


def _served_models(repository: Path) -> list[str]:
    """Model names with at least one published version (what the server loads at start)."""
    if not repository.is_dir():
        return []
    return sorted(
        model.name
        for model in repository.iterdir()
        if (model / "config.pbtxt").is_file()
        and any(child.is_dir() and child.name.isdigit() for child in model.iterdir())
    )
