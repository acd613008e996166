"""API keys, workspaces and scopes over real HTTP (uvicorn on a free port)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

import context_store as cs
from context_store.errors import InvalidInputError, UnauthorizedError
from context_store.server import create_app
from context_store.server.auth import authenticate
from context_store.server.keys import KeyStore, key_store_path
from context_store.server.run import ServeOptions, check_options, is_loopback
from tests.support.server import SERVING_MODES, make_server_repo, running_server

pytestmark = pytest.mark.redis

META = "/api/v1/feature-service/metadata"


@pytest.fixture(scope="module", params=SERVING_MODES)
def env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[dict[str, Any]]:
    import uuid

    ws, other = "a" + uuid.uuid4().hex[:10], "b" + uuid.uuid4().hex[:10]
    root = tmp_path_factory.mktemp("auth")
    repo = make_server_repo(root / "repo", redis_url, ws)
    cs.ContextStore(repo).apply()
    cs.ContextStore(repo, workspace=other).apply()
    keys = KeyStore(key_store_path(cs.ContextStore(repo).config.data_dir), cache_ttl=0.0)
    k = {
        "read": keys.create(ws, "read")[0],
        "ingest": keys.create(ws, "ingest")[0],
        "admin": keys.create(ws, "admin")[0],
        "other": keys.create(other, "read")[0],
        "limited": keys.create(ws, "read", rate_limit=2.0)[0],
    }
    app = create_app(repo, key_store=keys, mcp=False, fast_path=request.param)
    with running_server(app) as url:
        yield {"url": url, "ws": ws, "other": other, "keys": k, "store": keys, "repo": repo}


def _meta(env: dict[str, Any], header: str | None, workspace: str | None = None) -> httpx.Response:
    params: dict[str, Any] = {"featureServiceName": "fraud"}
    if workspace:
        params["workspaceName"] = workspace
    headers = {"authorization": header} if header else {}
    return httpx.post(env["url"] + META, json={"params": params}, headers=headers)


def test_missing_and_malformed_keys_are_401(env: dict[str, Any]) -> None:
    r = _meta(env, None)
    assert r.status_code == 401 and "Authorization" in r.json()["message"]
    r = _meta(env, "Basic abc")
    assert r.status_code == 401 and "malformed" in r.json()["message"]
    r = _meta(env, "Bearer cs_deadbeef_notakey")
    assert r.status_code == 401 and "invalid or revoked" in r.json()["message"]


def test_tecton_key_and_bearer_both_work(env: dict[str, Any]) -> None:
    key = env["keys"]["read"]
    for header in (f"Tecton-key {key}", f"Bearer {key}"):
        r = _meta(env, header, env["ws"])
        assert r.status_code == 200, r.text
        assert [f["name"] for f in r.json()["featureValues"]][0] == "txn_stats.amount_count_1h"
    # Without workspaceName the key's workspace is used.
    assert _meta(env, f"Bearer {key}").status_code == 200


def test_key_decides_the_workspace(env: dict[str, Any]) -> None:
    r = _meta(env, f"Bearer {env['keys']['read']}", env["other"])
    assert r.status_code == 403
    assert env["ws"] in r.json()["message"] and env["other"] in r.json()["message"]
    r = _meta(env, f"Bearer {env['keys']['other']}", env["ws"])
    assert r.status_code == 403
    assert _meta(env, f"Bearer {env['keys']['other']}", env["other"]).status_code == 200


def test_read_key_cannot_ingest(env: dict[str, Any]) -> None:
    body = {
        "workspace_name": env["ws"],
        "dry_run": True,
        "records": {"transactions": [{"record": {"user_id": "u1", "amount": 1.0, "ts": "2026-01-01T00:00:00Z"}}]},
    }
    r = httpx.post(env["url"] + "/v1/ingest", json=body, headers={"authorization": f"Bearer {env['keys']['read']}"})
    assert r.status_code == 403 and "ingest" in r.json()["message"]
    # An ingest key of another workspace is refused too.
    body_other = dict(body, workspace_name=env["other"])
    r = httpx.post(
        env["url"] + "/v1/ingest", json=body_other, headers={"authorization": f"Bearer {env['keys']['ingest']}"}
    )
    assert r.status_code == 403


@pytest.mark.parametrize("scope", ["ingest", "admin"])
def test_ingest_and_admin_keys_can_ingest(env: dict[str, Any], scope: str) -> None:
    body = {
        "workspace_name": env["ws"],
        "dry_run": True,
        "records": {"transactions": [{"record": {"user_id": "u1", "amount": 1.0, "ts": "2026-01-01T00:00:00Z"}}]},
    }
    r = httpx.post(env["url"] + "/v1/ingest", json=body, headers={"authorization": f"Bearer {env['keys'][scope]}"})
    assert r.status_code == 200, r.text
    assert r.json()["recordCounts"] == {"transactions": 1} and r.json()["dryRun"] is True


def test_revoked_key_is_refused(env: dict[str, Any]) -> None:
    store: KeyStore = env["store"]
    key, rec = store.create(env["ws"], "read")
    assert _meta(env, f"Bearer {key}").status_code == 200
    store.revoke(rec.key_id)
    r = _meta(env, f"Bearer {key}")
    assert r.status_code == 401
    assert [k for k in store.list(env["ws"]) if k.key_id == rec.key_id][0].revoked_at is not None


def test_rate_limit_per_key(env: dict[str, Any]) -> None:
    header = f"Bearer {env['keys']['limited']}"
    codes = [_meta(env, header).status_code for _ in range(12)]
    assert 429 in codes and codes[0] == 200
    r = _meta(env, header)
    if r.status_code == 429:
        assert "rate limit" in r.json()["message"] and r.headers.get("retry-after")
    # Other keys are not affected by this key's bucket.
    assert _meta(env, f"Bearer {env['keys']['read']}").status_code == 200


def test_keys_are_stored_hashed(env: dict[str, Any]) -> None:
    key = env["keys"]["admin"]
    raw = Path(env["store"].path).read_bytes()
    assert key.encode() not in raw
    with sqlite3.connect(env["store"].path) as c:
        cols = [r[1] for r in c.execute("PRAGMA table_info(api_keys)")]
    assert "key_hash" in cols and "key" not in cols


def test_authenticate_function_for_mcp(env: dict[str, Any]) -> None:
    p = authenticate(f"Bearer {env['keys']['ingest']}", env["store"])
    assert (p.workspace, p.scope) == (env["ws"], "ingest")
    with pytest.raises(UnauthorizedError):
        authenticate("Bearer nope", env["store"])
    with pytest.raises(UnauthorizedError):
        authenticate(None, env["store"])
    assert authenticate(None, None).workspace is None  # auth disabled


def test_key_store_rejects_bad_input(tmp_path: Path) -> None:
    ks = KeyStore(tmp_path / "keys.sqlite")
    with pytest.raises(InvalidInputError) as e:
        ks.create("ws", "root")
    assert e.value.field == "scope"
    with pytest.raises(InvalidInputError):
        ks.create("bad workspace!", "read")
    with pytest.raises(cs.NotFoundError):
        ks.revoke("00000000")


def test_no_auth_only_on_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    check_options(ServeOptions(host="127.0.0.1", auth=False))
    with pytest.raises(InvalidInputError) as e:
        check_options(ServeOptions(host="0.0.0.0", auth=False))
    assert e.value.field == "--no-auth"
    from context_store.cli.serve import serve

    res = CliRunner().invoke(serve, ["--no-auth", "--host", "0.0.0.0"])
    assert res.exit_code != 0 and "loopback" in res.output


def test_keys_cli_create_list_revoke(env: dict[str, Any]) -> None:
    from context_store.cli.keys import keys

    runner = CliRunner()
    res = runner.invoke(keys, ["create", "--repo", str(env["repo"]), "--workspace", env["ws"], "--scope", "ingest"])
    assert res.exit_code == 0, res.output
    key = res.stdout.strip().splitlines()[-1]
    p = authenticate(f"Tecton-key {key}", env["store"])
    assert (p.workspace, p.scope) == (env["ws"], "ingest")
    res = runner.invoke(keys, ["list", "--repo", str(env["repo"]), "--workspace", env["ws"]])
    assert res.exit_code == 0 and p.key_id in res.output and key not in res.output
    res = runner.invoke(keys, ["revoke", p.key_id, "--repo", str(env["repo"])])
    assert res.exit_code == 0 and "revoked" in res.output
    with pytest.raises(UnauthorizedError):
        authenticate(f"Bearer {key}", env["store"])
    res = runner.invoke(keys, ["create", "--repo", str(env["repo"]), "--scope", "root"])
    assert res.exit_code != 0
