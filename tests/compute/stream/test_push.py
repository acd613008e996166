"""Push ingest: validation (all or nothing, errors naming record and field), embedded apply,
read-after-write, late events, the CLI command."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from click.testing import CliRunner

from context_store.compute.stream.cutover import get_cutover, record_cutover
from context_store.compute.stream.stats import STATS
from context_store.compute.stream.validate import parse_timestamp_us
from context_store.errors import InvalidInputError, NotFoundError
from tests.support.stream import T0, StoreFactory, event, events_table

T_REQ = T0 + timedelta(hours=3)


def _count(store, user: str, t: datetime = T_REQ) -> int:
    fv = store.get_features("fraud", {"user_id": user}, request_time=t)
    return fv.feature_values["txn_stats.amount_count_1d"]


def _offline_rows(store, table: str) -> int:
    return store.offline.count(table) if store.offline.exists(table) else 0


@pytest.fixture
def store(tmp_path: Path, make_store: StoreFactory):
    s = make_store(tmp_path / "repo")
    yield s
    s.close()


# -- validation -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("record", "field", "reason"),
    [
        ({"user_id": "u1", "ts": "2026-01-01T00:00:00Z", "amount": "twelve"}, "records[2].amount", "float64"),
        ({"user_id": "u1", "amount": 1.0}, "records[2].ts", "required"),
        ({"ts": "2026-01-01T00:00:00Z", "amount": 1.0}, "records[2].user_id", "required"),
        ({"user_id": "u1", "ts": "yesterday-ish", "amount": 1.0}, "records[2].ts", "ISO-8601"),
        (
            {"user_id": "u1", "ts": "2026-01-01T00:00:00Z", "amount": 1.0, "colour": "red"},
            "records[2].colour",
            "schema",
        ),
        ({"user_id": 7, "ts": "2026-01-01T00:00:00Z", "amount": 1.0}, "records[2].user_id", "string"),
        ({"user_id": "u1", "ts": True, "amount": 1.0}, "records[2].ts", "bool"),
    ],
)
def test_bad_record_is_rejected_with_index_and_field_and_nothing_applied(store, record, field, reason) -> None:
    good = [event("u1", 10, 5.0), event("u1", 20, 6.0)]
    with pytest.raises(InvalidInputError) as ei:
        store.push("transactions", [*good, record, event("u1", 30, 1.0)])
    assert ei.value.field == field
    assert "record 2" in str(ei.value) and reason in str(ei.value)
    # All or nothing: the two good records before the bad one were not applied anywhere.
    assert _count(store, "u1") == 0
    assert _offline_rows(store, "src__transactions") == 0
    assert _offline_rows(store, "fv__txn_stats") == 0


def test_unknown_source_and_non_stream_source(store) -> None:
    with pytest.raises(NotFoundError) as ei:
        store.push("nope", [event("u1", 1, 1.0)])
    assert ei.value.field == "source" and "transactions" in str(ei.value)
    with pytest.raises(NotFoundError, match="not a stream source"):
        store.push("src_txns", [event("u1", 1, 1.0)])


def test_records_must_be_a_list(store) -> None:
    with pytest.raises(InvalidInputError) as ei:
        store.push("transactions", {"user_id": "u1"})
    assert ei.value.field == "records"
    with pytest.raises(InvalidInputError) as ei:
        store.push("transactions", [event("u1", 1, 1.0), "not a record"])
    assert ei.value.field == "records[1]"


@pytest.mark.parametrize("timeout", [0, -1, 301, "5", None, True, float("nan")])
def test_bad_timeout_is_rejected_before_anything_is_written(store, timeout) -> None:
    with pytest.raises(InvalidInputError, match="timeout") as ei:
        store.push("transactions", [event("u1", 1, 1.0)], timeout=timeout)
    assert ei.value.field == "timeout"
    assert store.offline.exists("src__transactions") is False or store.offline.count("src__transactions") == 0


def test_timestamp_forms() -> None:
    want = parse_timestamp_us(datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC))
    assert parse_timestamp_us("2026-01-01T00:00:01Z") == want
    assert parse_timestamp_us("2026-01-01T01:00:01+01:00") == want
    assert parse_timestamp_us("2026-01-01 00:00:01") == want  # naive = UTC
    assert parse_timestamp_us(datetime(2026, 1, 1, 0, 0, 1)) == want
    assert parse_timestamp_us(1767225601) == want  # epoch seconds
    assert parse_timestamp_us(1767225601000) == want  # ms
    assert parse_timestamp_us(1767225601000000) == want  # us
    assert parse_timestamp_us(1767225601.0) == want
    assert parse_timestamp_us("1767225601") == want
    for bad in ("", "noon", float("nan"), True, [1]):
        with pytest.raises(ValueError):
            parse_timestamp_us(bad)


def test_dry_run_validates_and_writes_nothing(store) -> None:
    res = store.push("transactions", [event("u1", 1, 1.0)], dry_run=True)
    assert res.dry_run and res.validated == 1 and res.accepted == 0
    assert _count(store, "u1") == 0
    with pytest.raises(InvalidInputError):
        store.push("transactions", [{"user_id": "u1"}], dry_run=True)


# -- embedded apply ---------------------------------------------------------------------
def test_push_is_visible_and_logged_offline_when_it_returns(store) -> None:
    res = store.push("transactions", [event("u1", 10, 5.0, "a"), event("u1", 20, 7.0, "b"), event("u2", 30, -1.0)])
    assert res.accepted == 3 and res.visible
    fv = store.get_features("fraud", {"user_id": "u1"}, request_time=T0 + timedelta(minutes=30))
    vals = fv.feature_values
    assert vals["txn_stats.amount_count_1d"] == 2
    assert vals["txn_stats.amount_sum_1h"] == pytest.approx(12.0)
    assert vals["txn_stats.merchant_last_distinct_3_1d"] == ["a", "b"]
    assert vals["big_spend.doubled_sum_2h"] == pytest.approx(24.0)
    # The strictly-before rule: an event is not seen at its own timestamp.
    assert _count(store, "u1", T0 + timedelta(minutes=10)) == 0
    assert store.offline.count("src__transactions") == 3
    assert store.offline.count("fv__txn_stats") == 3
    assert store.offline.count("fv__big_spend") == 2  # the transform filtered amount < 0
    src = store.offline.read("src__transactions")
    assert {"_partition", "_offset"} <= set(src.column_names)


@pytest.mark.parametrize("kind", ["arrow", "pandas", "tecton"])
def test_push_accepts_arrow_pandas_and_tecton_records(store, kind) -> None:
    rows = [event("u3", 1, 1.5), event("u3", 2, 2.5)]
    data: object
    if kind == "arrow":
        data = events_table(rows)
    elif kind == "pandas":
        data = events_table(rows).to_pandas()
        assert isinstance(data, pd.DataFrame)
    else:
        data = [{"record": {**r, "ts": r["ts"].isoformat()}} for r in rows]
    assert store.push("transactions", data).accepted == 2
    assert _count(store, "u3") == 2


def test_arrow_with_bad_column_type_names_the_field(store) -> None:
    table = pa.table({"user_id": ["u1", "u2"], "ts": ["2026-01-01T00:00:00Z", "garbage"], "amount": [1.0, 2.0]})
    with pytest.raises(InvalidInputError) as ei:
        store.push("transactions", table)
    assert ei.value.field == "records[1].ts"
    table = pa.table({"user_id": ["u1", None], "ts": [1767225600, 1767225601], "amount": [1.0, 2.0]})
    with pytest.raises(InvalidInputError) as ei:
        store.push("transactions", table)
    assert ei.value.field == "records[1].user_id"


def test_late_events_count_and_too_late_ones_are_rejected_and_reported(
    tmp_path: Path, make_store: StoreFactory
) -> None:
    store = make_store(tmp_path / "r", lateness="30m")
    try:
        before_late = STATS.get("late_events", "transactions")
        before_too = STATS.get("too_late_events", "transactions")
        store.push("transactions", [event("u1", 120, 1.0)])
        res = store.push("transactions", [event("u1", 100, 2.0)])  # 20 min late: applied to its tile
        assert res.accepted == 1 and res.late == 1 and not res.rejected
        with pytest.raises(InvalidInputError) as ei:  # 90 min late, alone: nothing to accept -> 4xx
            store.push("transactions", [event("u1", 30, 4.0)])
        assert ei.value.field == "records[0].ts" and "allowed_lateness (30m)" in str(ei.value)
        res = store.push("transactions", [event("u1", 110, 8.0), event("u1", 30, 4.0)])
        assert res.accepted == 1 and res.validated == 2 and res.visible
        assert [(r.index, r.field, r.reason) for r in res.rejected] == [(1, "ts", "too_late")]
        assert res.to_dict()["rejected"][0]["index"] == 1
        assert STATS.get("late_events", "transactions") - before_late == 2
        assert STATS.get("too_late_events", "transactions") - before_too == 2
        t = T0 + timedelta(minutes=150)
        fv = store.get_features("fraud", {"user_id": "u1"}, request_time=t)
        assert fv.feature_values["txn_stats.amount_count_1d"] == 3
        # Rejected means written nowhere: online, offline and the raw log agree.
        assert store.offline.count("fv__txn_stats") == 3
        assert store.offline.count("src__transactions") == 3
    finally:
        store.close()


def test_events_before_the_cutover_are_rejected_and_reported(store) -> None:
    record_cutover(store.config, "txn_stats", int((T0 + timedelta(minutes=60)).timestamp() * 1_000_000))
    assert get_cutover(store.config, "txn_stats") is not None
    res = store.push("transactions", [event("u1", 59, 1.0), event("u1", 60, 2.0)])
    assert res.accepted == 1 and [(r.index, r.reason) for r in res.rejected] == [(0, "before_cutover")]
    assert "txn_stats" in res.rejected[0].message
    fv = store.get_features("fraud", {"user_id": "u1"}, request_time=T_REQ).feature_values
    assert fv["txn_stats.amount_count_1d"] == 1  # only the event at/after the cut-over
    assert fv["big_spend.doubled_sum_2h"] == pytest.approx(4.0)
    assert store.offline.count("fv__txn_stats") == 1
    assert store.offline.count("src__transactions") == 1  # a rejected record is written nowhere


# -- CLI --------------------------------------------------------------------------------
def test_cli_push(store, tmp_path: Path) -> None:
    from context_store.cli.stream import push

    repo = str(store.config.repo)
    good = tmp_path / "good.json"
    good.write_text(json.dumps([{"user_id": "u9", "ts": (T0 + timedelta(minutes=5)).isoformat(), "amount": 3.0}]))
    r = CliRunner().invoke(push, ["transactions", str(good), "--repo", repo])
    assert r.exit_code == 0, r.output
    assert "pushed 1 records" in r.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"user_id": "u9", "ts": "2026-01-01T00:06:00Z"}\n{"user_id": "u9", "ts": "soon"}\n')
    r = CliRunner().invoke(push, ["transactions", str(bad), "--repo", repo])
    assert r.exit_code == 1
    assert "record 1" in r.output and "'ts'" in r.output and "Traceback" not in r.output
    pq_path = tmp_path / "events.parquet"
    import pyarrow.parquet as pq

    pq.write_table(events_table([event("u9", 7, 1.0)]), pq_path)
    r = CliRunner().invoke(push, ["transactions", str(pq_path), "--repo", repo, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["accepted"] == 1
    r = CliRunner().invoke(push, ["transactions", str(tmp_path / "missing.json"), "--repo", repo])
    assert r.exit_code == 1 and "no such file" in r.output
    store.refresh()
    assert _count(store, "u9") == 2


def test_a_failing_transform_applies_nothing(tmp_path: Path) -> None:
    """Transforms run before any write: a user function that raises on one record leaves every
    view (and the offline log) untouched, and the error names the view, not a traceback."""
    import context_store as cs
    from context_store.errors import DefinitionError
    from tests.support.repo import make_repo
    from tests.support.stream import REPO, SCHEMA

    code = (
        REPO.format(partitions=4, lateness="1h", interval="")
        + """
def picky(table):
    if 13.0 in table.column("amount").to_pylist():
        raise ValueError("unlucky amount")
    return table

zz_picky = cs.FeatureView("zz_picky", entities=[user], source=txns, transform=picky,
                          aggregations=[cs.Aggregate("amount", "sum", "1h")])
"""
    )
    make_repo(tmp_path / "r", code, data={"txns.parquet": SCHEMA.empty_table()})
    store = cs.ContextStore(tmp_path / "r")
    store.apply(force=True)
    try:
        with pytest.raises(DefinitionError, match="zz_picky.*unlucky amount"):
            store.push("transactions", [event("u1", 1, 5.0), event("u1", 2, 13.0)])
        assert _count(store, "u1") == 0  # txn_stats (applied before zz_picky by name) got nothing
        assert _offline_rows(store, "src__transactions") == 0
        assert store.push("transactions", [event("u1", 1, 5.0)]).accepted == 1
        assert _count(store, "u1") == 1
    finally:
        store.close()
