"""Event-time bounds and truthful late handling on push (issue 12): far-future and insane times
are refused with a 4xx naming the record and field; a far-future event cannot freeze a partition;
records too late to count (beyond allowed_lateness, before a backfill cut-over) are written
nowhere and reported, never answered visible while uncounted. Embedded and Redis modes alike, each
asserting online == offline == a brute-force recomputation over the records push accepted."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import context_store as cs
from context_store.compute.stream.cutover import record_cutover
from context_store.compute.stream.validate import validate_records
from context_store.errors import InvalidInputError
from context_store.vocab.time import datetime_to_us
from tests.support.reference import expected_view_row, values_match
from tests.support.stream import T0, StoreFactory, event

TS = pa.timestamp("us", tz="UTC")
MODES = ["embedded", pytest.param("redis", marks=pytest.mark.redis)]
NOW = datetime.now(UTC)


@pytest.fixture
def open_store(request: pytest.FixtureRequest, make_store: StoreFactory, tmp_path: Path):
    """``open_store(mode, **kw)``: the streaming repo, embedded (sqlite) or on the test Redis
    (no worker running: a push drains its partitions inline)."""

    def make(mode: str, **kw: Any) -> cs.ContextStore:
        if mode == "embedded":
            return make_store(tmp_path / "repo", **kw)
        url = request.getfixturevalue("redis_url")
        ws = request.getfixturevalue("workspace_name")
        request.getfixturevalue("redis_cleanup").append(f"cs:{ws}:*")
        return make_store(tmp_path / "repo", online_store=url, workspace=ws, **kw)

    return make


def _accepted(rows: list[dict[str, Any]], res: Any) -> list[dict[str, Any]]:
    gone = {r.index for r in res.rejected}
    assert res.accepted == len(rows) - len(gone) and res.validated == len(rows)
    return [r for i, r in enumerate(rows) if i not in gone]


def _expected(store: cs.ContextStore, events: list[dict[str, Any]], user: str, t: datetime) -> dict[str, Any]:
    """Brute force over the accepted events (the views' transforms done by hand)."""
    defs = store.definitions
    evs = [{**e, "ts": datetime_to_us(e["ts"])} for e in events]
    doubled = [{**e, "doubled": e["amount"] * 2} for e in evs if e["amount"] is not None and e["amount"] >= 0]
    out = {}
    for view, rows in (("txn_stats", evs), ("big_spend", doubled)):
        for k, v in expected_view_row(defs.feature_views[view], rows, {"user_id": user}, datetime_to_us(t)).items():
            out[f"{view}.{k}"] = v
    return out


def assert_parity(store: cs.ContextStore, events: list[dict[str, Any]], times: list[datetime]) -> int:
    """online (get_features) == offline (get_training_data) == brute force, every feature."""
    users = sorted({e["user_id"] for e in events}) + ["nobody"]
    spine = pa.table(
        {"user_id": [u for _ in times for u in users], "timestamp": pa.array([t for t in times for _ in users], TS)}
    )
    svc = store.definitions.feature_service("fraud")
    checked = 0
    for row in store.get_training_data(spine, "fraud").to_pylist():
        u, t = row["user_id"], row["timestamp"]
        want = _expected(store, events, u, t)
        online = store.get_features("fraud", {"user_id": u}, request_time=t).feature_values
        for name, col in zip(svc.feature_names, svc.column_names, strict=True):
            assert values_match(online[name], want[name], rel=1e-9, scale=1e4), (
                "online",
                u,
                t,
                name,
                online[name],
                want[name],
            )
            assert values_match(row[col], want[name], rel=1e-9, scale=1e4), (
                "offline",
                u,
                t,
                name,
                row[col],
                want[name],
            )
            checked += 1
    return checked


def _nothing_written(store: cs.ContextStore) -> None:
    for table in ("src__transactions", "fv__txn_stats"):
        assert not store.offline.exists(table) or store.offline.count(table) == 0, table
    assert store.get_features("fraud", {"user_id": "u1"}).feature_values["txn_stats.amount_count_1d"] == 0


# -- bounds ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ("9999-12-31T00:00:00Z", "outside the supported time range"),
        ("2150-01-01T00:00:00Z", "max_future_skew (5m)"),
        ((NOW + timedelta(minutes=10)).isoformat(), "max_future_skew (5m)"),
        ("0001-01-01T00:00:00Z", "outside the supported time range"),
        ("1970-01-01T00:00:00Z", "min_event_time 2000-01-01T00:00:00Z"),
        (0, "min_event_time"),  # epoch 0 as a number: an unset field
    ],
)
def test_insane_event_times_are_refused_naming_index_and_field(open_store, mode: str, bad: Any, words: str) -> None:
    store = open_store(mode)
    rows = [event("u1", 10, 1.0), event("u1", 20, 2.0), {**event("u1", 30, 3.0), "ts": bad}]
    with pytest.raises(InvalidInputError) as ei:
        store.push("transactions", rows)
    assert ei.value.status == 400 and ei.value.field == "records[2].ts"
    assert "record 2" in str(ei.value) and words in str(ei.value), str(ei.value)
    _nothing_written(store)
    # Within the skew is fine (a producer's clock a little ahead).
    ok = {**event("u1", 0, 4.0), "ts": NOW + timedelta(minutes=2)}
    assert store.push("transactions", [ok]).accepted == 1


