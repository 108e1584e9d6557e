"""Deterministic sample data: partitioned keyword and product tables with injected bad rows."""
