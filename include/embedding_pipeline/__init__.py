"""Embedding search pipeline: the library behind the Airflow DAGs.

Everything here is importable and testable without a scheduler; the DAG files in ``dags/`` only
wire these functions into tasks.
"""

__version__ = "0.1.0"
