"""Security of keys and metrics: /metrics needs the metrics scope, key admin is workspace-scoped, keys expire,
record their last use and rotate. The server runs with its own key store (as ``serve`` does) and the CLI writes
the key file from outside, so every change is seen through the server's cache (effective within a second)."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner, Result

import context_store as cs
from context_store.cli.keys import keys as keys_cli
from context_store.errors import UnauthorizedError
from context_store.server import create_app
from context_store.server.keys import KeyStore, hash_key, key_store_path
from tests.support.server import SERVING_MODES, make_server_repo, running_server

pytestmark = pytest.mark.redis

META = "/api/v1/feature-service/metadata"
CACHE_TTL = 1.2  # the server's key cache (1 s) plus a margin


@pytest.fixture(scope="module", params=SERVING_MODES)
def env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[dict[str, Any]]:
    wsa, wsb = "a" + uuid.uuid4().hex[:10], "b" + uuid.uuid4().hex[:10]
    repo = make_server_repo(tmp_path_factory.mktemp("seckeys") / "repo", redis_url, wsa)
    cs.ContextStore(repo).apply()
    cs.ContextStore(repo, workspace=wsb).apply()
    admin = KeyStore(key_store_path(cs.ContextStore(repo).config.data_dir))  # the operator's side
    k = {scope: admin.create(wsa, scope)[0] for scope in ("read", "ingest", "admin", "metrics")}
    k["other"] = admin.create(wsb, "read")[0]
    app = create_app(repo, mcp=True, fast_path=request.param)  # builds its own key store, like `serve`
    with running_server(app) as url:
        yield {"url": url, "wsa": wsa, "wsb": wsb, "keys": k, "admin": admin, "repo": repo}


def _cli(env: dict[str, Any], *args: str, workspace: str | None = None) -> Result:
    ws = ["--workspace", workspace] if workspace else []
    return CliRunner().invoke(keys_cli, [*args, "--repo", str(env["repo"]), *ws])


def _meta(env: dict[str, Any], key: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(env["url"] + META, json={"params": {"featureServiceName": "fraud"}}, headers=headers)


def _metrics(url: str, key: str | None = None) -> httpx.Response:
    return httpx.get(url + "/metrics", headers={"authorization": f"Bearer {key}"} if key else {})


def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _id(key: str) -> str:
    return key.split("_")[1]


# -- item 4: /metrics ---------------------------------------------------------------------------------
def test_metrics_need_a_key_with_the_metrics_scope(env: dict[str, Any]) -> None:
    assert _meta(env, env["keys"]["read"]).status_code == 200  # something to count
    r = _metrics(env["url"])
    assert r.status_code == 401 and "Authorization" in r.json()["message"]
    for scope in ("read", "ingest"):
        r = _metrics(env["url"], env["keys"][scope])
        assert r.status_code == 403 and "'metrics'" in r.json()["message"], r.text
    r = _metrics(env["url"], env["keys"]["metrics"])
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/openmetrics-text")
    assert "cs_http_requests_total" in r.text and r.text.rstrip().endswith("# EOF")
    assert _metrics(env["url"], env["keys"]["admin"]).status_code == 200  # admin grants every scope


def test_a_metrics_key_reads_no_data(env: dict[str, Any]) -> None:
    r = _meta(env, env["keys"]["metrics"])
    assert r.status_code == 403 and "'read'" in r.json()["message"]
    mcp_headers = {
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "authorization": f"Bearer {env['keys']['metrics']}",
    }
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    r = httpx.post(env["url"] + "/mcp", json=init, headers=mcp_headers)
    assert r.status_code == 403 and "'read'" in r.text


def test_public_metrics_and_no_auth(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = "p" + uuid.uuid4().hex[:10]
    repo = make_server_repo(tmp_path / "repo", redis_url, ws)
    cs.ContextStore(repo).apply()
    with running_server(create_app(repo, mcp=False, public_metrics=True)) as url:
        assert _metrics(url).status_code == 200
        assert _meta({"url": url}, None).status_code == 401  # only /metrics is public
    # --no-auth (loopback only, enforced by `serve`): everything is open, /metrics too.
    with running_server(create_app(repo, mcp=False, auth=False)) as url:
        assert _metrics(url).status_code == 200
    # `serve --public-metrics` reaches the app built in each worker process.
    from context_store.cli.serve import serve
    from context_store.server.run import ENV_OPTIONS, ServeOptions, app_from_env

    assert "--public-metrics" in CliRunner().invoke(serve, ["--help"]).output
    opts = ServeOptions(repo=str(repo), workspace=ws, public_metrics=True, mcp=False)
    monkeypatch.setenv(ENV_OPTIONS, orjson.dumps(opts.__dict__).decode())
    assert app_from_env().state.cs.settings.public_metrics is True


# -- item 5: workspace-scoped admin, expiry, last use, rotation ------------------------------------------
def test_revoke_across_workspaces_is_refused(env: dict[str, Any]) -> None:
    other = env["keys"]["other"]
    res = _cli(env, "revoke", _id(other), workspace=env["wsa"])
    assert res.exit_code != 0
    assert res.stderr.strip().count("\n") == 0 and "another workspace" in res.stderr, res.stderr
    res = _cli(env, "revoke", "00000000", workspace=env["wsa"])
    assert res.exit_code != 0 and f"no such key '00000000' in workspace '{env['wsa']}'" in res.stderr
    time.sleep(CACHE_TTL)
    assert _meta(env, other).status_code == 200  # untouched
    # list only shows the workspace's own keys.
    listed = _cli(env, "list", workspace=env["wsa"])
    assert listed.exit_code == 0 and _id(env["keys"]["read"]) in listed.stdout and _id(other) not in listed.stdout
    listed = _cli(env, "list", "--all-workspaces", workspace=env["wsa"])
    assert _id(other) in listed.stdout and "all workspaces" in listed.stderr
    # Across workspaces on purpose: allowed, and said.
    key, rec = env["admin"].create(env["wsb"], "read")
    res = _cli(env, "revoke", rec.key_id, "--all-workspaces", workspace=env["wsa"])
    assert res.exit_code == 0 and "all workspaces" in res.stderr and f"workspace={env['wsb']}" in res.stdout
    assert _eventually(lambda: _meta(env, key).status_code == 401, CACHE_TTL + 1)


def test_expired_key_is_401_saying_so(env: dict[str, Any]) -> None:
    res = _cli(env, "create", "--expires", "2s", workspace=env["wsa"])
    assert res.exit_code == 0, res.output
    key = res.stdout.strip().splitlines()[-1]
    assert _meta(env, key).status_code == 200
    assert _eventually(lambda: _meta(env, key).status_code == 401, 6.0)
    r = _meta(env, key)
    assert r.status_code == 401 and "expired" in r.json()["message"] and _id(key) in r.json()["message"]
    assert "expired" in _cli(env, "list", workspace=env["wsa"]).stdout
    # Days (and hours, minutes) parse; the expiry is shown.
    res = _cli(env, "create", "--expires", "30d", workspace=env["wsa"])
    assert res.exit_code == 0
    rec = env["admin"].get(res.stdout.strip().splitlines()[-1])
    assert rec.expires_at is not None
    assert abs(rec.expires_at - (rec.created_at + timedelta(days=30))) < timedelta(seconds=1)
    assert f"{rec.expires_at:%Y-%m-%d %H:%M:%S}" in _cli(env, "list", workspace=env["wsa"]).stdout
    for bad in ("soon", "0", "-1h"):
        res = _cli(env, "create", "--expires", bad, workspace=env["wsa"])
        assert res.exit_code != 0 and "expires" in res.stderr


def test_rotate_keeps_the_old_key_for_the_grace_period(env: dict[str, Any]) -> None:
    old, rec = env["admin"].create(env["wsa"], "ingest", description="billing job", rate_limit=50.0)
    assert _meta(env, old).status_code == 200
    res = _cli(env, "rotate", rec.key_id, "--grace", "3s", workspace=env["wsa"])
    assert res.exit_code == 0, res.output
    new = res.stdout.strip().splitlines()[-1]
    assert new.startswith("cs_") and new != old and f"rotated key {rec.key_id} ->" in res.stderr
    got = env["admin"].get(new)
    assert (got.workspace, got.scope, got.description, got.rate_limit) == (env["wsa"], "ingest", "billing job", 50.0)
    assert _meta(env, new).status_code == 200
    assert _meta(env, old).status_code == 200  # still within the grace period
    assert _eventually(lambda: _meta(env, old).status_code == 401, 3 + CACHE_TTL + 2)
    assert "expired" in _meta(env, old).json()["message"]
    assert _meta(env, new).status_code == 200
    # Rotating a key of another workspace is refused like revoking it.
    res = _cli(env, "rotate", _id(env["keys"]["other"]), workspace=env["wsa"])
    assert res.exit_code != 0 and "another workspace" in res.stderr


def test_last_used_is_recorded_and_listed(env: dict[str, Any]) -> None:
    key, rec = env["admin"].create(env["wsa"], "read")
    assert rec.last_used_at is None
    before = datetime.now(UTC).replace(microsecond=0)
    assert _meta(env, key).status_code == 200
    # Written by the server's background thread, not by the request.
    assert _eventually(lambda: env["admin"].get(rec.key_id).last_used_at is not None)
    used = env["admin"].get(rec.key_id).last_used_at
    assert used is not None and used >= before
    row = next(line for line in _cli(env, "list", workspace=env["wsa"]).stdout.splitlines() if rec.key_id in line)
    assert f"{used:%Y-%m-%d %H:%M:%S}" in row


# -- the key store itself ---------------------------------------------------------------------------
def test_last_used_is_throttled_and_off_the_request_path(tmp_path: Path) -> None:
    ks = KeyStore(tmp_path / "keys.sqlite", last_used_interval=60.0)
    key, rec = ks.create("ws", "read")
    ks.verify(key)
    assert _eventually(lambda: ks.get(rec.key_id).last_used_at is not None)
    with sqlite3.connect(ks.path) as c:
        c.execute("UPDATE api_keys SET last_used_at = 1 WHERE key_id = ?", (rec.key_id,))
    n = 20_000
    t0 = time.perf_counter()
    for _ in range(n):
        ks.verify(key)
    per_call = (time.perf_counter() - t0) / n
    ks.close()
    assert ks.get(rec.key_id).last_used_at == datetime.fromtimestamp(1, tz=UTC)  # at most once a minute
    assert per_call < 20e-6, f"verify took {per_call * 1e6:.1f} us per call"  # a cache hit: no disk I/O


def test_old_key_files_are_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "keys.sqlite"
    key = "cs_0123abcd_" + "x" * 43
    with sqlite3.connect(path) as c:  # the layout before expiry and last use existed
        c.execute(
            "CREATE TABLE api_keys (key_id TEXT PRIMARY KEY, key_hash TEXT UNIQUE NOT NULL, "
            "workspace TEXT NOT NULL, scope TEXT NOT NULL, created_at REAL NOT NULL, revoked_at REAL, "
            "description TEXT NOT NULL DEFAULT '', rate_limit REAL)"
        )
        c.execute(
            "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL, ?, NULL)",
            ("0123abcd", hash_key(key), "ws", "read", time.time(), "old"),
        )
    ks = KeyStore(path)
    assert ks.verify(key).key_id == "0123abcd"
    with sqlite3.connect(path) as c:
        cols = {r[1] for r in c.execute("PRAGMA table_info(api_keys)")}
    assert {"expires_at", "last_used_at"} <= cols
    KeyStore(path).close()  # opening a migrated file again is a no-op
    _, new, old = ks.rotate("0123abcd", timedelta(0), workspace="ws")
    assert old.status == "expired" and new.status == "active" and new.description == "old"
    with pytest.raises(UnauthorizedError, match="expired"):
        ks.verify(key)
    ks.close()
