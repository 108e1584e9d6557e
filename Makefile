# Two commands matter (see README): `make demo` and `make test`. Both set up .venv first.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint serve bench clean

setup: $(VENV)/.bootstrapped

$(VENV)/.bootstrapped: scripts/bootstrap.sh requirements.txt requirements/serve.txt requirements/dev.txt requirements/overrides.txt pyproject.toml
	scripts/bootstrap.sh

## The main job: export + gate + publish MiniLM through Airflow, serve it, embed sentences.
demo: setup
	$(VENV)/bin/embedding-pipeline demo

## Lint, then the whole test suite (real servers, real Airflow dag.test()).
test: setup lint
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check include dags plugins tests bench
	$(VENV)/bin/ruff format --check include dags plugins tests bench

## Run the local inference server in the foreground on model_repository/ (ports 8000/8001).
serve: setup
	$(VENV)/bin/embedding-pipeline serve

bench: setup
	$(PY) bench/bench_serving.py

clean:
	rm -rf var .pytest_cache
