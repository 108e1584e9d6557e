"""Airflow's start-up hook (``airflow_local_settings``, found on the plugins folder, which Airflow
puts on ``sys.path``): imported by every Airflow process. It changes no setting and defines no
policy; in the processes that fork task processes it preloads the libraries tasks import
(``embedding_pipeline.task_preload`` says why and what)."""

import logging

__all__: list[str] = []  # Airflow copies listed names into airflow.settings: none

try:
    from embedding_pipeline.task_preload import preload_for_tasks
except ImportError as exc:  # never stop an Airflow process over an optimisation
    logging.getLogger(__name__).warning("task preload off: embedding_pipeline not importable (%s)", exc)
else:
    preload_for_tasks()
