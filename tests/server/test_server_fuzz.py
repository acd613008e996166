"""Schemathesis fuzzes every operation of /openapi.json against a real server with every check
(server errors, status codes, content types, schema conformance, undeclared methods): 0 failures.
Bounded: a fixed seed, a few examples per operation, ~35 s of generation."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import context_store as cs
from context_store.server import create_app
from context_store.server.keys import KeyStore, key_store_path
from tests.support.server import make_server_repo, running_server

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def test_schemathesis_finds_no_server_errors(tmp_path: Path, redis_url: str) -> None:
    ws = "f" + uuid.uuid4().hex[:10]
    repo = make_server_repo(tmp_path / "repo", redis_url, ws)
    store = cs.ContextStore(repo)
    store.apply()
    keys = KeyStore(key_store_path(store.config.data_dir))
    key = keys.create(ws, "admin")[0]
    exe = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    app = create_app(repo, key_store=keys, mcp=False)
    with running_server(app) as url:
        proc = subprocess.run(
            [
                exe,
                "run",
                f"{url}/openapi.json",
                "--checks",
                "all",
                "--max-examples",
                "12",
                "--seed",
                "1",
                "--header",
                f"Authorization: Bearer {key}",
                "--generation-database",
                "none",
                "--suppress-health-check",
                "all",
                "--request-timeout",
                "20",
                "--max-time",
                "35",
                "--no-color",
                "--phases",
                "examples,coverage,fuzzing",
                "--workers",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        )
    out = proc.stdout + proc.stderr
    # Long lines are generated bodies (curl reproductions); the findings and the summary fit in short ones.
    assert proc.returncode == 0, "\n".join(line for line in out.splitlines() if len(line) < 400)[-8000:]
    assert "Server error" not in out
    generated = re.search(r"(\d+) generated", out)
    assert generated and int(generated.group(1)) >= 100, out[-3000:]  # the fuzzing really ran
    print(out[-600:])
    import redis

    r = redis.Redis.from_url(redis_url)
    for k in r.scan_iter(match=f"*{ws}*", count=1000):
        r.delete(k)
    r.close()