def test_bounds_are_configurable_per_source() -> None:
    schema = [cs.Field("user_id", cs.String), cs.Field("ts", cs.Timestamp)]
    old = {"user_id": "u", "ts": "1950-06-01T00:00:00Z"}
    ahead = {"user_id": "u", "ts": (datetime.now(UTC) + timedelta(minutes=50)).isoformat()}
    strict = cs.StreamSource("s", schema, "ts")
    for row in (old, ahead):
        with pytest.raises(InvalidInputError):
            validate_records(strict, [row])
    loose = cs.StreamSource("s", schema, "ts", max_future_skew="1h", min_event_time=None)
    assert validate_records(loose, [old, ahead]).num_rows == 2
    assert "max_future_skew_s" not in strict.spec() and loose.spec()["max_future_skew_s"] == 3600
    with pytest.raises(Exception, match="max_future_skew"):
        cs.StreamSource("s", schema, "ts", max_future_skew="soon")
    with pytest.raises(Exception, match="min_event_time"):
        cs.StreamSource("s", schema, "ts", min_event_time="2999-01-01")


@pytest.mark.parametrize("mode", MODES)
def test_a_far_future_push_cannot_freeze_a_partition(open_store, mode: str) -> None:
    """The observed failure: one 9999-12-31 event per partition, then every real event was
    answered visible but never counted. Now the bad push is refused, the watermark stays put,
    and the real events after it count."""
    store = open_store(mode, lateness="10m")
    users = [f"u{i}" for i in range(8)]
    for u in users:
        with pytest.raises(InvalidInputError):
            store.push("transactions", [{**event(u, 0, 1.0), "ts": "9999-12-31T00:00:00Z"}])
    assert all(s.watermark is None for s in store.stream_watermarks())
    base = NOW - timedelta(minutes=30)
    rows = [
        {"user_id": u, "ts": base + timedelta(minutes=i), "amount": float(i), "merchant": "m"}
        for i in range(20)
        for u in users
    ]
    for i in range(0, len(rows), 16):
        res = store.push("transactions", rows[i : i + 16])
        assert res.accepted == len(rows[i : i + 16]) and res.visible and not res.rejected
    cap = NOW + timedelta(minutes=6)
    assert all(s.watermark is not None and s.watermark < cap for s in store.stream_watermarks())
    assert assert_parity(store, rows, [NOW - timedelta(minutes=15), datetime.now(UTC)]) > 0


