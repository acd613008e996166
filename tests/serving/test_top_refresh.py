"""Online ``cs.TopItems`` rankings are refreshed off the request path: a call that finds the ranking
older than ``refresh_seconds`` is served the previous one while one background refresh runs
(``serving/top_refresh.py``); ``refresh_seconds=0`` computes on every call."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import context_store as cs
from context_store.serving import top_refresh
from context_store.serving.retrieval import top_items
from context_store.serving.scope import cache_scope
from tests.support.recs import build_recs_repo, open_built

ITEM_COUNTS = """
item_counts = cs.FeatureView("item_counts", [item], ratings,
    aggregations=[cs.Aggregate("rating", "count", cs.Lifetime(), name="n")])
"""
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _key() -> tuple[str, str]:
    return ("test", uuid.uuid4().hex)


def test_a_due_ranking_is_served_at_once_while_one_refresh_runs() -> None:
    key, calls, release = _key(), Counter[str](), threading.Event()

    def first(at: datetime) -> list[str]:
        calls["first"] += 1
        return ["a"]

    def slow(at: datetime) -> list[str]:
        calls["slow"] += 1
        assert release.wait(30)  # the refresh is stuck until the test lets it go
        return ["b"]

    assert top_refresh.online_ranking(key, 0.05, first, NOW) == ["a"]
    assert top_refresh.online_ranking(key, 0.05, first, NOW) == ["a"] and calls["first"] == 1  # fresh: cached
    time.sleep(0.1)
    t = time.monotonic()
    for _ in range(5):  # due: the old list, at once, whatever the refresh is doing
        assert top_refresh.online_ranking(key, 0.05, slow, NOW) == ["a"]
    assert time.monotonic() - t < 1.0  # the refresh is blocked for up to 30 s: these calls did not wait
    assert not top_refresh.wait_refreshes(0.05)  # still running
    assert calls["slow"] == 1  # one refresh, not one per due call
    release.set()
    assert top_refresh.wait_refreshes(10)
    assert top_refresh.online_ranking(key, 60, slow, NOW) == ["b"]
    assert calls["slow"] == 1


def test_a_failed_refresh_keeps_the_previous_ranking_for_another_interval() -> None:
    key, calls = _key(), Counter[str]()

    def boom(at: datetime) -> list[str]:
        calls["boom"] += 1
        raise RuntimeError("offline store unreachable")

    assert top_refresh.online_ranking(key, 0.2, lambda at: ["a"], NOW) == ["a"]
    time.sleep(0.25)
    assert top_refresh.online_ranking(key, 0.2, boom, NOW) == ["a"]
    assert top_refresh.wait_refreshes(10)
    assert top_refresh.online_ranking(key, 0.2, boom, NOW) == ["a"]  # not retried at once
    assert calls["boom"] == 1
    time.sleep(0.25)
    top_refresh.online_ranking(key, 0.2, lambda at: ["c"], NOW)
    assert top_refresh.wait_refreshes(10)
    assert top_refresh.online_ranking(key, 0.2, boom, NOW) == ["c"]


def test_refresh_seconds_zero_computes_on_every_call_with_the_calls_time() -> None:
    key, seen = _key(), []

    def rank(at: datetime) -> list[str]:
        seen.append(at)
        return [str(len(seen))]

    later = datetime(2031, 1, 1, tzinfo=UTC)
    assert top_refresh.online_ranking(key, 0, rank, NOW) == ["1"]
    assert top_refresh.online_ranking(key, 0, rank, later) == ["2"]
    assert seen == [NOW, later]


def test_concurrent_first_calls_compute_once() -> None:
    key, calls, gate = _key(), Counter[str](), threading.Event()

    def rank(at: datetime) -> list[str]:
        calls["n"] += 1
        gate.wait(5)
        return ["x"]

    out: list[list[str]] = []
    threads = [
        threading.Thread(target=lambda: out.append(top_refresh.online_ranking(key, 60, rank, NOW))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    time.sleep(0.1)
    gate.set()
    for t in threads:
        t.join(10)
    assert out == [["x"]] * 4 and calls["n"] == 1


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cs.ContextStore]:
    root = build_recs_repo(tmp_path_factory.mktemp("topref") / "repo", similar="cs.Similar(items, k=10)")
    with (root / "features.py").open("a") as f:
        f.write(ITEM_COUNTS)
    s = open_built(root)
    yield s
    s.close()


def test_pushed_ratings_enter_the_online_ranking_at_the_next_refresh_not_on_the_call(
    store: cs.ContextStore,
) -> None:
    view = store.definitions.embedding_views["items"]
    src = cs.TopItems("item_counts.n", n=10, refresh_seconds=0.3)
    before = top_items(store, view, src, as_of=None, served_at=datetime.now(UTC))
    rows = pq.read_table(store.config.repo / "data" / "ratings.parquet").to_pylist()
    counts = Counter(r["item_id"] for r in rows)
    assert before[:10] == sorted(counts, key=lambda i: (-counts[i], i))[:10]
    last = before[-1]  # the least rated item becomes the most rated one
    proto = next(r for r in rows if r["item_id"] == last)
    now = datetime.now(UTC)
    extra = [{**proto, "user_id": f"fan{j}", "ts": now} for j in range(max(counts.values()) + 5)]
    assert store.push("ratings", extra).visible
    time.sleep(0.35)
    # due: the call is served the ranking it had (the old code recomputed it here, on the call)
    assert top_items(store, view, src, as_of=None, served_at=datetime.now(UTC)) == before
    assert top_refresh.wait_refreshes(30)
    after = top_items(store, view, src, as_of=None, served_at=datetime.now(UTC))
    assert after[0] == last and after[1:] == [i for i in before if i != last]
    # refresh_seconds=0: no staleness, the pushed item is first on the call itself
    zero = cs.TopItems("item_counts.n", n=1, refresh_seconds=0)
    assert top_items(store, view, zero, as_of=None, served_at=datetime.now(UTC))[0] == last


def test_a_ranking_is_never_served_to_another_workspace_of_the_same_repo(tmp_path: Path) -> None:
    # Per-process caches were keyed by (repo, view, ...): a second workspace of the same repo (another
    # tenant of one server) was served the first one's ranking, built from the first one's data.
    root = build_recs_repo(tmp_path / "repo", similar="cs.Similar(items, k=10)")
    with (root / "features.py").open("a") as f:
        f.write(ITEM_COUNTS)
    a, b = open_built(root), open_built(root)
    try:
        view = a.definitions.embedding_views["items"]
        src = cs.TopItems("item_counts.n", n=10, refresh_seconds=600)
        rows = pq.read_table(root / "data" / "ratings.parquet").to_pylist()
        counts = Counter(r["item_id"] for r in rows)
        last = sorted(counts, key=lambda i: (-counts[i], i))[-1]
        proto = next(r for r in rows if r["item_id"] == last)
        now = datetime.now(UTC)
        assert a.push("ratings", [{**proto, "user_id": f"fan{j}", "ts": now} for j in range(max(counts.values()) + 5)])
        assert top_items(a, view, src, as_of=None, served_at=datetime.now(UTC))[0] == last  # a's own data
        got_b = top_items(b, b.definitions.embedding_views["items"], src, as_of=None, served_at=datetime.now(UTC))
        assert got_b[0] != last and got_b[:10] == sorted(counts, key=lambda i: (-counts[i], i))[:10]
    finally:
        a.close()
        b.close()


def test_close_waits_for_its_own_workspace_refresh_only(tmp_path: Path) -> None:
    # A refresh still ranking a closed store read closed stores and logged a failure at exit.
    store = open_built(build_recs_repo(tmp_path / "repo", similar="cs.Similar(items, k=10)"))
    mine, theirs = threading.Event(), threading.Event()

    def start(key: tuple[object, ...], gate: threading.Event) -> None:
        def blocked(at: datetime) -> list[str]:
            gate.wait(30)
            return ["b"]

        top_refresh.online_ranking(key, 0.01, lambda at: ["a"], NOW)
        time.sleep(0.05)
        top_refresh.online_ranking(key, 0.01, blocked, NOW)  # due: a refresh starts

    start((cache_scope(store), "items", "n", "online"), mine)
    start((("elsewhere", uuid.uuid4().hex), "items", "n", "online"), theirs)
    closer = threading.Thread(target=store.close)
    closer.start()
    closer.join(0.5)
    assert closer.is_alive()  # waiting for this workspace's refresh
    mine.set()
    closer.join(10)
    assert not closer.is_alive()  # the other workspace's refresh, still blocked, did not hold it
    theirs.set()
    assert top_refresh.wait_refreshes(10)
