"""Airflow wiring of the pipeline's stages, shared by the stage DAGs and the chain DAG.

Each ``*_tasks()`` function creates one stage's tasks in the DAG (or TaskGroup) being defined, so
``dags/keyword_index.py`` runs the stage alone and ``dags/embedding_chain.py`` runs every stage in
one DAG run. The tasks are thin: they read Params and Connections, call ``embedding_pipeline``
(``include/``), and pass small dicts through XCom. Only light modules are imported at module
level (Params, option dataclasses, settings); everything heavy is imported inside the tasks.
"""
