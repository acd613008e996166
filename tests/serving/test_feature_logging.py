"""Feature logging: served vectors land in ``log__{service}`` off the request path -- complete, equal to
what was served, sampled deterministically, bounded (drops counted, never blocking), flushed on a clean
shutdown -- and the skew report compares them with a point-in-time recomputation."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import context_store as cs
from context_store.errors import DefinitionError, InvalidInputError
from context_store.serving.feature_log import LogContext, sampled
from tests.support.repo import make_repo
from tests.support.server import make_server_repo, running_server

NOW = datetime.now(UTC).replace(microsecond=0)

DEFS = """
import context_store as cs
user = cs.Entity("user", join_keys=["user_id"])
txns = cs.FileSource("data/txns.parquet", timestamp_field="ts")
profiles = cs.FileSource("data/profiles.parquet", timestamp_field="ts")
txn_stats = cs.FeatureView("txn_stats", [user], txns, aggregations=[
    cs.Aggregate("amount", "sum", "1h"), cs.Aggregate("amount", "count", "1d"),
    cs.Aggregate("amount", "mean", "7d"), cs.Aggregate("merchant_id", "last_distinct_n", "1d", n=2)])
user_profile = cs.FeatureView("user_profile", [user], profiles,
    features=[cs.Field("age", cs.Int64), cs.Field("city", cs.String)], ttl="3d")
req = cs.RequestSource([cs.Field("amount", cs.Float64)])

@cs.realtime_feature_view(sources=[req, txn_stats[["amount_mean_7d"]]], output=[cs.Field("ratio", cs.Float64)])
def amount_ratio(r, s):
    m = s["amount_mean_7d"]
    return {"ratio": r["amount"] / m if m else None}

fraud = cs.FeatureService("fraud", [user_profile[["city", "age"]], txn_stats, amount_ratio],
    logging=cs.LoggingConfig(sample_rate=1.0))
sampled = cs.FeatureService("sampled", [txn_stats[["amount_count_1d"]]], logging=cs.LoggingConfig(sample_rate=0.1))
plain = cs.FeatureService("plain", [txn_stats[["amount_count_1d"]]])
"""

FRAUD_COLUMNS = [
    "user_profile__city",
    "user_profile__age",
    "txn_stats__amount_sum_1h",
    "txn_stats__amount_count_1d",
    "txn_stats__amount_mean_7d",
    "txn_stats__merchant_id_last_distinct_2_1d",
    "amount_ratio__ratio",
]


def _profiles(ages: list[int]) -> pa.Table:
    ts = [NOW - timedelta(days=1), NOW - timedelta(hours=2), NOW - timedelta(days=10)]
    return pa.table(
        {
            "user_id": ["u1", "u2", "u3"],
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "age": ages,
            "city": ["Paris", None, "Rome"],
        }
    )


def _data() -> dict[str, pa.Table]:
    ts = [NOW - timedelta(minutes=m) for m in (5, 20, 90, 60 * 30, 60 * 156)]
    txns = pa.table(
        {
            "user_id": ["u1", "u1", "u1", "u1", "u2"],
            "merchant_id": [10, 11, 10, 12, 10],
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "amount": [10.0, 20.0, 30.0, 40.0, 5.0],
        }
    )
    return {"txns.parquet": txns, "profiles.parquet": _profiles([31, 42, 50])}


@pytest.fixture(params=["sqlite", "redis"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A repo applied, backfilled and materialized; kwargs to open more stores on it (a fresh workspace)."""
    kw: dict[str, Any] = {"workspace": "t" + uuid.uuid4().hex[:10]}
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        request.getfixturevalue("redis_cleanup").append(f"cs:{kw['workspace']}:*")
        kw["online_store"] = url
    root = make_repo(tmp_path / "repo", DEFS, _data())
    with cs.ContextStore(root, **kw) as s:
        s.apply()
        s.backfill()
        s.materialize()
    return root, kw


def _serve(store: cs.ContextStore, n: int) -> list[tuple[str, cs.FeatureVector]]:
    served = []
    users = ["u1", "u2", "u3", "nobody"]
    for i in range(n):
        rid = f"req-{i}"
        fv = store.get_features(
            "fraud", {"user_id": users[i % 4]}, {"amount": float(i + 1)}, log_context=LogContext(rid, "k1")
        )
        served.append((rid, fv))
    return served


