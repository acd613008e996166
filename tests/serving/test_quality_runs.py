"""Data quality end to end: runs stored at backfill, materialize and on sampled stream batches;
``context-store validate`` as a CI gate; drift (PSI); metrics and ``GET /v1/status/quality``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

import context_store as cs
from context_store.cli.main import cli
from context_store.compute.quality_stream import stream_quality
from context_store.server.app import create_app
from tests.support.repo import make_repo

DEFS = """
import context_store as cs

user = cs.Entity("user", join_keys=["user_id"])
profiles = cs.FileSource("data/profiles.parquet", timestamp_field="ts")
profile = cs.FeatureView(
    "profile",
    entities=[user],
    source=profiles,
    features=[cs.Field("amount", cs.Float64), cs.Field("country", cs.String)],
    expectations=[
        cs.Expect.not_null("amount", ratio=0.9),
        cs.Expect.range("amount", 0, 1000),
        cs.Expect.allowed("country", ["US", "DE"]),
    ],
)
events = cs.StreamSource(
    "events",
    schema=[cs.Field("user_id", cs.String), cs.Field("ts", cs.Timestamp), cs.Field("amount", cs.Float64)],
    timestamp_field="ts",
)
spend = cs.FeatureView(
    "spend",
    entities=[user],
    source=events,
    aggregations=[cs.Aggregate("amount", "sum", "1d")],
    expectations=[cs.Expect.range("amount", min=0)],
)
svc = cs.FeatureService("svc", [profile])
"""

NOW = datetime.now(UTC).replace(microsecond=0)


def _profiles(n: int = 400, shift: float = 0.0, bad: int = 0) -> pa.Table:
    rng = np.random.default_rng(7)
    amount = rng.uniform(0, 100, n) + shift
    amount[:bad] = 5000.0  # out of range
    return pa.table(
        {
            "user_id": [f"u{i}" for i in range(n)],
            "ts": pa.array([NOW - timedelta(hours=1, seconds=i) for i in range(n)], pa.timestamp("us", tz="UTC")),
            "amount": amount,
            "country": ["US" if i % 3 else "DE" for i in range(n)],
        }
    )


def _store(root: Path, workspace: str, data: pa.Table | None = None) -> cs.ContextStore:
    make_repo(root, DEFS, data={"profiles.parquet": data if data is not None else _profiles()})
    store = cs.ContextStore(root, workspace=workspace, online_store="sqlite")
    store.apply(force=True)
    return store


def test_backfill_and_materialize_store_runs_and_validate_gates(tmp_path: Path, workspace_name: str) -> None:
    root = tmp_path / "repo"
    with _store(root, workspace_name) as store:
        report = store.backfill(views=["profile"])
        assert report is not None and [r.passed for r in report.quality] == [True]
        m = store.materialize(views=["profile"])
        assert [(r.view, r.stage, r.passed) for r in m.quality] == [("profile", "materialize", True)]
        runs = store.quality_runs(view="profile")
        assert [r.stage for r in runs] == ["materialize", "backfill"]  # newest first
        assert {(x.expectation.kind, x.expectation.feature) for x in runs[0].results} == {
            ("not_null", "amount"),
            ("range", "amount"),
            ("allowed", "country"),
        }
    runner = CliRunner()
    res = runner.invoke(cli, ["validate", "--repo", str(root), "--workspace", workspace_name])
    assert res.exit_code == 0, res.output
    assert "ok: 3 expectations on 1 views passed" in res.output

    make_repo(root, DEFS, data={"profiles.parquet": _profiles(bad=8)})  # 8 of 400 rows out of range
    with cs.ContextStore(root, workspace=workspace_name, online_store="sqlite") as store:
        report = store.backfill(views=["profile"])
        assert report is not None and not report.quality[0].passed and "profile: quality FAILED" in str(report)
        latest = store.quality_runs(view="profile", stage="backfill", limit=1)[0]
        failed = [r for r in latest.results if not r.passed]
        assert [(r.expectation.kind, r.observed["above"]) for r in failed] == [("range", 8)]
    res = runner.invoke(cli, ["validate", "--repo", str(root), "--workspace", workspace_name])
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("FAIL")]
    assert len(lines) == 1 and lines[0].startswith(
        "FAIL profile.amount range(amount, 0..1000): observed ratio=0.98 below=0 above=8 rows=400 min="
    ), res.output
    assert lines[0].endswith("max=5000.0")
    res = runner.invoke(cli, ["validate", "--repo", str(root), "-w", workspace_name, "--view", "spend", "--json"])
    assert res.exit_code == 0 and '"runs": []' in res.output  # a stream nobody pushed to: nothing to check


def test_stream_sampling_counts_a_bad_event(
    tmp_path: Path, workspace_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONTEXT_STORE_QUALITY_SAMPLE_EVERY", "1")  # every batch (default: 1 in 20)
    with _store(tmp_path / "repo", workspace_name) as store:
        store.push("events", [{"user_id": "u1", "ts": NOW, "amount": 5.0}])
        assert store.quality_metrics().failures.get(("spend", "range(amount)"), 0) == 0
        store.push("events", [{"user_id": "u1", "ts": NOW, "amount": -5.0}])
        assert store.quality_metrics().failures[("spend", "range(amount)")] == 1  # sampled, not flushed yet
        (run,) = stream_quality(store.config, store.offline).flush()
        assert run.stage == "stream" and not run.passed
        (stored,) = store.quality_runs(stage="stream")
        obs = stored.results[0].observed
        assert obs["sampled_batches"] == 2 and obs["failed_batches"] == 1 and obs["last"]["below"] == 1
        m = store.quality_metrics()
        assert m.failures[("spend", "range(amount)")] == 1  # moved from in-process to stored: counted once
        assert m.last_passed[("spend", "stream")] is False


def test_drift_is_near_zero_for_the_same_data_and_large_when_shifted(tmp_path: Path, workspace_name: str) -> None:
    with _store(tmp_path / "repo", workspace_name) as store:
        store.backfill(views=["profile"])
        store.materialize(views=["profile"])
        same = store.drift_report("profile")
        assert {f.feature for f in same.features} == {"amount", "country"}
        assert all(f.psi is not None and f.psi < 0.02 and f.level == "none" for f in same.features), same.to_dict()
        shifted = _profiles(shift=60.0).set_column(3, "country", pa.array(["DE"] * 400))
        drift = store.drift_report("profile", reference=shifted)
        by = {f.feature: f for f in drift.features}
        assert by["amount"].psi is not None and by["amount"].psi > 1.0 and by["amount"].level == "major"
        assert by["country"].psi is not None and by["country"].psi > 0.25
        svc = store.drift_report("svc")  # no feature log: the latest materializations
        assert svc.served == "latest materializations" and max(f.psi or 0 for f in svc.features) < 0.02
        # Served vectors logged by feature logging (log__{service}, columns view__feature): they are used.
        store.offline.append("log__svc", pa.table({"profile__amount": _profiles(shift=300.0).column("amount")}))
        logged = store.drift_report("svc")
        by = {f.feature: f for f in logged.features}
        assert logged.served == "log__svc" and by["profile__amount"].level == "major"
        assert by["profile__country"].psi is None and by["profile__country"].note == "nothing served yet"
        with pytest.raises(cs.NotFoundError, match="no feature view or feature service 'nope'"):
            store.drift_report("nope")


def test_status_route_and_metrics(tmp_path: Path, workspace_name: str) -> None:
    root = tmp_path / "repo"
    with _store(root, workspace_name, _profiles(bad=8)) as store:
        store.backfill(views=["profile"])
    app = create_app(root, workspace=workspace_name, auth=False, mcp=False, allowed_hosts=("testserver",))
    with TestClient(app) as client:
        r = client.get("/v1/status/quality")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["workspace"] == workspace_name and len(body["runs"]) == 1
        run = body["runs"][0]
        assert set(run) == {"run_id", "view", "stage", "at", "passed", "results"}
        assert run["view"] == "profile" and run["stage"] == "backfill" and run["passed"] is False
        assert run["at"].endswith("Z")
        res = {x["expectation"]: x for x in run["results"]}
        assert set(res["range"]) == {"expectation", "feature", "passed", "observed"}
        assert res["range"]["feature"] == "amount" and res["range"]["observed"]["above"] == 8
        assert client.get("/v1/status/quality?stage=materialize").json()["runs"] == []
        bad = client.get("/v1/status/quality?bogus=1")
        assert bad.status_code == 400 and "bogus" in bad.text
        assert client.get("/v1/status/quality?stage=nope").status_code == 400
        text = client.get("/metrics").text
        ws = workspace_name
        failures = f'expectation="range(amount)",view="profile",workspace="{ws}"'
        assert f"context_store_quality_failures_total{{{failures}}} 1.0" in text
        assert f'context_store_quality_last_run_passed{{stage="backfill",view="profile",workspace="{ws}"}} 0.0' in text
