"""MCP ``record_event`` over streamable HTTP: scope, read-after-write, validation, idempotency, subject."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pytest

from context_store.access import Subject
from context_store.server.auth import authenticate
from context_store.server.keys import KeyStore
from context_store.tools.http import create_mcp_http_app, create_standalone_app
from context_store.tools.write import WRITE_TOOL_SCOPES
from tests.support.mcp import McpStoreFactory, check_annotations, free_port, serve_in_thread, session_calls

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, prepare_store: McpStoreFactory) -> Iterator[dict[str, Any]]:
    import redis

    from tests.support.redis import REDIS_URL

    ws = "t" + uuid.uuid4().hex[:12]
    root = tmp_path_factory.mktemp("recordev")
    store = prepare_store(root / "repo", ws, REDIS_URL)
    keys = KeyStore(root / "keys.sqlite")
    read_key, _ = keys.create(ws, scope="read")
    ingest_key, _ = keys.create(ws, scope="ingest")
    bound_key, _ = keys.create(ws, scope="ingest")  # bound to user_id=u2 by the authenticate below

    def auth(header: str | None) -> Any:
        principal = authenticate(header, keys)
        if header == f"Bearer {bound_key}":  # the subject seam (server.auth.Principal.subject)
            principal = dataclasses.replace(principal, subject=Subject("user_id", "u2"))
        return principal

    app = create_mcp_http_app(lambda _ws: store, auth)
    with serve_in_thread(create_standalone_app(app), free_port()) as base:
        yield {"url": base + "/mcp", "read": read_key, "ingest": ingest_key, "bound": bound_key, "store": store}
    keys.close()
    r = redis.Redis.from_url(REDIS_URL)
    found = list(r.scan_iter(match=f"*{ws}*", count=1000))
    if found:
        r.delete(*found)
    r.close()


def _calls(url: str, key: str, calls: list[tuple[str, dict[str, Any]]]) -> tuple[dict[str, Any], list[Any]]:
    """List the tools, then make ``calls`` in order, in one MCP session."""
    return session_calls(url, key, calls)


def _txn(user: str, ts: datetime, amount: float, item: str) -> dict[str, Any]:
    return {"user_id": user, "item_id": item, "amount": amount, "note": "agent wrote this", "ts": ts.isoformat()}


def _expected(events: list[dict[str, Any]], now: datetime) -> dict[str, Any]:
    """txn_stats of one user, brute force over its events: 1d sum and count, the 3 latest distinct items (7d)."""
    day = [e for e in events if datetime.fromisoformat(e["ts"]) > now - timedelta(days=1)]
    latest: dict[str, datetime] = {}
    for e in events:
        latest[e["item_id"]] = max(
            latest.get(e["item_id"], datetime.min.replace(tzinfo=UTC)), datetime.fromisoformat(e["ts"])
        )
    return {
        "sum": sum(e["amount"] for e in day),
        "count": len(day),
        "items": set(sorted(latest, key=lambda i: latest[i], reverse=True)[:3]),
    }


def test_read_key_is_refused_and_writes_nothing(srv: dict[str, Any]) -> None:
    user = "r" + uuid.uuid4().hex[:8]
    tools, (res,) = _calls(
        srv["url"],
        srv["read"],
        [("record_event", {"source": "transactions", "record": _txn(user, datetime.now(UTC), 5.0, "i1")})],
    )
    assert WRITE_TOOL_SCOPES == {"record_event": "ingest"}
    check_annotations(tools.values())
    assert "record_event" not in tools  # hidden from a read key (tools/scopes.py), and refused when called
    assert res.is_error, res.content
    text = res.content[0].text
    assert "ForbiddenError" in text and "'ingest'" in text and "Authorization" in text
    vec = srv["store"].get_features("user_features", {"user_id": user})
    assert vec.feature_values["txn_stats.amount_count_1d"] == 0  # nothing was written


def test_ingest_key_records_and_reads_back(srv: dict[str, Any]) -> None:
    user = "r" + uuid.uuid4().hex[:8]
    now = datetime.now(UTC)
    events = [
        _txn(user, now - timedelta(minutes=4), 7.0, "i4"),  # the batch history owns times before its cut-over
        _txn(user, now - timedelta(minutes=3), 2.5, "i1"),
        _txn(user, now - timedelta(minutes=2), 4.0, "i2"),
        _txn(user, now - timedelta(minutes=1), 1.25, "i1"),
        _txn(user, now - timedelta(seconds=30), 10.0, "i3"),
    ]
    tools, results = _calls(
        srv["url"], srv["ingest"], [("record_event", {"source": "transactions", "record": e}) for e in events]
    )
    tool = tools["record_event"]
    check_annotations([tool])
    assert "idempotency_key" in tool.input_schema["properties"] and "workspace" not in tool.input_schema["properties"]
    for i, res in enumerate(results):
        assert not res.is_error, res.content
        sc = res.structured_content
        jsonschema.validate(sc, tool.output_schema)
        assert sc["accepted"] == 1 and sc["visible"] is True and sc["replayed"] is False
        assert sc["join_keys"] == {"user_id": user} and sc["views"] == ["txn_stats"]
        want = _expected(events[: i + 1], datetime.fromisoformat(sc["read_at"]))
        f = sc["features"]
        assert f["txn_stats.amount_sum_1d"] == pytest.approx(want["sum"])
        assert f["txn_stats.amount_count_1d"] == want["count"]
        assert set(f["txn_stats.item_id_last_distinct_3_7d"]) == want["items"]
        assert sc["provenance"]["txn_stats.amount_count_1d"]["view"] == "txn_stats"
    # What record_event answered is what a read serves.
    vec = srv["store"].get_features("user_features", {"user_id": user})
    assert vec.feature_values["txn_stats.amount_count_1d"] == len(events)


def test_validation_errors_name_the_field(srv: dict[str, Any]) -> None:
    user = "r" + uuid.uuid4().hex[:8]
    now = datetime.now(UTC)
    good = _txn(user, now, 1.0, "i1")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"source": "nope", "record": good}, "(field: source)"),
        ({"source": "transactions", "record": {k: v for k, v in good.items() if k != "ts"}}, "(field: record.ts)"),
        ({"source": "transactions", "record": {**good, "amount": "lots"}}, "(field: record.amount)"),
        ({"source": "transactions", "record": {**good, "ts": "yesterday-ish"}}, "(field: record.ts)"),
        (
            {"source": "transactions", "record": {**good, "ts": (now + timedelta(days=2)).isoformat()}},
            "(field: record.ts)",
        ),
        ({"source": "transactions", "record": {**good, "ts": "2300-01-01T00:00:00Z"}}, "(field: record.ts)"),
        ({"source": "transactions", "record": {}}, "record"),
        ({"source": "transactions", "record": good, "idempotency_key": "has spaces"}, "idempotency_key"),
    ]
    _, results = _calls(srv["url"], srv["ingest"], [("record_event", args) for args, _ in cases])
    for (args, field), res in zip(cases, results):
        assert res.is_error, args
        assert field in res.content[0].text, (args, res.content[0].text)
        assert "Traceback" not in res.content[0].text
    assert (
        srv["store"].get_features("user_features", {"user_id": user}).feature_values["txn_stats.amount_count_1d"] == 0
    )


def test_idempotency_key_dedups(srv: dict[str, Any]) -> None:
    user = "r" + uuid.uuid4().hex[:8]
    rec = _txn(user, datetime.now(UTC) - timedelta(seconds=5), 3.0, "i2")
    key = str(uuid.uuid4())
    args = {"source": "transactions", "record": rec, "idempotency_key": key}
    other = {**args, "record": {**rec, "amount": 4.0}}  # the same key with another event
    _, (first, retry, conflict) = _calls(
        srv["url"], srv["ingest"], [("record_event", args)] * 2 + [("record_event", other)]
    )
    assert not first.is_error and not retry.is_error
    a, b = first.structured_content, retry.structured_content
    assert a["replayed"] is False and b["replayed"] is True
    assert a["features"]["txn_stats.amount_count_1d"] == b["features"]["txn_stats.amount_count_1d"] == 1
    assert b["features"]["txn_stats.amount_sum_1d"] == pytest.approx(3.0)
    assert conflict.is_error and "Idempotency-Key" in conflict.content[0].text


def test_subject_bound_key_records_only_its_entity(srv: dict[str, Any]) -> None:
    now = datetime.now(UTC)
    calls = [
        ("record_event", {"source": "transactions", "record": _txn("u3", now, 1.0, "i1")}),
        ("record_event", {"source": "transactions", "record": _txn("u2", now, 1.0, "i1")}),
    ]
    before = srv["store"].get_features("user_features", {"user_id": "u3"}).feature_values["txn_stats.amount_count_1d"]
    _, (other, own) = _calls(srv["url"], srv["bound"], calls)
    assert other.is_error and "ForbiddenError" in other.content[0].text and "record.user_id" in other.content[0].text
    assert not own.is_error and own.structured_content["join_keys"] == {"user_id": "u2"}
    after = srv["store"].get_features("user_features", {"user_id": "u3"}).feature_values["txn_stats.amount_count_1d"]
    assert after == before
