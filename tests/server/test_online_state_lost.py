"""The online store loses its state while serving (a test-owned Redis is flushed): features turn
non-PRESENT at once, /readyz says why (without credentials), and ``context-store materialize
--full`` restores values equal to a brute-force recomputation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

import context_store as cs
from context_store.server import create_app
from context_store.types import NOT_MATERIALIZED, PRESENT
from tests.support.private_redis import PrivateRedis
from tests.support.reference import expected_value
from tests.support.repo import make_repo
from tests.support.server import running_server
from tests.support.stream import events_table

pytestmark = [pytest.mark.redis, pytest.mark.slow]

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
    "stats", entities=[user], source=txns,
    aggregations=[cs.Aggregate("amount", "count", "1d"), cs.Aggregate("amount", "sum", "1d")],
)
svc = cs.FeatureService("svc", [stats])
"""
NOW = datetime.now(UTC)
HISTORY = [
    {"user_id": f"u{i % 3}", "ts": NOW - timedelta(hours=5, minutes=i), "amount": float(i), "merchant": "m"}
    for i in range(20)
]
LIVE = [
    {"user_id": f"u{i % 2}", "ts": NOW - timedelta(minutes=30 - i), "amount": 10.0 + i, "merchant": "x"}
    for i in range(6)
]
SECRET = "s3cret-pw-truth"
GET = "/api/v1/feature-service/get-features"


@pytest.fixture
def private(tmp_path: Path) -> Iterator[PrivateRedis]:
    r = PrivateRedis(tmp_path, password=SECRET).start()
    yield r
    r.stop()


def _expected(user: str, function: str) -> Any:
    rows = [{**e, "ts": int(e["ts"].timestamp() * 1_000_000)} for e in HISTORY + LIVE]
    return expected_value(rows, ["user_id"], "ts", [user], time.time_ns() // 1000, "amount", function, 86_400_000_000)


def _rest(url: str, user: str) -> tuple[list[Any], list[str]]:
    body = {
        "params": {
            "featureServiceName": "svc",
            "joinKeyMap": {"user_id": user},
            "metadataOptions": {"includeServingStatus": True},
        }
    }
    r = httpx.post(url + GET, json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["result"]["features"], [f["status"] for f in r.json()["metadata"]["features"]]


def _wait(cond: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_flushed_online_store_is_not_ready_and_materialize_full_restores(tmp_path: Path, private: PrivateRedis) -> None:
    from context_store.cli.core import materialize_cmd

    repo = make_repo(
        tmp_path / "repo",
        REPO,
        data={"txns.parquet": events_table(HISTORY)},
        config={"online_store": private.url, "workspace": "default"},
    )
    store = cs.ContextStore(repo)
    try:
        store.apply()
        store.backfill()
        store.materialize()
        assert store.push("txns", LIVE).visible
        with running_server(create_app(repo, auth=False, mcp=False)) as url:
            _wait(lambda: httpx.get(url + "/readyz", timeout=30).status_code == 200, "never ready")
            for u in ("u0", "u1", "u2"):
                assert _rest(url, u) == ([str(_expected(u, "count")), _expected(u, "sum")], ["PRESENT", "PRESENT"])

            private.client().flushall()  # type: ignore[attr-defined]
            _wait(lambda: _rest(url, "u0")[1] == ["UNKNOWN", "UNKNOWN"], "flushed state still served")
            assert _rest(url, "u0")[0] == [None, None]
            v = store.get_features("svc", {"user_id": "u0"})
            _wait(
                lambda: {m.status for m in store.get_features("svc", {"user_id": "u0"}).metadata} == {NOT_MATERIALIZED},
                "SDK still serves the flushed state",
            )
            ready = httpx.get(url + "/readyz", timeout=30)
            assert ready.status_code == 503
            msg = ready.json()["message"]
            assert "stats" in msg and "materialize --full" in msg and SECRET not in ready.text

            r = CliRunner().invoke(materialize_cmd, ["--full", "--repo", str(repo)])
            assert r.exit_code == 0, r.output
            assert "Materialize done." in r.output
            _wait(lambda: httpx.get(url + "/readyz", timeout=30).status_code == 200, "not ready after --full")
            for u in ("u0", "u1", "u2"):
                assert _rest(url, u) == ([str(_expected(u, "count")), _expected(u, "sum")], ["PRESENT", "PRESENT"])
                _wait(
                    lambda u=u: {m.status for m in store.get_features("svc", {"user_id": u}).metadata} == {PRESENT},
                    "SDK never saw the restored state",
                )
                v = store.get_features("svc", {"user_id": u})
                assert v.feature_values == {
                    "stats.amount_count_1d": _expected(u, "count"),
                    "stats.amount_sum_1d": _expected(u, "sum"),
                }
    finally:
        store.close()
