"""Cold starts: what each light command imports, read from ``python -X importtime`` in a real subprocess.

Wall-clock times are measured by ``evals/bench_cli.py``; a test asserts the cause (no heavy
import) instead, which holds however loaded the machine is.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

import context_store as cs

# Seconds each to import on 2 cores, and needed by none of the commands below.
HEAVY = {
    "lancedb",
    "lance",
    "duckdb",
    "torch",
    "sentence_transformers",
    "transformers",
    "faiss",
    "pandas",
    "polars",
    "ray",
    "mcp",
    "uvicorn",
    "fastapi",
    "starlette",
    "redis",
}


def imported(*args: str, cwd: Path) -> set[str]:
    """Top-level packages a ``context-store *args`` run imports (it must succeed)."""
    root = str(Path(cs.__file__).resolve().parent.parent)  # this checkout, not an installed copy
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTEXT_STORE_")}
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    p = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "context_store.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )
    assert p.returncode == 0, (p.stdout, p.stderr[-3000:])
    names = set()
    for line in p.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    assert "context_store" in names  # the output was importtime's
    return names


def test_help_imports_nothing_heavy(tmp_path: Path) -> None:
    mods = imported("--help", cwd=tmp_path)
    # not even Arrow/NumPy: --help only lists commands
    assert not mods & (HEAVY | {"pyarrow", "numpy", "yaml"}), sorted(mods & (HEAVY | {"pyarrow", "numpy", "yaml"}))


@pytest.fixture(scope="module")
def materialized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small scaffolded repo, applied, its feature views backfilled and materialized (embedded sqlite)."""
    from context_store.scaffold import scaffold

    root = tmp_path_factory.mktemp("cold") / "repo"
    scaffold(root, users=20, events=400, items=30, end=datetime.now(UTC))
    store = cs.ContextStore(root)
    try:
        store.apply()
        views = sorted(store.definitions.feature_views)  # not the embedding views: no model to load here
        store.backfill(views=views)
        store.materialize()
    finally:
        store.close()
    return root


def test_get_imports_nothing_heavy(materialized: Path) -> None:
    mods = imported("get", "fraud_detection_service", "user_id=u0001", "--request", "amount=250", cwd=materialized)
    assert not mods & HEAVY, sorted(mods & HEAVY)


def test_noop_materialize_opens_no_offline_table(materialized: Path) -> None:
    """Nothing changed since the last materialize: the Lance tables are left unopened (their
    manifests say so), the history files unread; LanceDB is not even imported."""
    mods = imported("materialize", cwd=materialized)
    assert not mods & HEAVY, sorted(mods & HEAVY)
    assert "pyarrow" in mods  # the command ran for real (it reads the registry and the online state)
