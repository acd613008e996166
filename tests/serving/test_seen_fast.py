"""The seen set of a similar-items call read without per-row dicts (``offline_seen_ids``): the same ids
in the same order as the general path (``offline_recent_events``) -- batch history and pushed events,
ties, point-in-time cut, forget -- and a pushed event is in the very next call's seen set."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

import context_store as cs
from context_store.limits import SEEN_MAX
from context_store.serving.context_events import offline_recent_events, offline_seen_ids
from tests.support.recs import T0, build_recs_repo, open_built

SIMILAR = "cs.Similar(items, k=10, seen_from=ratings, rerank=None)"


@pytest.fixture(scope="module")
def recs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cs.ContextStore]:
    root = build_recs_repo(tmp_path_factory.mktemp("seen") / "repo", similar=SIMILAR)
    store = open_built(root)
    yield store
    store.close()


def _general(store: cs.ContextStore, user: str, n: int, before: datetime) -> list[object]:
    src = store.definitions.sources["ratings"]
    rows = offline_recent_events(store, src, {"user_id": user}, n, before) or []  # type: ignore[arg-type]
    return [r.get("item_id") for r in rows]


def _fast(store: cs.ContextStore, user: str, n: int, before: datetime) -> list[object] | None:
    src = store.definitions.sources["ratings"]
    return offline_seen_ids(store, src, {"user_id": user}, "item_id", n, before)  # type: ignore[arg-type]


def _rating(user: str, item: str, at: datetime) -> dict[str, object]:
    return {"user_id": user, "item_id": item, "rating": 5.0, "item_vec": list(np.ones(64) / 8.0), "ts": at}


def test_fast_seen_ids_match_the_general_path(recs: cs.ContextStore) -> None:
    times = [T0 + timedelta(days=d) for d in (0, 1, 10, 30, 61)] + [datetime.now(UTC)]
    checked = 0
    for user in ("u0", "u3", "u7", "u19", "nobody"):
        for at in times:
            for n in (1, 5, SEEN_MAX):
                fast = _fast(recs, user, n, at)
                assert fast is not None
                assert fast == _general(recs, user, n, at), (user, at, n)
                checked += len(fast)
    assert checked > 100  # the users have histories: the comparison is not between empty lists


def test_pushed_events_and_ties_keep_the_order_and_show_at_once(recs: cs.ContextStore) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    at = now - timedelta(minutes=5)
    # Two events at the same instant (a tie broken by position) and one after the replay time.
    recs.push("ratings", [_rating("u4", "i58", at), _rating("u4", "i59", at), _rating("u4", "i57", now)])
    before = now - timedelta(seconds=1)
    fast = _fast(recs, "u4", SEEN_MAX, before)
    assert fast is not None and fast[:2] == _general(recs, "u4", SEEN_MAX, before)[:2]
    assert fast == _general(recs, "u4", SEEN_MAX, before)
    assert set(fast[:2]) == {"i58", "i59"} and "i57" not in fast
    # The next call's seen set holds the newest push (the served context leaves it out of similar).
    uc = recs.get_user_context("u4")
    assert "i57" not in {i.entity_id for i in uc.similar}
    assert "i57" in (_fast(recs, "u4", SEEN_MAX, datetime.now(UTC) + timedelta(seconds=1)) or [])


def test_forgotten_entity_has_no_seen_items(recs: cs.ContextStore) -> None:
    assert _fast(recs, "u11", SEEN_MAX, datetime.now(UTC))
    recs.forget({"user_id": "u11"})
    after = datetime.now(UTC) + timedelta(seconds=1)
    assert _fast(recs, "u11", SEEN_MAX, after) == _general(recs, "u11", SEEN_MAX, after) == []
