"""Host, Origin and Content-Type checks on every route, in every mode (issue: ``serve --no-auth`` let a web page
post ``text/plain`` to /v1/ingest cross-site and read workspace data through DNS rebinding)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

import context_store as cs
from context_store.config import load_config
from context_store.errors import InvalidInputError
from context_store.server import create_app
from context_store.server.guard import HostPolicy
from context_store.server.run import ServeOptions, check_options, public_bind_warning
from tests.support.server import SERVING_MODES, make_server_repo, running_server

GET = "/api/v1/feature-service/get-features"
BATCH = "/api/v1/feature-service/get-features-batch"
META = "/api/v1/feature-service/metadata"
MCP_H = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-06-18"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
GET_BODY = {"params": {"featureServiceName": "user_features", "joinKeyMap": {"user_id": "u1"}}}


def _ingest(user: str) -> dict[str, Any]:
    return {"records": {"transactions": [{"record": {"user_id": user, "amount": 3.0, "ts": _now()}}]}}


def _now() -> str:
    return datetime.now(UTC).isoformat()


# (method, path, json body): GET and POST routes, fast-path routes (Tecton) and FastAPI ones, /mcp.
ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/healthz", None),
    ("GET", "/readyz", None),
    ("GET", "/metrics", None),
    ("GET", "/openapi.json", None),
    ("GET", "/v1/context/u1", None),
    ("POST", GET, GET_BODY),
    ("POST", BATCH, {"params": {"featureServiceName": "user_features", "requestData": []}}),
    ("POST", META, {"params": {"featureServiceName": "user_features"}}),
    ("POST", "/v1/similar", {"view": "v", "text": "x", "k": 1}),
    ("POST", "/v1/ingest", _ingest("u9")),
    ("POST", "/mcp", INIT),
]


@pytest.fixture(scope="module", params=SERVING_MODES)
def srv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    ws = "h" + uuid.uuid4().hex[:10]
    repo = make_server_repo(tmp_path_factory.mktemp("hosts") / "repo", "sqlite", ws)
    with cs.ContextStore(repo) as store:
        store.apply()
    app = create_app(repo, auth=False, fast_path=request.param, allowed_hosts=("api.example.com",))
    with running_server(app) as url:
        r = httpx.post(url + "/v1/ingest", json=_ingest("u1"), timeout=30)
        assert r.status_code == 200, r.text
        yield {"url": url, "ws": ws, "repo": repo}


def _call(srv: dict[str, Any], method: str, path: str, body: dict[str, Any] | None, **headers: str) -> httpx.Response:
    h = {**MCP_H, **headers} if path == "/mcp" else headers
    return httpx.request(method, srv["url"] + path, json=body, headers=h, timeout=30)


def _count(srv: dict[str, Any], user: str) -> Any:
    body = {"params": {"featureServiceName": "user_features", "joinKeyMap": {"user_id": user}}}
    r = httpx.post(srv["url"] + GET, json=body)
    assert r.status_code == 200, r.text
    return r.json()["result"]["features"][0]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_foreign_host_is_refused_on_every_route(
    srv: dict[str, Any], method: str, path: str, body: dict[str, Any] | None
) -> None:
    r = _call(srv, method, path, body, Host="evil.example")
    assert r.status_code == 421 and r.json()["field"] == "Host", r.text
    r = _call(srv, method, path, body, Host="evil.example:8000")
    assert r.status_code == 421
    # The page's origin, with a loopback Host (a request sent straight to 127.0.0.1 from a foreign page).
    r = _call(srv, method, path, body, Origin="http://evil.example")
    assert r.status_code == 403 and r.json()["field"] == "Origin", r.text
    r = _call(srv, method, path, body, Origin="null")
    assert r.status_code == 403


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_loopback_and_configured_hosts_pass(
    srv: dict[str, Any], method: str, path: str, body: dict[str, Any] | None
) -> None:
    port = srv["url"].rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "[::1]:8000", "api.example.com", "API.example.com:8443"):
        r = _call(srv, method, path, body, Host=host)
        assert r.status_code not in (403, 415, 421), (host, r.status_code, r.text)
    for origin in ("https://api.example.com", f"http://localhost:{port}", "http://127.0.0.1:3000"):
        r = _call(srv, method, path, body, Origin=origin)
        assert r.status_code not in (403, 415, 421), (origin, r.status_code, r.text)
        assert "access-control-allow-origin" not in r.headers  # no CORS unless configured


def test_cross_site_text_plain_ingest_is_refused_and_nothing_is_ingested(srv: dict[str, Any]) -> None:
    raw = b'{"records": {"transactions": [{"record": {"user_id": "victim", "amount": 1.0, "ts": "%s"}}]}}'
    raw = raw.replace(b"%s", _now().encode())
    url = srv["url"] + "/v1/ingest"
    before = _count(srv, "victim")
    # What a page may send cross-site without a preflight: text/plain, a form, a body with no type.
    for ctype in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", None):
        headers = {"content-type": ctype} if ctype else {}
        r = httpx.post(url, content=raw, headers=headers)
        assert r.status_code == 415, (ctype, r.text)
        assert r.json()["field"] == "Content-Type" and "application/json" in r.json()["message"]
        # From another local page too (an allowed origin): the content type alone refuses it.
        r = httpx.post(url, content=raw, headers={**headers, "origin": "http://localhost:3000"})
        assert r.status_code == 415
        r = httpx.post(url, content=raw, headers={**headers, "origin": "http://evil.example"})
        assert r.status_code == 403
    assert _count(srv, "victim") == before  # nothing was ingested
    # Same rule on the fast-path routes; JSON (with a charset) passes.
    r = httpx.post(srv["url"] + GET, content=b'{"params": {}}', headers={"content-type": "text/plain"})
    assert r.status_code == 415
    r = httpx.post(url, content=raw, headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200 and int(_count(srv, "victim")) == int(before or 0) + 1


def test_options_is_not_a_cors_preflight_by_default(srv: dict[str, Any]) -> None:
    r = httpx.options(
        srv["url"] + "/v1/ingest",
        headers={"origin": "http://localhost:3000", "access-control-request-method": "POST"},
    )
    assert "access-control-allow-origin" not in r.headers


def test_cors_only_for_configured_origins(tmp_path: Path) -> None:
    repo = make_server_repo(tmp_path / "repo", "sqlite", "c" + uuid.uuid4().hex[:8])
    with cs.ContextStore(repo) as store:
        store.apply()
    app = create_app(
        repo, auth=False, mcp=False, allowed_hosts=("testserver",), allowed_origins=("https://app.example.com",)
    )
    with TestClient(app) as client:
        pre = {"origin": "https://app.example.com", "access-control-request-method": "POST"}
        r = client.options("/v1/ingest", headers={**pre, "access-control-request-headers": "content-type"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example.com"
        r = client.post(GET, json=GET_BODY, headers={"origin": "https://app.example.com"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example.com"
        r = client.post(GET, json=GET_BODY, headers={"origin": "https://other.example.com"})
        assert r.status_code == 403 and "access-control-allow-origin" not in r.headers


def test_testserver_is_not_a_default_host(tmp_path: Path) -> None:
    """TestClient's ``Host: testserver`` is refused unless a test allows it: the defaults are loopback only."""
    repo = make_server_repo(tmp_path / "repo", "sqlite", "d" + uuid.uuid4().hex[:8])
    with TestClient(create_app(repo, auth=False, mcp=False)) as client:
        r = client.get("/healthz")
        assert r.status_code == 421 and "testserver" in r.json()["message"]


