"""Embedded services for one machine without Docker: the ES emulator, finding or starting the
local services, and running DAGs through Airflow (``dag.test()`` in a child, standalone)."""