@pytest.mark.redis
def test_a_frozen_watermark_left_by_an_older_version_does_not_drop_events(
    make_store: StoreFactory, tmp_path: Path, redis_url: str, workspace_name: str, redis_cleanup: list[str]
) -> None:
    """A worker watermark stored as 9999-12-31 (before this fix): workers clamp it to now + skew
    and never drop what a push admitted, across a restart."""
    import redis as redis_py

    from context_store.compute.stream.worker import run_workers

    redis_cleanup.append(f"cs:{workspace_name}:*")
    store = make_store(tmp_path / "repo", online_store=redis_url, workspace=workspace_name, lateness="10m")
    r = redis_py.Redis.from_url(redis_url)
    far = datetime_to_us(datetime(9999, 12, 31, tzinfo=UTC))
    r.hset(f"cs:{workspace_name}:stream:watermark", mapping={f"transactions|{p}": far for p in range(4)})
    r.close()
    base = NOW - timedelta(minutes=20)
    rows = [
        {"user_id": f"u{i % 5}", "ts": base + timedelta(seconds=7 * i), "amount": 1.0 + i, "merchant": "m"}
        for i in range(60)
    ]
    for round_ in range(2):  # a worker, then a restarted one
        pool = run_workers(store.stream_context(), 1, flush_interval=0.05)
        try:
            chunk = rows[round_ * 30 : round_ * 30 + 30]
            for i in range(0, len(chunk), 10):
                res = store.push("transactions", chunk[i : i + 10], timeout=20)
                assert res.visible and res.accepted == 10
        finally:
            pool.stop()
    assert all(s.applied_watermark is None or s.applied_watermark.year < 9999 for s in store.stream_watermarks())
    assert assert_parity(store, rows, [NOW - timedelta(minutes=10), datetime.now(UTC)]) > 0


# -- late records ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_events_before_the_cutover_are_rejected_and_reported(open_store, mode: str) -> None:
    store = open_store(mode, partitions=1)
    record_cutover(store.config, "txn_stats", datetime_to_us(T0 + timedelta(minutes=60)))
    rows = [event("u1", 59, 1.0), event("u1", 60, 2.0), event("u2", 61, 4.0), event("u2", 30, 8.0)]
    res = store.push("transactions", rows)
    assert res.visible
    assert [(r.index, r.field, r.reason) for r in res.rejected] == [
        (0, "ts", "before_cutover"),
        (3, "ts", "before_cutover"),
    ]
    accepted = _accepted(rows, res)
    with pytest.raises(InvalidInputError) as ei:  # nothing left to accept: a 4xx naming the first
        store.push("transactions", [event("u3", 10, 1.0)])
    assert ei.value.field == "records[0].ts" and "cut-over" in str(ei.value)
    assert store.offline.count("src__transactions") == 2  # rejected records are written nowhere
    assert assert_parity(store, accepted, [T0 + timedelta(minutes=m) for m in (61, 62, 120)]) > 0
    rejected = {s.source: s.rejected for s in store.stream_watermarks()}
    assert rejected == {"transactions": 3}


@pytest.mark.parametrize("mode", MODES)
def test_out_of_order_events_within_lateness_all_count(open_store, mode: str) -> None:
    store = open_store(mode, lateness="1h")
    rng = random.Random(5)
    rows = [
        event(f"u{rng.randrange(4)}", rng.uniform(0, 55), float(rng.randrange(-5, 50)), f"m{rng.randrange(4)}")
        for _ in range(120)
    ]
    rng.shuffle(rows)
    late = 0
    for i in range(0, len(rows), 9):
        res = store.push("transactions", rows[i : i + 9])
        assert res.visible and res.accepted == len(rows[i : i + 9]) and not res.rejected
        late += res.late
    assert late > 0  # the shuffle did deliver out of order
    assert sum(s.late for s in store.stream_watermarks()) == late
    times = [T0 + timedelta(minutes=m) for m in (10, 30, 56, 70)]
    assert assert_parity(store, rows, times) > 0