def test_allowed_hosts_from_config_env_and_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_server_repo(tmp_path / "repo", "sqlite", "e" + uuid.uuid4().hex[:8])
    (repo / "context_store.yaml").write_text(
        (repo / "context_store.yaml").read_text() + "allowed_hosts: [feature.example.com:8443]\n"
    )
    assert load_config(repo).allowed_hosts == ("feature.example.com:8443",)
    monkeypatch.setenv("CONTEXT_STORE_ALLOWED_HOSTS", "a.example, b.example:*")
    monkeypatch.setenv("CONTEXT_STORE_ALLOWED_ORIGINS", "https://app.example.com")
    cfg = load_config(repo)
    assert cfg.allowed_hosts == ("a.example", "b.example:*") and cfg.allowed_origins == ("https://app.example.com",)
    policy = HostPolicy.build(cfg.allowed_hosts, cfg.allowed_origins)
    assert policy.host_ok("a.example:80") and policy.host_ok("b.example:1") and not policy.host_ok("c.example")
    assert policy.origin_ok("https://a.example") and not policy.origin_ok("https://evil.example")
    # /mcp's own transport check gets the same lists.
    assert {"a.example", "a.example:*", "localhost:*", "[::1]:*"} <= set(policy.mcp_hosts())
    assert "https://a.example:*" in policy.mcp_origins() and "https://app.example.com" in policy.mcp_origins()
    monkeypatch.setenv("CONTEXT_STORE_ALLOWED_HOSTS", "not a host/")
    with pytest.raises(InvalidInputError) as e:
        load_config(repo)
    assert e.value.field == "allowed_hosts"
    with pytest.raises(InvalidInputError) as e:
        check_options(ServeOptions(allowed_hosts=["http://x.example"]))
    assert e.value.field == "--allowed-host"


def test_public_bind_without_allowed_hosts_warns(tmp_path: Path) -> None:
    cfg = load_config(tmp_path)
    msg = public_bind_warning(ServeOptions(host="0.0.0.0"), cfg)
    assert msg is not None and "--allowed-host" in msg and "421" in msg
    assert public_bind_warning(ServeOptions(host="0.0.0.0", allowed_hosts=["api.example.com"]), cfg) is None
    assert public_bind_warning(ServeOptions(host="127.0.0.1"), cfg) is None