def test_every_served_vector_is_logged_with_what_was_served(repo: tuple[Path, dict[str, Any]]) -> None:
    root, kw = repo
    with cs.ContextStore(root, **kw) as store:
        served = _serve(store, 40)
        batch = store.get_features_batch("fraud", [{"user_id": "u1"}, {"user_id": "u2"}], {"amount": 2.0})
        store.get_features("plain", {"user_id": "u1"})  # not logged
    with cs.ContextStore(root, **kw) as reader:  # another process's view: what reached the offline store
        logged = reader.get_logged_features("fraud")
        assert logged.num_rows == 42
        rows = {r["request_id"]: r for r in logged.to_pylist()}
        for rid, fv in served:
            row = rows[rid]
            assert row["user_id"] == fv.join_keys["user_id"] and row["key_id"] == "k1"
            assert row["workspace"] == kw["workspace"]
            assert row["request_time"] == fv.request_time
            assert row["request_context"] == '{"amount":' + repr(float(rid.split("-")[1]) + 1) + "}"
            for col, (name, value), meta in zip(FRAUD_COLUMNS, fv.feature_values.items(), fv.metadata):
                assert row[col] == pytest.approx(value) if isinstance(value, float) else row[col] == value, name
                assert row[f"{col}__status"] == meta.status
        batch_rows = sorted((r for r in rows.values() if r["key_id"] is None), key=lambda r: r["request_id"])
        assert [r["user_id"] for r in batch_rows] == ["u1", "u2"]
        assert [r["request_id"].rsplit(":", 1)[1] for r in batch_rows] == ["0", "1"]
        assert batch_rows[0]["txn_stats__amount_count_1d"] == batch[0].feature_values["txn_stats.amount_count_1d"]
        assert {r["user_profile__age__status"] for r in rows.values()} == {"PRESENT", "MISSING_DATA"}
        # the log is typed like the training data
        schema = logged.schema
        assert schema.field("user_profile__age").type == pa.int64()
        assert schema.field("txn_stats__merchant_id_last_distinct_2_1d").type == pa.list_(pa.int64())
        assert schema.field("request_time").type == pa.timestamp("us", tz="UTC")
        # filters: one entity, a time range
        u1 = reader.get_logged_features("fraud", join_keys={"user_id": "u1"})
        assert u1.num_rows == 11 and set(u1.column("user_id").to_pylist()) == {"u1"}
        assert reader.get_logged_features("fraud", start=NOW + timedelta(days=1)).num_rows == 0
        assert reader.get_logged_features("fraud", end=datetime.now(UTC) + timedelta(seconds=1)).num_rows == 42
        with pytest.raises(InvalidInputError) as e:
            reader.get_logged_features("plain")
        assert e.value.field == "feature_service"
        with pytest.raises(InvalidInputError) as e:
            reader.get_logged_features("fraud", join_keys={"merchant_id": 1})
        assert e.value.field == "join_keys.merchant_id"


def test_forget_erases_logged_vectors_including_queued_ones(repo: tuple[Path, dict[str, Any]]) -> None:
    root, kw = repo
    with cs.ContextStore(root, **kw) as store:
        _serve(store, 8)
        store.flush_feature_log()
        assert store._feature_log is not None
        store._feature_log.pause()
        _serve(store, 8)  # still queued when the forget runs
        store.forget({"user_id": "u1"})
    with cs.ContextStore(root, **kw) as reader:
        users = reader.get_logged_features("fraud").column("user_id").to_pylist()
    assert len(users) == 12 and "u1" not in users


def test_sampling_is_deterministic_by_request_id(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "repo", DEFS, _data())
    with cs.ContextStore(root) as store:
        store.apply()
        store.backfill()
        store.materialize()
        for i in range(1000):
            store.get_features("sampled", {"user_id": "u1"}, log_context=LogContext(f"r{i}"))
        logged = store.get_logged_features("sampled")
    expected = {f"r{i}" for i in range(1000) if sampled(f"r{i}", int(0.1 * 2**32))}
    assert set(logged.column("request_id").to_pylist()) == expected
    assert 60 <= len(expected) <= 140  # about 10%


