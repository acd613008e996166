#!/usr/bin/env bash
# The whole test suite on a fresh machine: venv, install, Redis, the gates, pytest. `.ci/run` calls this.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
# torch first and pinned: the CPU wheel installs from local disk (an unpinned one is a multi-GB CUDA build).
"$PY" -m pip install -q "torch==2.13.0"
"$PY" -m pip install -q -e ".[dev]"
PYTHON="$PY" bash scripts/ensure_redis.sh
# The MCP Inspector CLI (a third-party MCP client) for the conformance test; 0.17.2 is the last
# release that runs on Node 20. Warm npx's cache once so the test does not time out installing it.
if command -v npx >/dev/null 2>&1; then
  timeout 300 npx -y @modelcontextprotocol/inspector@0.17.2 --cli --help >/dev/null 2>&1 \
    || echo "note: could not install the MCP Inspector; its conformance test will be skipped"
else
  echo "note: npx not found; the MCP Inspector conformance test will be skipped"
fi
# The gates, before the tests (the same checks as .pre-commit-config.yaml): lint, format, types
# (mypy strict, listed exceptions in pyproject.toml) and the layer contracts (import-linter).
echo "gates: ruff check, ruff format --check, mypy, lint-imports"
"$VENV/bin/ruff" check --quiet .
"$VENV/bin/ruff" format --check --quiet .
"$VENV/bin/mypy"
"$VENV/bin/lint-imports" --no-cache >/dev/null || { "$VENV/bin/lint-imports" --no-cache; exit 1; }
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
set +e
"$PY" -m pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
exit "$rc"
