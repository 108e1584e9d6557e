"""Shared fixtures: tiny models of each architecture, the real MiniLM, a model repository, a real
local inference server process, and an isolated Airflow home for ``dag.test()``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

# Airflow reads its configuration at import time: isolate it before anything imports airflow.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="embedding-pipeline-tests-"))
os.environ["EMBEDDING_PIPELINE_HOME"] = str(_SESSION_DIR / "work")
os.environ["AIRFLOW_HOME"] = str(_SESSION_DIR / "airflow")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
for key in [k for k in os.environ if k.startswith(("EMBEDDING_SERVER_", "AIRFLOW_CONN_"))]:
    del os.environ[key]
sys.path.insert(0, str(Path(__file__).parent))

from embedding_pipeline.local.airflow_runner import configure_airflow  # noqa: E402

configure_airflow(_SESSION_DIR / "airflow")

from tiny_models import build_tiny_model  # noqa: E402

TINY = {"bert": "generic", "xlm-roberta": "multilingual-e5", "modernbert": "ruri-v3"}


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def tiny_models(session_dir: Path) -> dict[str, Path]:
    """architecture -> directory of a random 2-layer model with a trained tokenizer."""
    return {arch: build_tiny_model(arch, session_dir / "tiny" / arch) for arch in TINY}


@pytest.fixture(scope="session")
def repository(session_dir: Path, tiny_models: dict[str, Path]) -> Path:
    """A model repository with every tiny architecture and the real MiniLM published (fp32)."""
    from embedding_pipeline.model.publish import ExportRequest, export_model, gate_model, publish_model

    root = session_dir / "model_repository"
    sources = {
        f"tiny_{arch.replace('-', '_')}": (str(path), family)
        for arch, (path, family) in ((a, (tiny_models[a], f)) for a, f in TINY.items())
    }
    sources["minilm"] = ("minilm", None)
    for name, (source, family) in sources.items():
        staging = export_model(ExportRequest(source, "fp32", family), session_dir / "staging" / name)
        gate_model(staging)
        publish_model(staging, root, name, max_batch_size=32)
    return root


@pytest.fixture(scope="session")
def server(repository: Path):
    """A real local KServe v2 server process over ``repository`` (stopped by PID at the end)."""
    from embedding_pipeline.serving.process import LocalServer

    with LocalServer(repository, threads=1, log_path=repository.parent / "server.log") as running:
        yield running


def settings_for(server, repository: Path, **overrides):
    from embedding_pipeline.settings import ServerSettings

    return ServerSettings(
        host="127.0.0.1",
        grpc_port=server.grpc_port,
        http_port=server.http_port,
        model_repository=repository,
        max_retries=2,
        backoff_initial_s=0.05,
        timeout_s=30,
    ).with_overrides(**overrides)


@pytest.fixture(scope="session")
def airflow_db(session_dir: Path) -> Path:
    """An Airflow home with a migrated SQLite metadata DB."""
    from embedding_pipeline.local.airflow_runner import migrate_db

    home = session_dir / "airflow"
    migrate_db(home)
    return home


@pytest.fixture(scope="module")
def es_url(tmp_path_factory):
    """``ES_URL`` when set (a real cluster), else a noida-db emulator for this test module."""
    if os.environ.get("ES_URL"):
        yield os.environ["ES_URL"]
        return
    from embedding_pipeline.local.es_emulator import EsEmulator

    with EsEmulator(tmp_path_factory.mktemp("es")) as emulator:
        yield emulator.url


@pytest.fixture
def pipeline_services(airflow_db, server, repository, es_url, tmp_path, monkeypatch) -> Path:
    """The environment of a DAG run on embedded defaults: the real server over ``repository``, ES at
    ``es_url`` and a fresh local Qdrant under ``tmp_path`` (returned)."""
    monkeypatch.setenv("EMBEDDING_MODEL_REPOSITORY", str(repository))
    monkeypatch.setenv("EMBEDDING_SERVER_GRPC_PORT", str(server.grpc_port))
    monkeypatch.setenv("EMBEDDING_SERVER_HTTP_PORT", str(server.http_port))
    monkeypatch.setenv("ES_URL", es_url)
    monkeypatch.setenv("QDRANT_PATH", str(tmp_path / "qdrant"))
    return tmp_path


# What makes a test slow here: it needs the inference server, a published model repository or
# Airflow's metadata database (dag.test()). The rest - unit, property and DAG-integrity tests, the
# ES emulator and embedded Qdrant included - is the fast lane, `make test-fast`.
SLOW_FIXTURES = frozenset({"server", "repository", "airflow_db", "pipeline_services"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
