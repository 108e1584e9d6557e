#!/usr/bin/env bash
# Create .venv and install everything the pipeline, the local server and the tests need.
#
# Order matters:
#  1. torch first, with pip: `torch==2.13.0` is a CPU wheel that pip finds on the build machines;
#     a bare `torch` requirement resolved by uv would pull a multi-GB CUDA build. Elsewhere, point
#     TORCH_INDEX_URL at https://download.pytorch.org/whl/cpu to get the CPU build from PyTorch.
#  2. the rest with uv (seconds instead of half a minute with pip), with requirements/overrides.txt
#     forcing psutil>=6.1 over kserve's psutil<6 pin (why: see that file).
#  3. requirements/no-deps.txt (data-only packages) and this project in editable mode, both without
#     dependencies (the project's are all pinned above).
#  4. .venv-triton: a real Triton server for the conformance tests (requirements/triton.txt says why
#     it needs its own environment).
#  5. Bytecode: uv does not compile .pyc files unless asked, and where PYTHONDONTWRITEBYTECODE is
#     set (it is on the build machines, as in many container images) Python never writes them, so
#     every process - each Airflow task, each test's server - compiled every module it imports from
#     source: importing airflow.sdk + qdrant_client + pyarrow + tritonclient took 9.8 s instead of
#     4.0 s. uv's --compile-bytecode compiles site-packages; compileall does this project's code.
#  6. Debian packages the tests start servers from, when apt-get can install them: nginx-light (TLS
#     tests, tests/nginx_tls.py), postgresql and redis-server (the CeleryExecutor tests,
#     include/embedding_pipeline/local/celery_cluster.py), chromium (the browser test of the UI).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON_BIN="${PYTHON:-$(command -v python3.11 || command -v python3)}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

if [ ! -x .venv/bin/python ]; then
  "$PYTHON_BIN" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip uv
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"
  else
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "$TORCH_SPEC"
  fi
fi
.venv/bin/uv pip install --quiet --compile-bytecode --python .venv/bin/python \
  -r requirements.txt -r requirements/serve.txt -r requirements/dev.txt -r requirements/celery.txt \
  --override requirements/overrides.txt
.venv/bin/uv pip install --quiet --compile-bytecode --python .venv/bin/python --no-deps -r requirements/no-deps.txt
.venv/bin/uv pip install --quiet --python .venv/bin/python --no-deps -e .
.venv/bin/python -m compileall -q -j 0 include plugins dags >/dev/null
.venv/bin/python -c "import torch, onnxruntime, kserve, tritonclient, airflow; print('environment ready: torch', torch.__version__, '| airflow', airflow.__version__)" 2>/dev/null | tail -1
if [ ! -x .venv-triton/bin/python ]; then
  "$PYTHON_BIN" -m venv .venv-triton
fi
.venv/bin/uv pip install --quiet --compile-bytecode --python .venv-triton/bin/python -r requirements/triton.txt
missing=()
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# The browser test (tests/test_airflow_standalone.py) drives Debian's Chromium with Playwright;
# Playwright's own browser download (`playwright install`) is never used.
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    # Only the binaries are needed: the tests start their own servers on free ports.
    apt-get install -y -q "${missing[@]}" >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
  else
    echo "missing ${missing[*]} and cannot install them here (needs root and apt-get): the TLS, Celery and browser tests will fail" >&2
  fi
fi
touch .venv/.bootstrapped
