"""Airflow glue: hooks that turn Airflow Connections into the library's settings objects."""
