"""A throw-away PostgreSQL server on loopback, from the system's packages (Debian's
``postgresql``; ``scripts/bootstrap.sh`` installs it): the Celery cluster's metadata database and
the state database of tests and benchmarks.

initdb + postgres with password auth (scram-sha-256, as the compose file), without fsync (the data
is thrown away). The server refuses to run as root: as root it runs as the ``postgres`` user of
Debian's package, on a data folder outside pytest's root-only temporary tree. Stopped by its
process group, the folder removed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from embedding_pipeline.errors import PipelineError
from embedding_pipeline.local.airflow_standalone import stop_process_group
from embedding_pipeline.serving.process import free_port


class PostgresError(PipelineError):
    """PostgreSQL is not installed or did not start."""


def postgres_bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    if not versions:
        raise PostgresError(
            "PostgreSQL is not installed (Debian: apt-get install postgresql; scripts/bootstrap.sh)"
        )
    return versions[-1].parent


@dataclass
class PostgresServer:
    """``user``/``password`` own ``databases``; ``url(db)`` is a SQLAlchemy URL (psycopg 3)."""

    log: Path
    user: str = "airflow"
    databases: tuple[str, ...] = ("airflow",)
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    port: int = field(default_factory=free_port)
    max_connections: int = 300
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _data: Path | None = field(default=None, init=False)

    def url(self, database: str | None = None) -> str:
        db = database or self.databases[0]
        return f"postgresql+psycopg://{self.user}:{self.password}@127.0.0.1:{self.port}/{db}"

    def __enter__(self) -> PostgresServer:
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
        binaries = postgres_bin()
        as_root = os.geteuid() == 0
        self._data = Path(tempfile.mkdtemp(prefix="embedding-pipeline-pg-"))
        pwfile = self._data / "pw"
        pwfile.write_text(self.password + "\n")
        data = self._data / "data"
        user = "postgres" if as_root else None
        if as_root:
            shutil.chown(self._data, "postgres")
            shutil.chown(pwfile, "postgres")
        initdb = [str(binaries / "initdb"), "-D", str(data), "-U", self.user, f"--pwfile={pwfile}"]
        result = subprocess.run(
            [*initdb, "-A", "scram-sha-256", "--no-sync"],
            user=user,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise PostgresError(f"initdb failed:\n{result.stderr[-1500:]}")
        pwfile.unlink()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        settings = ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
        settings.append(f"max_connections={self.max_connections}")
        command = [str(binaries / "postgres"), "-D", str(data), "-p", str(self.port), "-h", "127.0.0.1"]
        command += ["-k", str(self._data), *(arg for s in settings for arg in ("-c", s))]
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                command, user=user, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        env = {**os.environ, "PGPASSWORD": self.password}
        deadline = time.monotonic() + 60
        for database in self.databases:
            createdb = [str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user]
            while (
                done := subprocess.run([*createdb, database], env=env, capture_output=True, text=True)
            ).returncode:
                if self.popen.poll() is not None or time.monotonic() > deadline:
                    tail = self.log.read_text(errors="replace")[-1500:]
                    raise PostgresError(f"PostgreSQL did not start: {done.stderr.decode()}\n{tail}")
                time.sleep(0.3)

    def stop(self) -> None:
        if self.popen is not None:
            # SIGINT is PostgreSQL's fast shutdown (SIGTERM waits for every client to disconnect).
            self.popen.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=15)
            stop_process_group(self.popen, grace_s=10.0)
            self.popen = None
        if self._data is not None:
            shutil.rmtree(self._data, ignore_errors=True)
            self._data = None
