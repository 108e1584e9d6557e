"""Hook for the ledger: the ``embedding_state`` Connection -> ``StateSettings``.

Connection ``embedding_state`` (type ``postgres``, as the compose file creates it)::

    host postgres, port 5432, schema (database) embedding_state, login / password

or any SQLAlchemy URL in ``extra.url`` (e.g. ``sqlite:////shared/state.db`` on one machine).
Without the Connection the hook falls back to ``EMBEDDING_STATE_DB`` and then to SQLite under the
work directory (the embedded default). The settings it returns ask Airflow whether the run holding
a generation's lease still runs, so a failed run's lease is taken over by the next run at once.
"""

from __future__ import annotations

import logging

from airflow.sdk import BaseHook
from embedding_pipeline.errors import ConfigError
from embedding_pipeline.runs.state_db import STATE_CONN_ID, StateSettings
from sqlalchemy.engine import URL

from pipeline_hooks.store_hooks import optional_connection

log = logging.getLogger(__name__)
ACTIVE_RUN_STATES = ("queued", "running")


def run_active(owner: str) -> bool:
    """Whether the DAG run ``dag_id/run_id`` is queued or running (asked through the Execution
    API); True when Airflow cannot say, so the lease is honoured."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    dag_id, _, run_id = owner.partition("/")
    try:
        state = RuntimeTaskInstance.get_dagrun_state(dag_id=dag_id, run_id=run_id)
    except Exception as exc:  # not in a task, or the run is unknown to this Airflow
        log.warning("cannot ask Airflow for the state of run %s (%s): its lease is honoured", owner, exc)
        return True
    return str(state) in ACTIVE_RUN_STATES


class StateStoreHook(BaseHook):
    conn_name_attr = "state_conn_id"
    default_conn_name = STATE_CONN_ID
    conn_type = "postgres"
    hook_name = "State database (embedding pipeline)"

    def __init__(self, state_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.state_conn_id = state_conn_id

    def get_settings(self) -> StateSettings:
        conn = optional_connection(self.state_conn_id)
        source = f"Connection {self.state_conn_id!r}"
        if conn is None:
            settings = StateSettings.from_env()
            return StateSettings(settings.url, settings.source, run_active=run_active)
        extra = conn.extra_dejson
        if extra.get("url"):
            return StateSettings(extra["url"], source, run_active=run_active)
        if conn.conn_type not in ("postgres", "postgresql") or not conn.host:
            raise ConfigError(
                f"connection {self.state_conn_id!r} needs type postgres with a host, or extra.url "
                f"(a SQLAlchemy URL); got type {conn.conn_type!r}, host {conn.host!r}"
            )
        url = URL.create(
            "postgresql+psycopg",
            username=conn.login or None,
            password=conn.password or None,
            host=conn.host,
            port=int(conn.port or 5432),
            database=conn.schema or STATE_CONN_ID,
        )
        return StateSettings(url.render_as_string(hide_password=False), source, run_active=run_active)
