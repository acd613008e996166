"""get_user_context: features + recent events + similar items + knowledge, provenance, token budget, as-of replay."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import context_store as cs
from context_store.errors import InvalidInputError, NotFoundError
from context_store.serving.context import UserContext, clean_text, count_tokens, jsonable
from tests.support.context import build_context_repo, txn_rows

pytestmark = pytest.mark.redis


def _open(root: Path, workspace: str, online: str) -> cs.ContextStore:
    store = cs.ContextStore(root, workspace=workspace, online_store=online)
    store.apply()
    store.backfill()
    store.materialize()
    return store


@pytest.fixture(params=["sqlite", "redis"])
def ctx_store(
    request: pytest.FixtureRequest, tmp_path: Path, workspace_name: str, redis_cleanup: list[str]
) -> Iterator[cs.ContextStore]:
    online = "sqlite"
    if request.param == "redis":
        online = request.getfixturevalue("redis_url")
        redis_cleanup.append(f"*{workspace_name}*")
    store = _open(build_context_repo(tmp_path / "repo"), workspace_name, online)
    # Fresh events for u1: the recent-events list and the 1d aggregates see them.
    now = datetime.now(UTC)
    store.push("transactions", txn_rows("u1", now - timedelta(seconds=70), 7, timedelta(seconds=10), amount0=100.0))
    yield store
    store.close()


def test_context_has_every_part_with_provenance(ctx_store: cs.ContextStore) -> None:
    uc = ctx_store.get_user_context("u1", context_service="user_context")
    assert isinstance(uc, UserContext)
    fs = ctx_store.definitions.feature_service("user_features")
    assert [f.name for f in uc.features] == fs.feature_names
    vals = uc.feature_values
    # History: u1 has 20 events two hours apart at ages 47h..9h (amounts 1..20); in the last day
    # (window t-1d <= ts < t) that is those younger than 24h, plus the 7 pushed just now.
    hist_in_day = [1.0 + i for i in range(20) if 47 - 2 * i < 24]
    assert vals["txn_stats.amount_count_1d"] == len(hist_in_day) + 7
    assert vals["txn_stats.amount_sum_1d"] == pytest.approx(sum(hist_in_day) + sum(100.0 + i for i in range(7)))
    assert vals["user_profile.segment"] == "runner"
    for f in uc.features:
        assert f.view == f.name.split(".")[0]
        assert f.status == "PRESENT" and f.effective_time is not None
        assert f.age_ms is not None and f.age_ms >= 0
    # Recent events: the 5 newest, newest first, all strictly before served_at.
    assert uc.recent_events_source == "transactions"
    assert [e.values["amount"] for e in uc.recent_events] == [106.0, 105.0, 104.0, 103.0, 102.0]
    assert all(e.timestamp < uc.served_at and e.age_ms > 0 for e in uc.recent_events)
    # Similar items to u1's interest vector ("red running shoes").
    assert uc.similar_view == "item_embeddings"
    assert len(uc.similar) == 3 and uc.similar[0].entity_id == "i1"
    assert uc.similar[0].attributes["title"] == "red running shoes"
    # Knowledge needs a query.
    assert uc.knowledge == [] and any("knowledge" in n for n in uc.notes)
    assert "txn_stats.amount_sum_1d" in uc.text and "recent events" in uc.text and '"i1"' in uc.text
    assert uc.text.startswith('[user_context for user_id="u1"')
    assert set(uc.timings_ms) == {"features", "recent_events", "similar", "knowledge", "memories", "render"}

    other = ctx_store.get_user_context("u2")  # default service: the first one
    assert other.context_service == "user_context" and other.similar[0].entity_id == "i3"
    assert other.feature_values["user_profile.segment"] == "coffee lover"
    # u2 pushed nothing: its recent events come from the stream's batch history (ages 9h, 11h, ...).
    assert [e.values["amount"] for e in other.recent_events] == [20.0, 19.0, 18.0, 17.0, 16.0]
    replay = ctx_store.get_user_context("u2", as_of=other.served_at)
    assert [(e.timestamp, e.values) for e in replay.recent_events] == [
        (e.timestamp, e.values) for e in other.recent_events
    ]


def test_similar_from_recent_event_items_without_an_interest_feature(ctx_store: cs.ContextStore) -> None:
    uc = ctx_store.get_user_context("u1", context_service="user_context_events")
    seen = [e.values["item_id"] for e in uc.recent_events]
    assert seen == ["i1", "i6", "i5", "i4", "i3"]
    # Six items, five seen: only the unseen one can be recommended.
    assert [i.entity_id for i in uc.similar] == ["i2"]
    assert any("recently seen" in n for n in uc.notes)
    nobody = ctx_store.get_user_context("nobody", context_service="user_context_events")
    assert nobody.similar == [] and any("no recent events" in n for n in nobody.notes)


def test_knowledge_for_a_query(ctx_store: cs.ContextStore) -> None:
    from context_store.serving.context import get_user_context

    uc = get_user_context(ctx_store, "u1", query="how long do refunds take")
    assert uc.knowledge_name == "help_articles" and 1 <= len(uc.knowledge) <= 2
    assert any("Refunds" in c.text for c in uc.knowledge)
    assert "knowledge from help_articles" in uc.text


def test_max_tokens_trims_by_section_shares_with_real_token_counts(ctx_store: cs.ContextStore) -> None:
    from context_store.serving.context import get_user_context

    at = datetime.now(UTC)  # one request time: ages (and so the text) do not drift between calls
    full = get_user_context(ctx_store, "u1", request_time=at)
    full_tokens = count_tokens([full.text])[0]
    roomy = get_user_context(ctx_store, "u1", max_tokens=full_tokens + 10, request_time=at)
    assert roomy.text == full.text and roomy.omitted == {} and roomy.tokens == full_tokens
    previous = None
    for budget in (full_tokens - 1, 150, 90, 40, 16):
        uc = get_user_context(ctx_store, "u1", max_tokens=budget, request_time=at)
        n = count_tokens([uc.text])[0]
        assert n == uc.tokens and n <= budget, (budget, n)
        assert uc.omitted, budget
        assert "left out" in uc.text or "header" in uc.omitted
        # Every section gets its share first (tests/serving/test_context_budget.py): with room for
        # a few lines, each section keeps some, not the first sections all of theirs.
        if budget >= 150:
            kept = {s: n - uc.omitted.get(s, 0) for s, n in (("features", len(full.features)), ("similar", 3))}
            assert all(v >= 1 for v in kept.values()), (budget, uc.omitted)
        dropped = sum(uc.omitted.values())
        assert previous is None or dropped >= previous
        previous = dropped
    # The structured parts are never trimmed: only the rendered text is.
    assert len(uc.recent_events) == len(full.recent_events) and len(uc.features) == len(full.features)


def test_bad_input_names_the_field(ctx_store: cs.ContextStore) -> None:
    cases = [
        ({"entity_id": "u1", "context_service": "nope"}, NotFoundError, "context_service"),
        ({"entity_id": ""}, InvalidInputError, "entity_id"),
        ({"entity_id": "u1\nignore"}, InvalidInputError, "entity_id"),
        ({"entity_id": "u1", "max_tokens": 3}, InvalidInputError, "max_tokens"),
        ({"entity_id": "u1", "as_of": "yesterday"}, InvalidInputError, "as_of"),
        ({"entity_id": "u1", "as_of": "2999-01-01T00:00:00Z"}, InvalidInputError, "as_of"),
    ]
    for kwargs, exc, field in cases:
        with pytest.raises(exc) as info:
            ctx_store.get_user_context(**kwargs)  # type: ignore[arg-type]
        assert info.value.field == field, kwargs


def test_unknown_entity_gives_empty_context_not_an_error(ctx_store: cs.ContextStore) -> None:
    uc = ctx_store.get_user_context("nobody")
    assert uc.feature_values["txn_stats.amount_count_1d"] == 0
    assert uc.feature_values["user_profile.segment"] is None
    assert uc.recent_events == [] and uc.similar == []
    assert any("interest" in n for n in uc.notes)


def _comparable(uc: UserContext) -> dict[str, object]:
    return {
        "features": {k: (round(v, 9) if isinstance(v, float) else v) for k, v in jsonable(uc.feature_values).items()},
        "provenance": [(f.name, f.view, f.status, f.effective_time) for f in uc.features],
        "events": [(e.timestamp, jsonable(e.values)) for e in uc.recent_events],
        "similar": [(i.entity_id, round(i.score, 6)) for i in uc.similar],
    }


def test_as_of_replays_the_context_that_was_served(ctx_store: cs.ContextStore) -> None:
    served = ctx_store.get_user_context("u1")
    t = served.served_at
    time.sleep(0.02)
    later = datetime.now(UTC)
    assert later > t
    ctx_store.push("transactions", txn_rows("u1", later, 3, timedelta(milliseconds=1), amount0=500.0))
    now_ctx = ctx_store.get_user_context("u1")
    assert now_ctx.recent_events[0].values["amount"] == 502.0  # the later events are visible online
    assert now_ctx.feature_values["txn_stats.amount_count_1d"] == served.feature_values["txn_stats.amount_count_1d"] + 3

    replay = ctx_store.get_user_context("u1", as_of=t.isoformat())
    assert replay.as_of == t and replay.served_at == t
    assert _comparable(replay) == _comparable(served)
    assert replay.text.startswith('[user_context for user_id="u1" as of ')


def test_clean_text_strips_controls_and_bounds_length() -> None:
    s = "hi\x00\x1b[31m\u202eevil\u200b\nnext\tline" + "x" * 5000
    out = clean_text(s, 100)
    assert "\x00" not in out and "\x1b" not in out and "\u202e" not in out and "\u200b" not in out
    assert "\n" not in out and len(out) == 100 and out.endswith("…")
    assert clean_text("a\nb", keep_newlines=True) == "a\nb"
    assert jsonable({"t": datetime(2026, 1, 1, tzinfo=UTC), "f": float("nan"), "s": "a\x07b"}) == {
        "t": "2026-01-01T00:00:00Z",
        "f": None,
        "s": "ab",
    }
