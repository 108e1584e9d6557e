"""The chain on CeleryExecutor, for real: PostgreSQL (metadata DB, result backend) and Redis (broker)
from Debian's packages, the api-server, scheduler, dag-processor, triggerer and two Celery workers as
separate processes, all configured by ``docker-compose.airflow.yml``'s own Airflow environment
(``embedding_pipeline.local.celery_cluster``). Started once for the module, stopped by PID.

The pipeline's Connections live in the metadata DB (created through the REST API), not in the
environment: the workers must read them there. A backfill over two dates through the REST API must
run on both workers, hand run files from one worker to the other through ``EMBEDDING_STAGING_URL``,
balance its accounting identity, and store exactly what a ``dag.test()`` run of the same data stores.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow_api import Api, label
from embedding_pipeline.local.airflow_runner import run_dag
from embedding_pipeline.local.celery_cluster import CeleryCluster
from embedding_pipeline.runs.plan import run_dir_for
from embedding_pipeline.runs.report import read_report
from embedding_pipeline.sample.generate import generate
from store_data import assert_keyword_run_balanced, assert_same_lists, stored_keywords, stored_links

DATES = ["2024-03-01", "2024-03-02"]
KEYWORDS, PRODUCTS = 400, 80
CONF = {"chunk_rows": 100, "top_k": 5, "model_name": "minilm"}
CELERY = {"qdrant_alias": "celery_kw", "es_alias": "celery_kw", "product_alias": "celery_pr"}
DAG_TEST = {"qdrant_alias": "dagtest_kw", "es_alias": "dagtest_kw", "product_alias": "dagtest_pr"}
# Tasks that hand files to later tasks through the run folder, and the tasks that read them.
STAGES = ("keyword_index", "product_link")
HANDOFFS = {"embed": ("qdrant_upsert", "es_index")}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("celery-data")
    generate(root, keywords=KEYWORDS, products=PRODUCTS, dates=DATES, seed=13, row_group_size=100)
    return root


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, repository, server, es_url, data) -> Iterator[tuple[CeleryCluster, Api]]:
    root = tmp_path_factory.mktemp("celery")
    env = {
        "EMBEDDING_DATA_ROOT": str(data),
        # Run files on a URL both workers reach (a shared folder here; s3:// or gs:// on real hosts).
        "EMBEDDING_STAGING_URL": f"file://{root / 'shared-runs'}",
        "HF_HUB_OFFLINE": "1",
    }
    with CeleryCluster(root, repository, workers=2, worker_concurrency=1, extra_env=env) as running:
        api = Api(running.api_url, running.admin_password)
        host, port = es_url.split("://")[1].rsplit(":", 1)
        triton = {"protocol": "grpc", "http_port": server.http_port, "model_repository": str(repository)}
        connections = [
            {
                "conn_type": "triton",
                "host": "127.0.0.1",
                "port": server.grpc_port,
                "extra": json.dumps(triton),
            },
            {"conn_type": "qdrant", "extra": json.dumps({"path": str(root / "qdrant")})},
            {"conn_type": "elasticsearch", "host": host, "port": int(port)},
        ]
        for connection in connections:
            connection_id = f"{connection['conn_type']}_default"
            api.call("POST", "/api/v2/connections", {"connection_id": connection_id, **connection})
        yield running, api


@pytest.mark.slow
def test_a_backfill_runs_on_both_workers_and_stores_what_dag_test_stores(
    cluster, data, pipeline_services, monkeypatch
):
    running, api = cluster
    api.wait_for_dag("embedding_chain")
    runs = api.backfill("embedding_chain", DATES, {**CONF, **CELERY})
    assert [r["data_interval_start"][:10] for r in runs] == DATES, runs
    monkeypatch.setenv("EMBEDDING_STAGING_URL", running.extra_env["EMBEDDING_STAGING_URL"])
    hosts: dict[str, set[str]] = {}
    handoffs = set()
    instances = []
    for run in runs:
        instances += api.task_instances("embedding_chain", run["dag_run_id"])
        states = {label(t): t["state"] for t in instances}
        assert run["state"] == "success", {k: v for k, v in states.items() if v not in ("success", "skipped")}
        where = {label(t): t["hostname"] for t in instances if t["state"] == "success"}
        for t in instances:
            if t["map_index"] >= 0 and t["state"] == "success":
                hosts.setdefault(t["hostname"], set()).add(label(t))
        for name, host in where.items():
            stage, _, task = name.partition(".")
            for reader in HANDOFFS.get(task.split("[")[0], ()):
                other = where.get(f"{stage}.{reader}{task[task.index('[') :]}")
                if other is not None:
                    handoffs.add((host, other))
        for stage in ("keyword_index", "product_link"):
            report = read_report(run_dir_for("embedding_chain", run["dag_run_id"], stage))
            assert report["status"] == "ok" and report["partitions"] == [run["data_interval_start"][:10]]
        assert_keyword_run_balanced(
            read_report(run_dir_for("embedding_chain", run["dag_run_id"], "keyword_index"))
        )
    # Mapped task instances ran on both workers, and some chunk was embedded on one worker and
    # written by the other (its staged vectors went through the shared run folder).
    assert set(hosts) == set(running.worker_names), hosts
    assert any(a != b for a, b in handoffs), handoffs
    # Tasks ran side by side on the two workers, except those on local Qdrant storage, which admits
    # one process at a time (max_active_tis_per_dag=1; a server Connection lets them fan out:
    # tests/test_dag_parsing.py).
    ran = [t for t in instances if t["state"] == "success" and t["start_date"]]
    assert _overlapping(ran), "no two task instances ran at the same time"
    for task_id in ("keyword_index.qdrant_upsert", "product_link.link"):
        serial = [t for t in ran if t["task_id"] == task_id]
        assert len(serial) >= len(DATES) and not _overlapping(serial), [label(t) for t in serial]

    # The same two dates through dag.test() in this process: same counts, same nested lists.
    # (pipeline_services: the same server, repository and ES; Qdrant under its own folder.)
    monkeypatch.delenv("EMBEDDING_STAGING_URL")
    for dt in DATES:
        run = run_dag("embedding_chain", {**CONF, **DAG_TEST, "dt": dt, "input_root": str(data)})
        assert str(run.state) == "success"
    expected_keywords = stored_keywords(DAG_TEST["qdrant_alias"])
    expected_links = stored_links(DAG_TEST["product_alias"])
    monkeypatch.setenv("QDRANT_PATH", str(running.root / "qdrant"))
    assert stored_keywords(CELERY["qdrant_alias"]) == expected_keywords
    assert len(expected_keywords[0]) > KEYWORDS // 2
    assert_same_lists(stored_links(CELERY["product_alias"]), expected_links)
    assert len(expected_links) > PRODUCTS // 2


def _overlapping(instances: list[dict]) -> list[tuple[str, str]]:
    """Pairs of task instances whose [start, end] intervals overlap (ISO timestamps of one zone)."""
    spans = sorted((t["start_date"], t["end_date"], label(t)) for t in instances)
    return [(a[2], b[2]) for i, a in enumerate(spans) for b in spans[i + 1 :] if b[0] < a[1]]
