"""Nothing wrong is served as PRESENT: a view the online state does not hold completely (never
materialized, features added by a live apply) is NOT_MATERIALIZED with a null value -- in the SDK,
the MCP context and REST (Tecton wire: UNKNOWN) -- until backfill + materialize; then values
equal a brute-force recomputation. Real Redis (a workspace of its own on the shared server)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

import context_store as cs
from context_store.server import create_app
from context_store.types import NOT_MATERIALIZED, PRESENT
from tests.support.reference import expected_value
from tests.support.repo import make_repo
from tests.support.server import running_server
from tests.support.stream import SCHEMA, events_table

pytestmark = pytest.mark.redis

REPO = """
import context_store as cs

user = cs.Entity("user", join_keys=["user_id"])
history = cs.FileSource("data/txns.parquet", timestamp_field="ts")
txns = cs.StreamSource(
    "txns",
    schema=[cs.Field("user_id", cs.String), cs.Field("ts", cs.Timestamp), cs.Field("amount", cs.Float64),
            cs.Field("merchant", cs.String)],
    timestamp_field="ts",
    batch_source=history,
    partitions=2,
)
stats = cs.FeatureView(
    "stats",
    entities=[user],
    source=txns,
    aggregations=[cs.Aggregate("amount", "count", "1d"), cs.Aggregate("amount", "sum", "1d"){extra}],
)
svc = cs.FeatureService("svc", [stats])
ctx = cs.ContextService("ctx", entity=user, features=svc)
"""
MAX = ', cs.Aggregate("amount", "max", "1d")'
NOW = datetime.now(UTC)
HISTORY = [
    {"user_id": u, "ts": NOW - timedelta(hours=3, minutes=i), "amount": float(i + k), "merchant": "m"}
    for k, u in enumerate(["u1", "u2"])
    for i in range(6)
]
assert SCHEMA.names == ["user_id", "ts", "amount", "merchant"]


def _repo(root: Path, redis_url: str, ws: str, extra: str = "") -> Path:
    return make_repo(
        root,
        REPO.format(extra=extra),
        data={"txns.parquet": events_table(HISTORY)},
        config={"online_store": redis_url, "workspace": ws},
    )


def _ref(events: list[dict[str, Any]], user: str, function: str) -> Any:
    t = time.time_ns() // 1000
    rows = [{**e, "ts": int(e["ts"].timestamp() * 1_000_000)} for e in events]
    return expected_value(rows, ["user_id"], "ts", [user], t, "amount", function, 86_400_000_000)


def _statuses(v: cs.FeatureVector) -> dict[str, tuple[Any, str]]:
    return {m.name: (v.feature_values[m.name], m.status) for m in v.metadata}


@pytest.fixture
def ws(workspace_name: str, redis_cleanup: list[str]) -> str:
    redis_cleanup.append(f"cs:{workspace_name}:*")
    return workspace_name


def test_never_materialized_is_not_present_in_sdk_rest_and_mcp(tmp_path: Path, redis_url: str, ws: str) -> None:
    repo = _repo(tmp_path / "repo", redis_url, ws)
    store = cs.ContextStore(repo)
    try:
        store.apply()
        assert store.applied_coverage is not None and store.applied_coverage.pending == ["stats"]
        assert "context-store materialize --view stats" in store.applied_coverage.next_steps()
        got = _statuses(store.get_features("svc", {"user_id": "u1"}))
        assert got == {
            "stats.amount_count_1d": (None, NOT_MATERIALIZED),
            "stats.amount_sum_1d": (None, NOT_MATERIALIZED),
        }
        batch = store.get_features_batch("svc", [{"user_id": "u1"}, {"user_id": "u2"}])
        assert {m.status for v in batch for m in v.metadata} == {NOT_MATERIALIZED}
        uc = store.get_user_context("u1", "ctx")
        assert {f.status for f in uc.features} == {NOT_MATERIALIZED}
        assert all(f.value is None for f in uc.features) and "(not materialized)" in uc.text

        body = {
            "params": {
                "featureServiceName": "svc",
                "joinKeyMap": {"user_id": "u1"},
                "metadataOptions": {"includeServingStatus": True},
            }
        }
        with running_server(create_app(repo, auth=False, mcp=False)) as url:
            r = httpx.post(url + "/api/v1/feature-service/get-features", json=body, timeout=30)
            assert r.status_code == 200, r.text
            assert r.json()["result"]["features"] == [None, None]
            assert [f["status"] for f in r.json()["metadata"]["features"]] == ["UNKNOWN", "UNKNOWN"]
            ready = httpx.get(url + "/readyz", timeout=30)
            assert ready.status_code == 503 and "stats" in ready.json()["message"]
            assert "materialize --full" in ready.json()["message"]

            store.backfill()
            store.materialize()
            got = _statuses(store.get_features("svc", {"user_id": "u1"}))
            assert got == {
                "stats.amount_count_1d": (_ref(HISTORY, "u1", "count"), PRESENT),
                "stats.amount_sum_1d": (_ref(HISTORY, "u1", "sum"), PRESENT),
            }
            deadline = time.monotonic() + 10  # the server re-reads markers within a second
            while httpx.get(url + "/readyz", timeout=30).status_code != 200:
                assert time.monotonic() < deadline, "server never saw the materialization"
                time.sleep(0.2)
            r = httpx.post(url + "/api/v1/feature-service/get-features", json=body, timeout=30)
            assert [f["status"] for f in r.json()["metadata"]["features"]] == ["PRESENT", "PRESENT"]
        uc = store.get_user_context("u1", "ctx")
        assert {f.status for f in uc.features} == {PRESENT}
    finally:
        store.close()


def test_live_apply_keeps_old_features_and_hides_new_ones_until_materialized(
    tmp_path: Path, redis_url: str, ws: str
) -> None:
    root = tmp_path / "repo"
    repo = _repo(root, redis_url, ws)
    store = cs.ContextStore(repo)
    events = list(HISTORY)
    try:
        store.apply()
        store.backfill()
        store.materialize()
        push = [{"user_id": "u1", "ts": NOW - timedelta(minutes=5), "amount": 100.0, "merchant": "x"}]
        assert store.push("txns", push).visible
        events += push
        before = _statuses(store.get_features("svc", {"user_id": "u1"}))
        assert before["stats.amount_count_1d"] == (_ref(events, "u1", "count"), PRESENT)

        _repo(root, redis_url, ws, extra=MAX)  # a compatible change: one more aggregation
        store.apply()
        cov = store.applied_coverage
        assert cov is not None and cov.pending == ["stats"] and cov.live == ["stats"]
        assert "context-store backfill --view stats" in cov.next_steps()
        got = _statuses(store.get_features("svc", {"user_id": "u1"}))
        assert got == {**before, "stats.amount_max_1d": (None, NOT_MATERIALIZED)}

        # The stream keeps the old features right meanwhile (it writes the old layout too).
        push2 = [{"user_id": "u1", "ts": NOW - timedelta(minutes=1), "amount": 7.0, "merchant": "y"}]
        assert store.push("txns", push2).visible
        events += push2
        got = _statuses(store.get_features("svc", {"user_id": "u1"}))
        assert got["stats.amount_count_1d"] == (_ref(events, "u1", "count"), PRESENT)
        assert got["stats.amount_sum_1d"] == (_ref(events, "u1", "sum"), PRESENT)
        assert got["stats.amount_max_1d"] == (None, NOT_MATERIALIZED)

        store.backfill(views=["stats"])
        store.materialize(views=["stats"])
        for u in ("u1", "u2"):
            got = _statuses(store.get_features("svc", {"user_id": u}))
            assert got == {f"stats.amount_{f}_1d": (_ref(events, u, f), PRESENT) for f in ("count", "sum", "max")}, u
    finally:
        store.close()
