"""Real freshness (issue 17): a stopped worker makes a stream view's freshness and lag grow within
seconds, its SLO gauge flips to 1 and /readyz lists it; a restarted worker recovers it. A batch view's
freshness is now - its materialization watermark. Real Redis, a real ``context-store worker`` process."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from starlette.testclient import TestClient

import context_store as cs
from context_store.errors import DefinitionError
from context_store.server import create_app
from tests.support.repo import make_repo
from tests.support.stream import start_worker

REPO = """
import context_store as cs

user = cs.Entity("user", join_keys=["user_id"])
clicks = cs.StreamSource(
    "clicks",
    schema=[cs.Field("user_id", cs.String), cs.Field("ts", cs.Timestamp), cs.Field("n", cs.Int64)],
    timestamp_field="ts",
    partitions=2,
)
click_stats = cs.FeatureView(
    "click_stats", [user], clicks, aggregations=[cs.Aggregate("n", "sum", "1h")], expected_freshness="3s"
)
profiles = cs.FileSource("data/profiles.parquet", timestamp_field="ts")
profile = cs.FeatureView(
    "profile", [user], profiles, features=[cs.Field("age", cs.Int64)], ttl="30d", expected_freshness="1h"
)
svc = cs.FeatureService("svc", [click_stats, profile])
"""

BATCH_NEWEST = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


def _repo(root: Path, online_store: str, workspace: str) -> cs.ContextStore:
    profiles = pa.table(
        {
            "user_id": ["u1", "u2"],
            "ts": pa.array([BATCH_NEWEST - timedelta(hours=1), BATCH_NEWEST], pa.timestamp("us", tz="UTC")),
            "age": [30, 40],
        }
    )
    make_repo(
        root, REPO, data={"profiles.parquet": profiles}, config={"online_store": online_store, "workspace": workspace}
    )
    store = cs.ContextStore(root)
    store.apply(force=True)
    store.backfill(views=["profile"])
    store.materialize()
    return store


def _push(store: cs.ContextStore, n: int = 4, wait: bool = True) -> None:
    now = datetime.now(UTC)
    rows = [{"user_id": f"u{i}", "ts": now, "n": 1} for i in range(n)]  # u0..u3 land on both partitions
    store.push("clicks", rows, wait=wait, timeout=10.0)


def _until(cond: Callable[[], Any], timeout: float, what: str, tick: Callable[[], None] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        if tick is not None:
            tick()
        time.sleep(0.2)


def _views(client: TestClient) -> dict[str, dict[str, Any]]:
    r = client.get("/v1/status/views")
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"workspace", "now", "views"}
    return {v["view"]: v for v in body["views"]}


def _gauge(text: str, name: str, ws: str, view: str) -> float | None:
    m = re.search(rf'^{name}\{{view="{view}",workspace="{ws}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def _client(store: cs.ContextStore, **settings: Any) -> TestClient:
    # One portal (event loop, thread pool) for all requests: with TestClient(...) as client.
    return TestClient(create_app(store.config.repo, auth=False, mcp=False, **settings), base_url="http://127.0.0.1")


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as st:
        yield st


@pytest.fixture
def redis_store(
    tmp_path: Path, redis_url: str, workspace_name: str, redis_cleanup: list[str]
) -> Iterator[cs.ContextStore]:
    redis_cleanup.append(f"cs:{workspace_name}:*")
    store = _repo(tmp_path / "repo", redis_url, workspace_name)
    yield store
    store.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(30) == 0, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    finally:
        if proc.stderr:
            proc.stderr.close()


@pytest.mark.redis
def test_stopped_worker_grows_freshness_and_lag_then_recovers(
    redis_store: cs.ContextStore, redis_url: str, stack: ExitStack
) -> None:
    store, ws = redis_store, redis_store.workspace
    client = stack.enter_context(_client(store))
    worker = start_worker(store, redis_url, "--flush-interval", "0.25")
    try:
        _push(store)  # waits until applied (by the worker, or drained inline until it is up)

        def fresh_and_applied() -> bool:
            v = _views(client)["click_stats"]
            return v["freshness_seconds"] is not None and v["freshness_seconds"] < 2.0 and not v["slo_breached"]

        _until(fresh_and_applied, 15, "stream view fresh while the worker runs", tick=lambda: _push(store))
        v = _views(client)
        assert v["click_stats"]["kind"] == "stream" and v["click_stats"]["expected_freshness_seconds"] == 3.0
        assert {p["partition"] for p in v["click_stats"]["lag"]} == {0, 1}
        assert all(p["source"] == "clicks" for p in v["click_stats"]["lag"])
        # Batch view: now - the materialization watermark (the newest event time materialize loaded).
        b = v["profile"]
        assert b["kind"] == "batch" and b["lag"] == [] and not b["slo_breached"]
        assert b["newest_event_time"] == BATCH_NEWEST.isoformat()
        # The batch's newest event was 5 min before this module was imported (the suite may run it later).
        since = (datetime.now(UTC) - BATCH_NEWEST).total_seconds()
        assert since - 5 <= b["freshness_seconds"] <= since + 5
        # The worker must be the one applying: wait until it consumes a wait=False push by itself.
        _push(store, wait=False)
        _until(lambda: all(p["entries"] == 0 for p in _views(client)["click_stats"]["lag"]), 15, "worker drains")
    finally:
        _stop(worker)

    # Worker stopped; pushes keep coming (wait=False: durable in the stream, nobody applies them).
    t_stop = time.monotonic()
    _push(store, wait=False)

    first = _views(client)["click_stats"]

    def stale() -> dict[str, Any] | None:
        v = _views(client)["click_stats"]
        waited = max(p["seconds"] for p in v["lag"])  # the oldest unread entry: pushed after the stop
        return v if v["slo_breached"] and v["freshness_seconds"] > 3.0 and waited > 2.0 else None

    v = _until(stale, 10, "freshness past the 3s SLO and lag growing", tick=lambda: _push(store, wait=False))
    assert time.monotonic() - t_stop < 10
    assert v["freshness_seconds"] >= first["freshness_seconds"] + 2.0  # it grows with the wall clock
    assert v["newest_event_time"] == first["newest_event_time"]  # nothing applied since the stop
    assert sum(p["entries"] for p in v["lag"]) > sum(p["entries"] for p in first["lag"]) > 0

    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text  # reported, not failing readiness (ready_requires_fresh off)
    out = ready.json()["views_out_of_slo"]
    assert [(o["workspace"], o["view"]) for o in out] == [(ws, "click_stats")]

    text = client.get("/metrics", headers={"accept": "application/openmetrics-text"}).text
    assert (_gauge(text, "context_store_view_freshness_seconds", ws, "click_stats") or 0) > 3.0
    assert _gauge(text, "context_store_view_freshness_slo_breached", ws, "click_stats") == 1.0
    assert _gauge(text, "context_store_view_freshness_slo_breached", ws, "profile") == 0.0
    assert _gauge(text, "context_store_view_expected_freshness_seconds", ws, "click_stats") == 3.0
    lag = re.findall(
        rf'^context_store_stream_lag_entries\{{partition="(\d)",source="clicks",workspace="{ws}"\}} (\S+)$', text, re.M
    )
    assert {p for p, _ in lag} == {"0", "1"} and sum(float(n) for _, n in lag) > 0
    assert re.search(
        rf'^context_store_stream_lag_seconds\{{partition="0",source="clicks",workspace="{ws}"\}} ', text, re.M
    )
    assert re.search(
        rf'^context_store_stream_rejected_records_total\{{partition="0",source="clicks",workspace="{ws}"\}} 0',
        text,
        re.M,
    )

    strict = stack.enter_context(_client(store, ready_requires_fresh=True))
    r = strict.get("/readyz")
    assert r.status_code == 503 and "click_stats" in r.json()["message"]

    # Restarted: it applies the backlog and the view is fresh again.
    worker = start_worker(store, redis_url, "--flush-interval", "0.25")
    try:

        def recovered() -> bool:
            v = _views(client)["click_stats"]
            return not v["slo_breached"] and v["freshness_seconds"] < 3.0

        # Events keep coming: the restarted worker applies the backlog and keeps up with them.
        _until(recovered, 30, "recovery after the restart", tick=lambda: _push(store, wait=False))
        assert client.get("/readyz").json().get("views_out_of_slo") is None
        text = client.get("/metrics").text
        assert _gauge(text, "context_store_view_freshness_slo_breached", ws, "click_stats") == 0.0
        _until(lambda: all(p["entries"] == 0 for p in _views(client)["click_stats"]["lag"]), 15, "lag back to 0")
    finally:
        _stop(worker)


@pytest.mark.redis
def test_status_route_contract(redis_store: cs.ContextStore, stack: ExitStack) -> None:
    client = stack.enter_context(_client(redis_store))
    r = client.get("/v1/status/views", params={"bogus": "1"})
    assert r.status_code == 400 and "bogus" in r.text
    v = _views(client)
    # Nothing pushed yet: no freshness, so its SLO counts as breached; the batch view has its watermark.
    assert v["click_stats"]["freshness_seconds"] is None and v["click_stats"]["slo_breached"] is True
    assert v["click_stats"]["newest_event_time"] is None
    assert v["profile"]["freshness_seconds"] is not None
    assert set(v["click_stats"]) == {
        "view", "kind", "freshness_seconds", "newest_event_time", "expected_freshness_seconds",
        "slo_breached", "lag", "late", "rejected",
    }  # fmt: skip
    for p in v["click_stats"]["lag"]:
        assert set(p) == {"source", "partition", "entries", "seconds"}


def test_embedded_freshness_and_status_cli(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from context_store.cli.main import cli

    store = _repo(tmp_path / "repo", "sqlite", "default")
    try:
        now = datetime.now(UTC)
        store.push("clicks", [{"user_id": "u1", "ts": now - timedelta(seconds=2), "n": 1}])
        # A late event does not move the newest applied event time back.
        store.push("clicks", [{"user_id": "u1", "ts": now - timedelta(minutes=10), "n": 1}])
        rows = {r.view: r for r in store.view_status()}
        s = rows["click_stats"]
        assert s.kind == "stream" and s.newest_event_time is not None
        assert abs((s.newest_event_time - (now - timedelta(seconds=2))).total_seconds()) < 0.01
        assert 2.0 <= (s.freshness_seconds or 0) < 4.0 and not s.slo_breached
        assert [(p.partition, p.entries, p.seconds) for p in s.lag] == [(0, 0, 0.0)]  # applied in the push
        assert s.late == 1
        assert rows["profile"].kind == "batch" and rows["profile"].newest_event_time == BATCH_NEWEST
        later = store.view_status(now=now.timestamp() + 60)
        assert next(r for r in later if r.view == "click_stats").slo_breached  # 62 s > 3 s expected
    finally:
        store.close()
    res = CliRunner().invoke(cli, ["status", "--repo", str(tmp_path / "repo"), "--json"])
    assert res.exit_code == 0, res.output
    assert '"view": "click_stats"' in res.output and '"kind": "stream"' in res.output
    res = CliRunner().invoke(cli, ["status", "--repo", str(tmp_path / "repo")])
    assert res.exit_code == 0, res.output
    assert re.search(r"^click_stats\s+stream\s+\d+\.\ds\s+3\.0s\s+(ok|BREACHED)", res.output, re.M)
    assert re.search(r"^profile\s+batch\s+\d+\.\ds\s+3600\.0s\s+ok", res.output, re.M)


def test_expected_freshness_is_validated() -> None:
    user = cs.Entity("user", join_keys=["user_id"])
    src = cs.FileSource("x.parquet", timestamp_field="ts")
    v = cs.FeatureView("v", [user], src, features=[cs.Field("a", cs.Int64)], expected_freshness="5m")
    assert v.expected_freshness == timedelta(minutes=5) and v.spec()["expected_freshness_s"] == 300.0
    assert "expected_freshness_s" not in cs.FeatureView("w", [user], src, features=[cs.Field("a", cs.Int64)]).spec()
    with pytest.raises(DefinitionError, match="expected_freshness"):
        cs.FeatureView("v", [user], src, features=[cs.Field("a", cs.Int64)], expected_freshness="soon")
    with pytest.raises(DefinitionError, match="expected_freshness"):
        cs.EmbeddingView("e", [user], src, text="t", expected_freshness=-1)
    e = cs.EmbeddingView("e", [user], src, text="t", expected_freshness=timedelta(hours=1))
    assert e.spec()["expected_freshness_s"] == 3600.0
