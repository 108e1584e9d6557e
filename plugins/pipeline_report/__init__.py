"""The "Pipeline report" tab of a DAG run in the Airflow UI (see ``app``)."""
