"""The console's routes without a browser: /ui and its assets (types, caching, CSP, the request guard), and
``/v1/status/serving`` (auth, and the series it computes from the server's own request metrics)."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import context_store as cs
from context_store.server import create_app
from context_store.server.keys import KeyStore, key_store_path
from context_store.server.metrics import Metrics
from context_store.server.routes_ui import CSP
from context_store.server.serving_stats import ServingSeries, _read_children, _read_collected, quantile
from tests.support.server import make_server_repo, running_server

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[dict[str, Any]]:
    ws = "c" + uuid.uuid4().hex[:10]
    repo = make_server_repo(tmp_path_factory.mktemp("console") / "repo", redis_url, ws)
    store = cs.ContextStore(repo)
    store.apply()
    keys = KeyStore(key_store_path(store.config.data_dir))
    read, metrics_only = keys.create(ws, "read")[0], keys.create(ws, "metrics")[0]
    with running_server(create_app(repo, key_store=keys, mcp=False)) as url:
        yield {"url": url, "read": read, "metrics": metrics_only}
    store.close()


def _version(html: str) -> str:
    m = re.search(r"/ui/static/(\w+)/app\.js", html)
    assert m, html
    return m.group(1)


def test_console_page_and_assets(srv: dict[str, Any]) -> None:
    page = httpx.get(srv["url"] + "/ui")  # no key: the page itself is public, its data is not
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"
    assert page.headers["content-security-policy"] == CSP and "script-src 'self'" in CSP
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in page.text and "style=" not in page.text  # nothing inline for the CSP to refuse
    version = _version(page.text)
    types = {"app.js": "text/javascript", "pages/lookup.js": "text/javascript", "console.css": "text/css"}
    for name, ctype in types.items():
        r = httpx.get(f"{srv['url']}/ui/static/{version}/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-type"].startswith(ctype)
        assert r.headers["cache-control"] == "public, max-age=31536000, immutable"  # the URL changes on upgrade
        assert r.headers["content-security-policy"] == CSP
    # Every module the page imports is served (a missing one would break the page in a browser only).
    app_js = httpx.get(f"{srv['url']}/ui/static/{version}/app.js").text
    for rel in re.findall(r'from "\./([\w/]+\.js)"', app_js):
        assert httpx.get(f"{srv['url']}/ui/static/{version}/{rel}").status_code == 200, rel
    assert httpx.get(f"{srv['url']}/ui/static/{version}/nope.js").status_code == 404
    assert httpx.get(f"{srv['url']}/ui/static/000000000000/app.js").status_code == 404  # another version
    assert httpx.get(f"{srv['url']}/ui/static/{version}/index.html").status_code == 404
    assert httpx.get(f"{srv['url']}/ui/static/{version}/../../v1/status/serving").status_code == 404


def test_console_is_behind_the_request_guard(srv: dict[str, Any]) -> None:
    # DNS rebinding: a page served under another name is refused before any route.
    assert httpx.get(srv["url"] + "/ui", headers={"Host": "evil.example"}).status_code == 421
    # Its own origin passes (the browser sends Origin on the console's POSTs).
    port = srv["url"].rsplit(":", 1)[1]
    ok = httpx.get(srv["url"] + "/ui", headers={"Origin": f"http://127.0.0.1:{port}"})
    assert ok.status_code == 200
    assert httpx.get(srv["url"] + "/ui", headers={"Origin": "https://evil.example"}).status_code == 403


def test_serving_status_needs_a_read_key(srv: dict[str, Any]) -> None:
    url = srv["url"] + "/v1/status/serving"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer cs_nope_nope"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {srv['metrics']}"}).status_code == 403
    r = httpx.get(url, headers={"Authorization": f"Bearer {srv['read']}"})
    assert r.status_code == 200
    body = r.json()
    assert body["window_seconds"] == 300 and isinstance(body["series"], list) and isinstance(body["routes"], dict)
    bad = httpx.get(url, params={"window": "60"}, headers={"Authorization": f"Bearer {srv['read']}"})
    assert bad.status_code == 400 and bad.json()["field"] == "window"


def test_quantile_interpolates_like_prometheus() -> None:
    bounds = [0.001, 0.002, 0.005, math.inf]
    assert quantile(0.5, bounds, [0, 0, 0, 0]) is None
    assert quantile(0.5, bounds, [10, 10, 10, 10]) == pytest.approx(0.0005)  # all in the first bucket
    assert quantile(0.5, bounds, [0, 10, 10, 10]) == pytest.approx(0.0015)
    assert quantile(0.99, bounds, [0, 0, 0, 5]) == 0.005  # above the largest bound: that bound


def test_series_from_the_request_metrics(tmp_path: Path) -> None:
    """Real Metrics, observed as the request middleware does; two readings 2 s apart make one point."""
    metrics = Metrics()
    series = ServingSeries(metrics, interval=2.0, window=10.0)
    series.sample(now=1000.0)
    for _ in range(90):
        metrics.observe_request("/api/v1/feature-service/get-features", "svc", 0.0015)
        metrics.requests.labels("/api/v1/feature-service/get-features", "200").inc()
    for _ in range(10):
        metrics.observe_request("/api/v1/feature-service/get-features", "other", 0.04)
        metrics.requests.labels("/api/v1/feature-service/get-features", "404").inc()
    for _ in range(50):  # the console's own polling is not serving traffic
        metrics.observe_request("/v1/status/serving", "", 0.001)
    # The direct read of the children and the public collect() API agree (the latter is the fallback).
    assert _read_children(metrics) == _read_collected(metrics)
    series.sample(now=1002.0)
    (point,) = series.points
    assert point["t"] == 1002.0 and point["qps"] == 50.0  # 100 serving requests in 2 s
    assert 1.0 < point["p50_ms"] < 2.0 and 25.0 < point["p99_ms"] <= 50.0
    snap = series.snapshot()
    gf = snap["routes"]["/api/v1/feature-service/get-features"]
    assert gf["requests"] == 100 and gf["errors"] == 10 and gf["serving"] is True
    assert snap["routes"]["/v1/status/serving"]["serving"] is False
    for i in range(20):  # the ring buffer keeps window / interval points
        series.sample(now=1004.0 + 2 * i)
    assert len(series.points) == 5 and series.points[-1]["qps"] == 0.0
