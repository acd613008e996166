"""The seen set's pushed events come from a per-process index of the stream's offline log
(``serving/pushed_index.py``): a push is folded in by reading its new fragments only, and the seen
ids stay those of reading the log per call (``offline_recent_events``) -- order, ties, the
point-in-time cut, merged segments; a forget (rows deleted) reads the whole log again. Also: the
first-seen index merges a push without regrouping (the same index object when no first time
moves), and a call computes the item source's signature once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

import context_store as cs
from context_store.limits import SEEN_MAX
from context_store.serving import first_seen as fs
from context_store.serving import pushed_index as pi
from context_store.serving import retrieval
from context_store.serving.context_events import offline_recent_events, offline_seen_ids
from tests.support.recs import T0, build_recs_repo, open_built

SIMILAR = "cs.Similar(items, k=10, seen_from=ratings, rerank=None)"
ITEM_CF = """
item_cf = cs.InteractionEmbeddingView("item_cf", [item], ratings, user="user_id", weight="rating",
    method="pmi_svd", dim=8, min_interactions=2)
"""


@pytest.fixture(scope="module")
def recs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cs.ContextStore]:
    root = build_recs_repo(tmp_path_factory.mktemp("pushed") / "repo", similar=SIMILAR)
    with (root / "features.py").open("a") as f:
        f.write(ITEM_CF)  # an item view over the ratings stream: its first-seen index folds pushes
    store = open_built(root)
    yield store
    store.close()


def _general(store: cs.ContextStore, user: str, before: datetime) -> list[object]:
    src = store.definitions.sources["ratings"]
    rows = offline_recent_events(store, src, {"user_id": user}, SEEN_MAX, before) or []  # type: ignore[arg-type]
    return [r.get("item_id") for r in rows]


def _fast(store: cs.ContextStore, user: str, before: datetime) -> list[object] | None:
    src = store.definitions.sources["ratings"]
    return offline_seen_ids(store, src, {"user_id": user}, "item_id", SEEN_MAX, before)  # type: ignore[arg-type]


def _rating(user: str, item: str, at: datetime) -> dict[str, object]:
    return {"user_id": user, "item_id": item, "rating": 5.0, "item_vec": list(np.ones(64) / 8.0), "ts": at}


def _stats() -> tuple[int, int]:
    return pi.STATS["full"], pi.STATS["folded"]


def test_a_push_is_folded_in_and_the_next_call_excludes_it(recs: cs.ContextStore) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    recs.push("ratings", [_rating("u2", "i40", now - timedelta(minutes=3))])
    assert "i40" in (_fast(recs, "u2", now) or [])  # the log is indexed (a full read at most)
    full, folded = _stats()
    # the item u2 would be recommended first: after a push rating it, the next call leaves it out
    top = recs.get_user_context("u2").similar[0].entity_id
    assert recs.push("ratings", [_rating("u2", top, now - timedelta(minutes=1))]).visible
    after = recs.get_user_context("u2")
    assert top not in {i.entity_id for i in after.similar}
    assert _stats() == (full, folded + 1)  # the new fragment folded in, the log not read again
    at = datetime.now(UTC) + timedelta(seconds=1)
    assert _fast(recs, "u2", at) == _general(recs, "u2", at)
    assert (_fast(recs, "u2", at) or [])[0] == top
    assert _stats() == (full, folded + 1)  # an unchanged log: nothing read


def test_many_pushes_with_ties_keep_the_order_through_merged_segments(recs: cs.ContextStore) -> None:
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    full, folded = _stats()
    for j in range(pi._MAX_SEGMENTS + 3):  # more pushes than segments: they get merged
        at = base + timedelta(minutes=j // 2)  # pairs of pushes at one instant: ties across segments
        recs.push(
            "ratings", [_rating("u5", f"i{j}", at), _rating("u6", f"i{j + 1}", at), _rating("u5", f"i{50 - j}", at)]
        )
        assert _fast(recs, "u5", datetime.now(UTC))  # each push folded on the next read
    assert _stats()[0] == full and _stats()[1] >= folded + pi._MAX_SEGMENTS + 3
    checked = 0
    for user in ("u5", "u6", "u1", "nobody"):
        for before in (T0 + timedelta(days=5), base + timedelta(minutes=2), base + timedelta(minutes=4, seconds=1)):
            got = _fast(recs, user, before)
            assert got == _general(recs, user, before), (user, before)
            checked += len(got or [])
        now = datetime.now(UTC) + timedelta(seconds=1)
        assert _fast(recs, user, now) == _general(recs, user, now)
    assert checked > 50
    # and the same as indexing the whole log at once (a fresh process)
    now = datetime.now(UTC) + timedelta(seconds=1)
    folded_ids = [_fast(recs, u, now) for u in ("u5", "u6")]
    pi._PUSHED.clear()
    assert [_fast(recs, u, now) for u in ("u5", "u6")] == folded_ids
    assert _stats()[0] == full + 1


def test_a_forget_reads_the_whole_log_again(recs: cs.ContextStore) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    recs.push("ratings", [_rating("u8", "i33", now - timedelta(minutes=1))])
    assert "i33" in (_fast(recs, "u8", now) or [])
    full, _ = _stats()
    recs.forget({"user_id": "u8"})
    after = datetime.now(UTC) + timedelta(seconds=1)
    assert _fast(recs, "u8", after) == _general(recs, "u8", after) == []
    assert _stats()[0] == full + 1  # the deleted rows changed a fragment: no fold


def test_first_seen_keeps_its_index_when_a_push_moves_no_first_time(recs: cs.ContextStore) -> None:
    view = recs.definitions.embedding_views["item_cf"]
    before = fs.first_seen(recs, view)
    now = datetime.now(UTC).replace(microsecond=0)
    assert recs.push("ratings", [_rating("u1", before[0][0], now)]).visible  # known, rated later
    assert fs.first_seen(recs, view) is before  # no first time moved: the same index, no regroup
    assert recs.push("ratings", [_rating("u1", "i_new_b", now), _rating("u2", "i_new_a", now)]).visible
    mid = fs.first_seen(recs, view)
    assert mid[0][-2:] == ["i_new_a", "i_new_b"]  # a tie in time: by id
    # pushed again earlier (a first time moves back) and a third new item between them
    earlier = now - timedelta(hours=1)
    rows = [_rating("u3", "i_new_b", earlier), _rating("u3", "i_new_c", now - timedelta(minutes=30))]
    assert recs.push("ratings", rows).visible
    got = fs.first_seen(recs, view)
    at = dict(zip(got[0], got[1].tolist()))
    assert at["i_new_b"] == int(earlier.timestamp() * 1e6) and got[0][-3:] == ["i_new_b", "i_new_c", "i_new_a"]
    newness = fs.first_seen_us(recs, view, ["i_new_b", before[0][0]])
    assert newness.tolist() == [at["i_new_b"], before[1][0]]
    fs._FIRST_SEEN.clear()
    fs._BUILT.clear()
    fs._FIRST_AT.clear()
    cold = fs.first_seen(recs, view)  # as a fresh process reads it
    assert got[0] == cold[0] and got[1].tolist() == cold[1].tolist()


def test_a_call_computes_the_item_source_signature_once(recs: cs.ContextStore, monkeypatch: Any) -> None:
    calls: list[int] = []
    real = fs.signature

    def counted(*a: Any) -> Any:
        calls.append(1)
        return real(*a)

    monkeypatch.setattr(fs, "signature", counted)
    monkeypatch.setattr(retrieval, "_signature", counted)
    rr = cs.Rerank(
        {"item_stats.popularity": 1.0}, newness=1.0, candidates=20, also=cs.TopItems("item_stats.popularity", n=5)
    )
    recs.get_user_context("u3", as_of=T0 + timedelta(days=20), rerank=rr)
    assert len(calls) == 1  # was 3: the replay catalogue, its TopItems day ranking, the newness term
    recs.get_user_context("u3", rerank=rr)  # the process's first online TopItems ranking (then refreshed apart)
    calls.clear()
    recs.get_user_context("u3", rerank=rr)
    assert len(calls) == 1


def test_two_indexes_folding_one_push_read_its_fragments_once(recs: cs.ContextStore) -> None:
    from context_store.stores.offline.appends import fragments, read_appended

    table = "src__ratings"
    since = fragments(recs.offline, table)
    assert since is not None
    recs.push("ratings", [_rating("u9", "i21", datetime.now(UTC))])
    first = read_appended(recs.offline, table, since)
    assert first is not None and first[1].num_rows == 1
    assert read_appended(recs.offline, table, since) is first  # the same push: not read again
    recs.push("ratings", [_rating("u9", "i22", datetime.now(UTC))])
    again = read_appended(recs.offline, table, since)  # a commit since: read, both pushes
    assert again is not None and sorted(again[1]["item_id"].to_pylist()) == ["i21", "i22"]
    later = read_appended(recs.offline, table, first[0])
    assert later is not None and later[1]["item_id"].to_pylist() == ["i22"]