@pytest.mark.parametrize("mode", MODES)
def test_events_beyond_lateness_are_rejected_and_reported(open_store, mode: str) -> None:
    store = open_store(mode, lateness="30m", partitions=1)
    first = [event("u1", 120, 1.0)]
    assert store.push("transactions", first).accepted == 1
    # 100: 20 min late (counts); 30: 90 min late; 125 moves the watermark; 80: 45 min behind 125.
    rows = [event("u1", 100, 2.0), event("u2", 30, 4.0), event("u2", 125, 8.0), event("u1", 80, 16.0)]
    res = store.push("transactions", rows)
    assert res.visible and res.late == 1
    assert [(r.index, r.reason) for r in res.rejected] == [(1, "too_late"), (3, "too_late")]
    assert "watermark" in res.rejected[1].message and "allowed_lateness (30m)" in res.rejected[1].message
    body = res.to_dict()
    assert body["rejected"][0] == {"index": 1, "field": "ts", "reason": "too_late", "message": res.rejected[0].message}
    accepted = first + _accepted(rows, res)
    with pytest.raises(InvalidInputError) as ei:
        store.push("transactions", [event("u3", 20, 1.0), event("u3", 21, 1.0)])
    assert ei.value.status == 400 and ei.value.field == "records[0].ts" and "every record was rejected" in str(ei.value)
    assert store.offline.count("src__transactions") == len(accepted)
    assert store.offline.count("fv__txn_stats") == len(accepted)
    times = [T0 + timedelta(minutes=m) for m in (90, 121, 126, 200)]
    assert assert_parity(store, accepted, times) > 0
    (wm,) = store.stream_watermarks()
    assert wm.rejected == 4 and wm.late == 1 and wm.watermark == T0 + timedelta(minutes=125)


