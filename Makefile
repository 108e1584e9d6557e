# Two commands matter (see README): `make demo` and `make test`. Both set up .venv first.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast lint serve airflow bench bench-link bench-hnsw bench-parse bench-incremental bench-scale bench-executors bench-relevance bench-int8 bench-qdrant clean

setup: $(VENV)/.bootstrapped

$(VENV)/.bootstrapped: scripts/bootstrap.sh requirements.txt requirements/serve.txt requirements/dev.txt requirements/celery.txt requirements/triton.txt requirements/no-deps.txt requirements/overrides.txt pyproject.toml
	scripts/bootstrap.sh

## The main job: sample data, local services, the whole embedding_chain through Airflow, a report.
demo: setup
	$(VENV)/bin/embedding-pipeline demo

## Lint, then the whole test suite (real servers, real Airflow dag.test()).
test: setup lint
	$(PY) -m pytest

## The fast lane: unit, property and DAG-integrity tests (no inference server, no Airflow database).
test-fast: setup lint
	$(PY) -m pytest -m "not slow"

lint: setup
	$(VENV)/bin/ruff check include dags plugins tests bench
	$(VENV)/bin/ruff format --check include dags plugins tests bench

## Run the local inference server in the foreground on model_repository/ (ports 8000/8001).
serve: setup
	$(VENV)/bin/embedding-pipeline serve

## Airflow standalone (UI on http://localhost:8080) with the DAGs, the inference server and ES.
airflow: setup
	$(VENV)/bin/embedding-pipeline airflow

bench: setup
	$(PY) bench/bench_serving.py

bench-link: setup
	$(PY) bench/bench_product_link.py

bench-hnsw: setup
	$(PY) bench/bench_hnsw_recall.py

bench-parse: setup
	$(PY) bench/bench_dag_parse.py

bench-incremental: setup
	$(PY) bench/bench_incremental.py

bench-scale: setup
	$(PY) bench/bench_scale.py

bench-executors: setup
	$(PY) bench/bench_executors.py

bench-relevance: setup
	$(PY) bench/bench_link_relevance.py

bench-int8: setup
	$(PY) bench/bench_int8.py

bench-qdrant: setup
	$(PY) bench/bench_qdrant_engines.py --demo

clean:
	rm -rf var .pytest_cache
