#!/usr/bin/env bash
# The whole test suite on a fresh machine: venv, install, Redis, pytest. `.ci/run` calls this.
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
command -v npx >/dev/null 2>&1 || echo "note: npx not found; the MCP Inspector conformance test will be skipped"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
set +e
"$PY" -m pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
exit "$rc"
