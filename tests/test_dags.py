"""DAG integrity, trigger Params, and ``dag.test()`` of embedding_model_publish against a real server."""

from __future__ import annotations

import copy

import pytest
from embedding_pipeline.local.airflow_runner import run_dag

DAG_ID = "embedding_model_publish"


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    import os

    from airflow.dag_processing.dagbag import DagBag

    return DagBag(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])


def test_dags_import_without_errors_and_wire_the_model_path(dagbag):
    assert dagbag.import_errors == {}
    dag = dagbag.get_dag(DAG_ID)
    assert dag is not None and dag.schedule is None and dag.max_active_runs == 1
    order = {task.task_id: sorted(task.downstream_task_ids) for task in dag.tasks}
    assert order == {
        "export": ["parity_gate", "publish"],
        "parity_gate": ["publish"],
        "publish": ["load_on_server"],
        "load_on_server": [],
    }
    load = dag.get_task("load_on_server")
    assert [outlet.name for outlet in load.outlets] == ["embedding_model"]
    assert load.retries == 3 and dag.get_task("parity_gate").retries == 0  # a failed gate is not retried


def test_the_chain_runs_every_stage_in_order_and_owns_the_schedule(dagbag):
    """One nightly schedule (the chain's); the stage DAGs are the same tasks, triggered alone."""
    from airflow.sdk import CronDataIntervalTimetable

    assert set(dagbag.dag_ids) == {
        "embedding_model_publish",
        "keyword_index",
        "product_link",
        "embedding_chain",
        "embedding_rollback",
    }
    chain = dagbag.get_dag("embedding_chain")
    assert isinstance(chain.timetable, CronDataIntervalTimetable) and chain.max_active_runs == 1
    for dag_id in ("embedding_model_publish", "keyword_index", "product_link", "embedding_rollback"):
        assert dagbag.get_dag(dag_id).schedule is None
    down = {task.task_id: set(task.downstream_task_ids) for task in chain.tasks}
    assert down["model.decide"] == {"model.export"}
    assert down["model.load_on_server"] == {"model.model_ready"}
    assert down["model.model_ready"] == {"keyword_index.plan"}  # plan -> prepare_sinks (deletes)
    # finalize (report, state, a full rebuild's gate) -> optional approval -> the swap and the Asset
    assert down["keyword_index.finalize"] == {"keyword_index.approve_swap"}
    assert down["keyword_index.approve_swap"] == {"keyword_index.go_live"}
    # The products follow the keywords' swap, not their Asset event (skipped on an empty night).
    assert down["keyword_index.go_live"] == {"keyword_index.announce", "product_link.plan"}
    assert down["keyword_index.announce"] == set()
    go_live, announce = chain.get_task("product_link.go_live"), chain.get_task("product_link.announce")
    assert go_live.outlets == [] and go_live.trigger_rule == "none_failed"
    assert [o.name for o in announce.outlets] == ["product_links"] and announce.trigger_rule == "all_success"
    # Every stage task of the stage DAGs is in the chain, under its group.
    for dag_id, group in (("keyword_index", "keyword_index"), ("product_link", "product_link")):
        assert {f"{group}.{t}" for t in dagbag.get_dag(dag_id).task_ids} <= set(chain.task_ids)
    # The chain's form holds every stage's Params, with the same schema.
    for dag_id in ("embedding_model_publish", "keyword_index", "product_link"):
        for name, param in dagbag.get_dag(dag_id).params.items():
            assert chain.params.get_param(name).schema == param.schema, name


def test_tasks_push_one_xcom_and_params_validate_against_draft_7(dagbag):
    """Two per-run costs that grow with the DAG, kept off (see pipeline_stages.runtime / params):
    a ``-> dict`` task would push every key as an XCom of its own, and a Param without ``$schema``
    is checked against the 2020-12 meta-schema each time Airflow resolves it (thousands of times
    per DAG serialization: 1.64 -> 0.64 s for the chain, measured)."""
    from jsonschema import Draft7Validator, validators

    for dag in dagbag.dags.values():
        pushing_keys = [t.task_id for t in dag.tasks if getattr(t, "multiple_outputs", False)]
        assert pushing_keys == [], dag.dag_id
        for name, param in dag.params.items():
            assert validators.validator_for(param.schema) is Draft7Validator, (dag.dag_id, name)
            Draft7Validator.check_schema(param.schema)


@pytest.mark.parametrize(
    ("param", "value", "message"),
    [
        ("precision", "int4", "is not one of"),
        ("max_batch_size", 0, "less than the minimum"),
        ("max_batch_size", 4096, "greater than the maximum"),
        ("model_name", "../escape", "does not match"),
        ("model_source", "", "should be non-empty"),
        ("family", "gpt", "is not one of"),
        ("keep_versions", "three", "is not of type 'integer'"),
        ("max_length", 4, "less than the minimum"),
    ],
)
def test_bad_params_are_refused_by_the_trigger_form_schema(dagbag, param, value, message):
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dagbag.get_dag(DAG_ID).params)
    with pytest.raises(ParamValidationError, match=message):
        params[param] = value


def test_bad_params_fail_the_run_before_any_task(airflow_db):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="max_batch_size"):
        run_dag(DAG_ID, {"max_batch_size": 0})


@pytest.fixture
def server_env(server, repository, monkeypatch):
    monkeypatch.setenv("EMBEDDING_MODEL_REPOSITORY", str(repository))
    monkeypatch.setenv("EMBEDDING_SERVER_GRPC_PORT", str(server.grpc_port))
    monkeypatch.setenv("EMBEDDING_SERVER_HTTP_PORT", str(server.http_port))
    return server


def test_dag_publishes_loads_and_emits_the_asset(airflow_db, server_env, repository, tiny_models):
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from embedding_pipeline.model.repository import list_versions
    from embedding_pipeline.serving.client import EmbeddingClient
    from embedding_pipeline.settings import ServerSettings

    run = run_dag(
        DAG_ID,
        {
            "model_source": str(tiny_models["xlm-roberta"]),
            "model_name": "dag_e5",
            "family": "multilingual-e5",
            "precision": "int8",
            "max_batch_size": 16,
        },
    )
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert str(run.state) == "success", states
    assert list_versions(repository / "dag_e5") == [1]
    with create_session() as session:
        events = [e for e in session.query(AssetEvent).all() if e.extra.get("name") == "dag_e5"]
    assert [(e.extra["version"], e.extra["dim"]) for e in events] == [(1, 32)]
    settings = ServerSettings.from_env().with_overrides(model_name="dag_e5")
    with EmbeddingClient(settings) as client:  # the DAG loaded it: the server serves it now
        assert client.published.metadata["precision"] == "int8"
        assert client.published.metadata["family"]["query_prefix"] == "query: "
        assert client.embed(["query text"], role="query").vectors.shape == (1, 32)


def test_dag_with_an_unloadable_source_fails_at_export_and_publishes_nothing(
    airflow_db, server_env, repository
):
    run = run_dag(DAG_ID, {"model_source": "/no/such/model", "model_name": "never_published"})
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert str(run.state) == "failed"
    assert states == {
        "export": "failed",
        "parity_gate": "upstream_failed",
        "publish": "upstream_failed",
        "load_on_server": "upstream_failed",
    }
    assert not (repository / "never_published").exists()
