"""LocalServices and ``embedding-pipeline airflow`` with real processes: what is started is found,
answers, is stopped by PID (also on errors), and what was already running is reused and left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from embedding_pipeline.errors import ServerUnavailableError
from embedding_pipeline.local import services as local_services
from embedding_pipeline.local.es_emulator import EsEmulator
from embedding_pipeline.local.services import LocalServices, es_emulator_dir
from embedding_pipeline.serving.process import free_port

ENV_KEYS = ("ES_URL", "EMBEDDING_MODEL_REPOSITORY", *local_services.SERVER_ENV_KEYS)


def live_pids_in_group(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are not zombies, read from /proc (independently of the code)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def pid_exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def get_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return json.loads(answer.read())


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Nothing configured, nothing at the default addresses, a fresh persistent dir under tmp_path.

    The defaults are pointed at unused ports so that a server someone runs on 8000 or 9200 on this
    machine cannot turn a "start" into a "reuse".
    """
    monkeypatch.setenv("EMBEDDING_PIPELINE_HOME", str(tmp_path / "work"))
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(local_services, "DEFAULT_ES_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setattr(local_services, "DEFAULT_SERVER_HTTP_PORT", free_port())
    monkeypatch.setattr(local_services, "DEFAULT_SERVER_GRPC_PORT", free_port())
    return tmp_path


def test_starts_es_and_server_when_nothing_runs_and_stops_them_by_pid(isolated: Path, repository: Path):
    lines: list[str] = []
    with LocalServices(model_repository=repository, ports="free", report=lines.append) as services:
        assert [s.action for s in services.services] == ["started", "started"]
        es, server = services.services
        assert get_json(os.environ["ES_URL"])["tagline"] == "You Know, for Search"
        http_port = os.environ["EMBEDDING_SERVER_HTTP_PORT"]
        assert answers(f"http://127.0.0.1:{http_port}/v2/health/live")
        assert answers(f"http://127.0.0.1:{http_port}/v2/models/minilm/ready")
        assert os.environ["EMBEDDING_MODEL_REPOSITORY"] == str(repository.resolve())
        assert str(es_emulator_dir()).startswith(str(isolated))
        assert str(es_emulator_dir() / "noida-data") in es.detail
        pids = [es.pid, server.pid]
        assert all(pid is not None and live_pids_in_group(pid) for pid in pids)
    assert not any(pid_exists(pid) or live_pids_in_group(pid) for pid in pids if pid is not None)
    assert not any(key in os.environ for key in ENV_KEYS)
    assert lines[0].startswith("Elasticsearch: started the noida-db emulator at http://127.0.0.1:")
    assert lines[1].startswith("inference server: started the local server on 127.0.0.1 http ")
    assert sorted(lines[2:]) == sorted(
        [f"Elasticsearch: stopped pid {es.pid}", f"inference server: stopped pid {server.pid}"]
    )


def test_reuses_services_from_the_environment_and_leaves_them_running(
    isolated: Path, server, monkeypatch: pytest.MonkeyPatch
):
    (isolated / "own-es").mkdir()
    with EsEmulator(isolated / "own-es") as emulator:
        monkeypatch.setenv("ES_URL", emulator.url)
        monkeypatch.setenv("EMBEDDING_SERVER_HTTP_PORT", str(server.http_port))
        monkeypatch.setenv("EMBEDDING_SERVER_GRPC_PORT", str(server.grpc_port))
        lines: list[str] = []
        with LocalServices(ports="free", report=lines.append) as services:
            assert [s.action for s in services.services] == ["configured", "configured"]
            assert services.started == []
            assert os.environ["ES_URL"] == emulator.url
        assert lines == [
            f"Elasticsearch: using ES_URL={emulator.url}",
            f"inference server: using EMBEDDING_SERVER_* = 127.0.0.1 http {server.http_port} "
            f"/ grpc {server.grpc_port}; live",
        ]
        assert emulator.process is not None and emulator.process.poll() is None
        assert server.is_live()


def test_reuses_live_services_on_the_default_addresses(isolated: Path, server, monkeypatch):
    (isolated / "own-es").mkdir()
    with EsEmulator(isolated / "own-es") as emulator:
        monkeypatch.setattr(local_services, "DEFAULT_ES_URL", emulator.url)
        monkeypatch.setattr(local_services, "DEFAULT_SERVER_HTTP_PORT", server.http_port)
        monkeypatch.setattr(local_services, "DEFAULT_SERVER_GRPC_PORT", server.grpc_port)
        with LocalServices(ports="fixed", report=lambda line: None) as services:
            assert [s.action for s in services.services] == ["reused", "reused"]
            # Exported, so that child processes (Airflow tasks) need no defaults of their own.
            assert os.environ["ES_URL"] == emulator.url
            assert os.environ["EMBEDDING_SERVER_HTTP_PORT"] == str(server.http_port)
        assert not any(key in os.environ for key in ENV_KEYS)
        assert emulator.process is not None and emulator.process.poll() is None
        assert server.is_live()


def test_nested_block_reuses_what_the_outer_one_started(isolated: Path, tmp_path: Path):
    empty = tmp_path / "empty-repository"
    with LocalServices(model_repository=empty, ports="free", report=lambda line: None) as outer:
        with LocalServices(model_repository=empty, ports="free", report=lambda line: None) as inner:
            assert [s.action for s in inner.services] == ["configured", "configured"]
        assert all(live_pids_in_group(s.pid) for s in outer.started if s.pid is not None)
        assert answers(os.environ["ES_URL"])


def test_server_starts_on_an_empty_repository(isolated: Path, tmp_path: Path):
    lines: list[str] = []
    with LocalServices(need_es=False, model_repository=tmp_path / "nothing-yet", report=lines.append):
        assert answers(f"http://127.0.0.1:{os.environ['EMBEDDING_SERVER_HTTP_PORT']}/v2/health/live")
    assert "(no model published yet)" in lines[0]


def test_emulator_keeps_its_data_across_a_stop_and_a_start(isolated: Path):
    document = json.dumps({"keyword": "北海道 ラーメン"}).encode()
    with LocalServices(need_server=False, ports="free", report=lambda line: None):
        request = urllib.request.Request(
            f"{os.environ['ES_URL']}/persisted/_doc/k1?refresh=true",
            data=document,
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status in (200, 201)
    with LocalServices(need_server=False, ports="free", report=lambda line: None) as again:
        assert again.started[0].action == "started"
        found = get_json(f"{os.environ['ES_URL']}/persisted/_doc/k1")
    assert found["_source"] == {"keyword": "北海道 ラーメン"}


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_error_inside_the_block_stops_everything_started(
    isolated: Path, tmp_path: Path, error: type[BaseException]
):
    with pytest.raises(error), LocalServices(model_repository=tmp_path / "r", ports="free") as services:
        pids = [s.pid for s in services.started]
        raise error("boom")
    assert len(pids) == 2
    assert not any(pid_exists(pid) or live_pids_in_group(pid) for pid in pids if pid is not None)
    assert not any(key in os.environ for key in ENV_KEYS)


def test_a_failed_start_stops_what_had_started(isolated: Path, tmp_path: Path, monkeypatch):
    """The server cannot bind its fixed port, so the emulator started before it must go again."""
    with taken_port() as taken:
        monkeypatch.setattr(local_services, "DEFAULT_SERVER_HTTP_PORT", taken)
        lines: list[str] = []
        with (
            pytest.raises(ServerUnavailableError),
            LocalServices(model_repository=tmp_path / "r", ports="fixed", report=lines.append),
        ):
            pytest.fail("must not get here")
    started_es = re.search(r"\(pid (\d+)\)", lines[0])
    assert started_es and lines[0].startswith("Elasticsearch: started")
    es_port = local_services.DEFAULT_ES_URL.rsplit(":", 1)[1]
    assert f"127.0.0.1:{es_port}" in lines[0]  # ports="fixed": the default port, not a free one
    assert not pid_exists(int(started_es.group(1)))
    assert lines[-1] == f"Elasticsearch: stopped pid {started_es.group(1)}"
    assert not any(key in os.environ for key in ENV_KEYS)


@contextmanager
def taken_port() -> Iterator[int]:
    """A port with a listening socket that never answers: nothing else can bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def test_register_adds_the_airflow_subcommand():
    from embedding_pipeline.local.airflow_standalone import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["airflow", "--port", "18080", "--free-ports"])
    assert (args.port, args.free_ports, args.host) == (18080, True, "127.0.0.1")
    assert callable(args.func)
