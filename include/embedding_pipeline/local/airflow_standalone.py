"""``embedding-pipeline airflow``: ``airflow standalone`` (the UI) with this project's DAGs, locally.

For people who want to click through the DAGs rather than run ``make demo``. It configures the
project-local ``AIRFLOW_HOME`` (``airflow_runner.configure_airflow``), finds or starts the inference
server and the ES emulator (``LocalServices``, default ports, so task processes and other shells
find them; their addresses are also exported into Airflow's environment), runs ``airflow
standalone`` in its own process group, and tells where the UI is and where the generated admin
password is. Ctrl-C or SIGTERM stops all of it, by process group and PID.

Stopping the standalone: SIGTERM to its parent alone orphans its ~40 children (scheduler,
LocalExecutor workers, API server, ...). SIGINT to the whole group hangs (measured: scheduler, DAG
processor and triggerer still alive after 90 s), apparently because the parent turns its SIGINT
into a SIGTERM to each component that is already shutting down: SIGINT to every member but the
parent stops them in ~10 s. SIGTERM to the whole group gives every process one signal; the group
was empty after 7-11 s. SIGKILL to the group is the fallback.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from embedding_pipeline.errors import PipelineError
from embedding_pipeline.local.airflow_runner import configure_airflow
from embedding_pipeline.local.services import LocalServices, PortsMode, say
from embedding_pipeline.settings import model_repository_path, work_dir

HELP = "start Airflow standalone (UI) with the DAGs, the local inference server and the ES emulator"


class StandaloneError(PipelineError):
    """``airflow standalone`` could not be started or died."""


def run_standalone(
    port: int = 8080,
    host: str = "127.0.0.1",
    model_repository: Path | None = None,
    ports: PortsMode = "fixed",
    ready_timeout_s: float = 300.0,
    stop_grace_s: float = 60.0,
    report: Callable[[str], None] = say,
) -> int:
    """Run ``airflow standalone`` until Ctrl-C / SIGTERM; 0 when stopped that way (main thread only).

    Raises :class:`StandaloneError` when the API port is taken, the standalone exits, or its API
    does not answer within ``ready_timeout_s``; every process started here is stopped first.
    """
    home = configure_airflow()
    local = _local_address(host)
    if not _port_free(host, port):
        raise StandaloneError(f"port {port} on {host} is in use (another Airflow?); choose one with --port")
    log_path = work_dir() / "logs" / "airflow-standalone.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # SIGTERM takes the Ctrl-C path (a KeyboardInterrupt), so `kill` stops everything as cleanly as
    # Ctrl-C does; SIGINT gets the same handler because a shell's background job starts with SIGINT
    # ignored, and that would be inherited by the standalone's components as well.
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with LocalServices(model_repository=model_repository, ports=ports, report=report):
            env = _standalone_env(host, port, local)
            report(f"Airflow: starting `airflow standalone` (AIRFLOW_HOME {home}, log {log_path})")
            started = time.monotonic()
            with open(log_path, "ab") as log:
                process = subprocess.Popen(
                    [str(Path(sys.executable).with_name("airflow")), "standalone"],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                _wait_until_healthy(process, f"http://{local}:{port}", ready_timeout_s, log_path)
                report(
                    f"Airflow: UI at http://{local}:{port}/ (ready in {time.monotonic() - started:.0f}s, "
                    f"pid {process.pid}) - {_login_hint(home)}"
                )
                report("Ctrl-C stops Airflow and every service started here.")
                code = process.wait()
                raise StandaloneError(f"airflow standalone exited with {code}; see {log_path}")
            except KeyboardInterrupt:
                return 0
            finally:
                # From here on nothing may interrupt the shutdown (the handlers come back at the end).
                for sig in previous:
                    signal.signal(sig, signal.SIG_IGN)
                report("stopping Airflow ...")
                stop_process_group(process, stop_grace_s)
                report(f"Airflow: stopped process group {process.pid}")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_process_group(process: subprocess.Popen[bytes], grace_s: float = 60.0) -> None:
    """SIGTERM to the group of ``process`` (its leader), then SIGKILL, until no member is left.

    Waits for every live member of the group, not only the leader: the leader dies at once on
    SIGTERM while its components are still shutting down.
    """
    pgid = process.pid
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        process.poll()  # reap the leader, so that it does not count as a member
        if not group_members(pgid):
            return
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            process.poll()
            if not group_members(pgid):
                return
            time.sleep(0.2)


def group_members(pgid: int) -> list[int]:
    """PIDs of the live (not zombie) processes in process group ``pgid``, from ``/proc``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        state, _ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _local_address(host: str) -> str:
    """Where this machine reaches an API server bound to ``host``."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::", "localhost") else host


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _standalone_env(host: str, port: int, local: str) -> dict[str, str]:
    """The standalone's environment: this one (with the services' variables) plus the API address."""
    env = {**os.environ, "AIRFLOW__API__HOST": host, "AIRFLOW__API__PORT": str(port)}
    # The standalone runs its components as a bare `airflow` from PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # Task processes reach the API server at the execution API URL, which defaults to port 8080
    # whatever the API port is; point it at the real one unless it is configured.
    if "AIRFLOW__API__BASE_URL" not in env:
        env.setdefault("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", f"http://{local}:{port}/execution/")
    # LocalExecutor starts `parallelism` worker processes (default 32): on a laptop-sized machine
    # that is dozens of idle processes. Tasks here are CPU-bound; two per core is plenty.
    env.setdefault("AIRFLOW__CORE__PARALLELISM", str(2 * (os.cpu_count() or 1)))
    return env


def _wait_until_healthy(
    process: subprocess.Popen[bytes], base_url: str, timeout_s: float, log_path: Path
) -> None:
    """Until ``/api/v2/monitor/health`` answers 200; fail early if the standalone exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StandaloneError(
                f"airflow standalone exited with {process.returncode} during start:\n{_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(f"{base_url}/api/v2/monitor/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise StandaloneError(f"the Airflow API did not answer within {timeout_s:.0f}s:\n{_tail(log_path)}")


def _login_hint(home: Path) -> str:
    """Who logs in and where the password is, as the SimpleAuthManager of the standalone sets it up."""
    from airflow.configuration import conf

    if conf.getboolean("core", "simple_auth_manager_all_admins"):
        return "no login (simple_auth_manager_all_admins)"
    users = [entry.split(":")[0] for entry in conf.getlist("core", "simple_auth_manager_users")]
    configured = conf.get("core", "simple_auth_manager_passwords_file", fallback=None)
    password_file = Path(configured) if configured else home / "simple_auth_manager_passwords.json.generated"
    state = "" if password_file.is_file() else " (not written yet)"
    return f"user {', '.join(users)}, password in {password_file}{state}"


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("AIRFLOW__API__PORT", "8080")),
        help="API server / UI port (default: AIRFLOW__API__PORT or 8080)",
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("AIRFLOW__API__HOST", "127.0.0.1"),
        help="address the UI binds to (default: loopback only, since the generated password is "
        "stored in plain text; 0.0.0.0 exposes it)",
    )
    parser.add_argument("--model-repository", type=Path, default=model_repository_path())
    parser.add_argument(
        "--free-ports",
        action="store_true",
        help="start the inference server and the ES emulator on free ports instead of 8000/8001/9200 "
        "(Airflow's tasks still find them through the environment; other shells do not)",
    )


def _command(args: argparse.Namespace) -> int:
    try:
        return run_standalone(
            port=args.port,
            host=args.host,
            model_repository=args.model_repository,
            ports="free" if args.free_ports else "fixed",
        )
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # during the start of the services; whatever had started is stopped
        print("interrupted", file=sys.stderr)
        return 130


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``airflow`` subcommand to the CLI's subparsers."""
    parser = subparsers.add_parser("airflow", help=HELP, description=HELP)
    add_arguments(parser)
    parser.set_defaults(func=_command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m embedding_pipeline.local.airflow_standalone", description=HELP
    )
    add_arguments(parser)
    return _command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