@pytest.mark.redis
def test_concurrent_pushers_agree_with_the_stream_order(
    make_store: StoreFactory, tmp_path: Path, redis_url: str, workspace_name: str, redis_cleanup: list[str]
) -> None:
    """Four pushers (own ContextStores, own watermark caches) race out-of-order events into two
    partitions: every record the push script admitted was within lateness of the stream-order
    watermark (re-derived from the offline log by offset), and online == offline == brute force."""
    redis_cleanup.append(f"cs:{workspace_name}:*")
    store = make_store(
        tmp_path / "repo", online_store=redis_url, workspace=workspace_name, lateness="20m", partitions=2
    )
    accepted: list[dict[str, Any]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def pusher(seed: int) -> None:
        rng = random.Random(seed)
        s = cs.ContextStore(store.config.repo, workspace=workspace_name, online_store=redis_url)
        try:
            for k in range(25):
                rows = [
                    event(f"u{rng.randrange(6)}", k * 3 + rng.uniform(-40, 5), 1.0 + rng.randrange(9), "m")
                    for _ in range(4)
                ]
                try:
                    res = s.push("transactions", rows, timeout=20)
                except InvalidInputError as e:
                    assert "every record was rejected" in str(e)
                    continue
                with lock:
                    accepted.extend(_accepted(rows, res))
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)
        finally:
            s.close()

    from context_store.compute.stream.worker import run_workers

    pool = run_workers(store.stream_context(), 2, flush_interval=0.05)
    try:
        threads = [threading.Thread(target=pusher, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        pool.stop()  # flushes the offline log
    assert not errors, errors
    src = store.offline.read("src__transactions").sort_by([("_partition", "ascending"), ("_offset", "ascending")])
    lateness = 20 * 60 * 1_000_000
    for p in (0, 1):
        ts = [datetime_to_us(r["ts"]) for r in src.to_pylist() if r["_partition"] == p]
        top = None
        for t in ts:  # admitted against the watermark of everything before it in the stream
            assert top is None or t >= top - lateness
            top = t if top is None else max(top, t)
    assert src.num_rows == len(accepted) > 0
    assert sum(s.rejected for s in store.stream_watermarks()) == 4 * 25 * 4 - len(accepted)
    assert assert_parity(store, accepted, [T0 + timedelta(minutes=m) for m in (30, 60, 80)]) > 0


def test_push_results_over_rest(make_store: StoreFactory, tmp_path: Path) -> None:
    """The REST ingest answers the rejected records (partial) and a 400 naming the field (all)."""
    import httpx

    from context_store.server import create_app
    from tests.support.server import running_server

    store = make_store(tmp_path / "repo", lateness="30m")
    store.push("transactions", [event("u1", 120, 1.0)])

    def rec(minutes: float) -> dict[str, Any]:
        return {"record": {**event("u1", minutes, 1.0), "ts": (T0 + timedelta(minutes=minutes)).isoformat()}}

    app = create_app(store.config.repo, auth=False, mcp=False)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        r = http.post("/v1/ingest", json={"records": {"transactions": [rec(121), rec(10)]}})
        assert r.status_code == 200, r.text
        m = r.json()["ingestMetrics"]["transactions"]
        assert m["accepted"] == 1 and m["visible"] is True
        assert [(x["index"], x["field"], x["reason"]) for x in m["rejected"]] == [(1, "ts", "too_late")]
        r = http.post("/v1/ingest", json={"records": {"transactions": [rec(10)]}})
        assert r.status_code == 400 and r.json()["field"] == "records[0].ts", r.text
        far = {"record": {**rec(1)["record"], "ts": "9999-12-31T00:00:00Z"}}
        r = http.post("/v1/ingest", json={"records": {"transactions": [rec(122), far]}})
        assert r.status_code == 400 and r.json()["field"] == "records[1].ts", r.text
    assert store.offline.count("src__transactions") == 2


@pytest.mark.redis
def test_a_stale_pusher_is_corrected_by_the_push_script(
    make_store: StoreFactory,
    tmp_path: Path,
    redis_url: str,
    workspace_name: str,
    redis_cleanup: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pusher A decided on the watermark it last saw; B moved it meanwhile: A's script call
    conflicts, writes nothing, and A decides again on the true watermark."""
    from context_store.compute.stream import redis_streams

    redis_cleanup.append(f"cs:{workspace_name}:*")
    a = make_store(tmp_path / "repo", online_store=redis_url, workspace=workspace_name, lateness="30m", partitions=1)
    b = cs.ContextStore(a.config.repo, workspace=workspace_name, online_store=redis_url)
    conflicts = []
    add = redis_streams.RedisStreamLog.add_once

    def counting_add(self: Any, *args: Any, **kw: Any) -> Any:
        try:
            return add(self, *args, **kw)
        except redis_streams.WatermarkConflict as e:
            conflicts.append(e.current)
            raise

    try:
        assert a.push("transactions", [event("u1", 120, 1.0)]).accepted == 1  # A's cache: 120
        # B's push is durable at once (A's inline drain owns the partition and applies it next).
        assert b.push("transactions", [event("u2", 200, 2.0)], wait=False).accepted == 1  # the true one: 200
        monkeypatch.setattr(redis_streams.RedisStreamLog, "add_once", counting_add)  # counts, then does the real call
        with pytest.raises(InvalidInputError, match="too late"):
            a.push("transactions", [event("u1", 100, 4.0)])  # on time for 120, not for 200
        assert conflicts == [{0: datetime_to_us(T0 + timedelta(minutes=200))}]
        res = a.push("transactions", [event("u1", 180, 8.0)])  # A knows 200 now: no conflict
        assert res.accepted == 1 and res.late == 1 and len(conflicts) == 1
    finally:
        b.close()
    rows = [event("u1", 120, 1.0), event("u2", 200, 2.0), event("u1", 180, 8.0)]
    assert assert_parity(a, rows, [T0 + timedelta(minutes=m) for m in (150, 190, 230)]) > 0
