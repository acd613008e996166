"""``ContextStore.warm()`` (server start-up) builds the push path too: a server's first push used to import ~720
modules (lancedb and its pydantic models, pandas) in the request, 3 s idle and over 10 s on a starved host, while
every other push on that server waited for it (tests/test_multihost.py saw both servers time out at once)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.repo import make_repo
from tests.support.server import SERVER_DEFINITIONS

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
from datetime import UTC, datetime, timedelta
from context_store import ContextStore
store = ContextStore(sys.argv[1])
store.warm()
before = set(sys.modules)
ts = (datetime.now(UTC) - timedelta(minutes=2)).isoformat()
res = store.push("transactions", [{"user_id": "u1", "amount": 1.0, "ts": ts}])
new = sorted(set(sys.modules) - before)
store.close()
print(json.dumps({"accepted": res.accepted, "new": new}))
"""


def test_first_push_after_warm_imports_nothing_heavy(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", SERVER_DEFINITIONS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTEXT_STORE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", "context_store.cli", "apply", "--repo", str(repo)], env=env, capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    run = subprocess.run([sys.executable, "-c", PROBE, str(repo)], env=env, capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    out = json.loads(run.stdout.decode().strip().splitlines()[-1])
    assert out["accepted"] == 1
    heavy = [m for m in out["new"] if m.split(".")[0] in ("lancedb", "lance", "pandas", "pydantic", "lance_namespace")]
    assert not heavy, f"the first push imported {len(out['new'])} modules, e.g. {heavy[:5]}"
    assert len(out["new"]) < 100, out["new"]