def test_full_queue_drops_counted_and_never_blocks(repo: tuple[Path, dict[str, Any]]) -> None:
    root, kw = repo
    with cs.ContextStore(root, **kw) as store:
        store.get_features("fraud", {"user_id": "u1"}, {"amount": 1.0})  # opens the writer
        writer = store._feature_log
        assert writer is not None
        writer.flush()
        writer.pause()  # nothing drains in the background: the queue only fills
        writer.max_queue = 5
        slowest = 0.0
        for i in range(25):
            t0 = time.perf_counter()
            store.get_features("fraud", {"user_id": "u1"}, {"amount": 1.0}, log_context=LogContext(f"q{i}"))
            slowest = max(slowest, time.perf_counter() - t0)
        stats = store.feature_log_stats()
        assert stats["dropped"] == 20 and stats["queued"] == 5
        assert slowest < 0.5  # a full queue costs the request nothing
    with cs.ContextStore(root, **kw) as reader:
        ids = reader.get_logged_features("fraud").column("request_id").to_pylist()
        assert sorted(i for i in ids if i.startswith("q")) == [f"q{i}" for i in range(5)]  # accepted ones: written


def test_clean_shutdown_flushes_everything_accepted(repo: tuple[Path, dict[str, Any]]) -> None:
    root, kw = repo
    store = cs.ContextStore(root, **kw)
    store.get_features("fraud", {"user_id": "u1"}, {"amount": 1.0})
    assert store._feature_log is not None
    store._feature_log.pause()
    _serve(store, 30)
    assert store.feature_log_stats()["queued"] >= 30
    store.close()
    with cs.ContextStore(root, **kw) as reader:
        assert reader.get_logged_features("fraud").num_rows == 31


def test_interpreter_exit_without_close_flushes(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "repo", DEFS, _data())
    with cs.ContextStore(root) as s:
        s.apply()
        s.backfill()
        s.materialize()
    script = (
        "import context_store as cs\n"
        f"s = cs.ContextStore({str(root)!r})\n"
        "for i in range(20):\n"
        "    s.get_features('fraud', {'user_id': 'u1'}, {'amount': 1.0})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)
    with cs.ContextStore(root) as reader:
        assert reader.get_logged_features("fraud").num_rows == 20


def test_skew_report_matches_then_flags_changed_data(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "repo", DEFS, _data())
    with cs.ContextStore(root) as store:
        store.apply()
        store.backfill()
        store.materialize()
        _serve(store, 12)
        report = store.logged_feature_skew("fraud")
        assert report.rows == 12
        assert {f.feature: f.match_rate for f in report.features} == dict.fromkeys(FRAUD_COLUMNS, 1.0)
        assert report.match_rate == 1.0
        # The offline history changes (a corrected source): served ages no longer match a recomputation.
        pq.write_table(_profiles([35, 42, 50]), root / "data" / "profiles.parquet")
        store.backfill(views=["user_profile"])
        after = {f.feature: f for f in store.logged_feature_skew("fraud").features}
        age = after["user_profile__age"]
        assert age.compared == 12 and age.matches == 9  # u1's 3 rows differ (u2 unchanged, u3/nobody null)
        assert age.mean_abs_diff == pytest.approx(2.0)  # over the 6 numeric pairs: u1 off by 4, u2 by 0
        assert after["txn_stats__amount_sum_1h"].match_rate == 1.0
        assert after["user_profile__city"].mean_abs_diff is None


def test_a_service_gaining_a_feature_keeps_its_earlier_log(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "repo", DEFS.replace("sample_rate=0.1", "sample_rate=1.0"), _data())
    with cs.ContextStore(root) as store:
        store.apply()
        store.backfill()
        store.materialize()
        store.get_features("sampled", {"user_id": "u1"}, log_context=LogContext("before"))
    text = (root / "features.py").read_text()
    (root / "features.py").write_text(
        text.replace(
            '[txn_stats[["amount_count_1d"]]], logging', '[txn_stats[["amount_count_1d", "amount_sum_1h"]]], logging'
        )
    )
    with cs.ContextStore(root) as store:
        store.apply()
        store.get_features("sampled", {"user_id": "u1"}, log_context=LogContext("after"))
        rows = {r["request_id"]: r for r in store.get_logged_features("sampled").to_pylist()}
    assert rows["before"]["txn_stats__amount_count_1d"] == 3 and rows["before"]["txn_stats__amount_sum_1h"] is None
    assert rows["after"]["txn_stats__amount_count_1d"] == 3 and rows["after"]["txn_stats__amount_sum_1h"] == 30.0


def test_logging_config_is_validated_and_planned(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="sample_rate"):
        cs.LoggingConfig(sample_rate=0)
    with pytest.raises(DefinitionError, match="sample_rate"):
        cs.LoggingConfig(sample_rate=1.5)
    with pytest.raises(DefinitionError, match="logging"):
        cs.FeatureService("x", [], logging=True)  # type: ignore[arg-type]
    root = make_repo(tmp_path / "repo", DEFS, _data())
    with cs.ContextStore(root) as store:
        store.apply()
        text = (root / "features.py").read_text()
        (root / "features.py").write_text(
            text.replace('"amount_count_1d"]]])', '"amount_count_1d"]]], logging=cs.LoggingConfig(0.5))')
        )
        changes = {c.name: c for c in store.plan().changes}
        assert set(changes) == {"plain"}
        assert [d.path for d in changes["plain"].diffs] == ["logging.sample_rate"]
        assert not changes["plain"].breaking
        (root / "features.py").write_text(text.replace('join_keys=["user_id"]', 'join_keys=["key_id"]'))
        with pytest.raises(DefinitionError, match="column of the feature log"):
            store.plan()


@pytest.mark.redis
def test_rest_get_features_logs_key_id(tmp_path: Path, redis_url: str, redis_cleanup: list[str]) -> None:
    from context_store.server.app import create_app
    from context_store.server.keys import KeyStore, key_store_path

    ws = "l" + uuid.uuid4().hex[:10]
    redis_cleanup.append(f"cs:{ws}:*")
    repo = make_server_repo(tmp_path / "repo", redis_url, ws)
    defs = (repo / "features.py").read_text()
    (repo / "features.py").write_text(defs.replace("[txn_stats])\n", "[txn_stats], logging=cs.LoggingConfig())\n", 1))
    assert "LoggingConfig" in (repo / "features.py").read_text()
    with cs.ContextStore(repo) as store:
        store.apply()
    keys = KeyStore(key_store_path(cs.ContextStore(repo).config.data_dir))
    key, record = keys.create(ws, "read")
    app = create_app(repo, key_store=keys, mcp=False)
    h = {"authorization": f"Bearer {key}"}
    url_path = "/api/v1/feature-service/"
    with running_server(app) as url:
        for u in ("u1", "u2", "u3"):
            params = {"workspaceName": ws, "featureServiceName": "user_features", "joinKeyMap": {"user_id": u}}
            body = {"params": params}
            r = httpx.post(url + url_path + "get-features", json=body, headers=h, timeout=30)
            assert r.status_code == 200, r.text
        body = {
            "params": {
                "workspaceName": ws,
                "featureServiceName": "user_features",
                "requestData": [{"joinKeyMap": {"user_id": "b1"}}, {"joinKeyMap": {"user_id": "b2"}}],
            }
        }
        r = httpx.post(url + url_path + "get-features-batch", json=body, headers=h, timeout=30)
        assert r.status_code == 200, r.text
    # the server stopped (lifespan shutdown): everything it accepted is in the offline store
    with cs.ContextStore(repo) as reader:
        logged = reader.get_logged_features("user_features")
    assert sorted(logged.column("user_id").to_pylist()) == ["b1", "b2", "u1", "u2", "u3"]
    assert set(logged.column("key_id").to_pylist()) == {record.key_id}
    assert len(set(logged.column("request_id").to_pylist())) == 5
    assert set(logged.column("txn_stats__amount_count_1h__status").to_pylist()) <= {"MISSING_DATA", "PRESENT"}
