"""As-of replay reads only the entity's rows, stays exact, and sees the catalogue of its time."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import context_store as cs
from context_store.vocab.time import datetime_to_us
from tests.support.recs import T0, build_recs_repo, open_built, release
from tests.support.reference import expected_view_row, values_match

N_ITEMS = 60


@pytest.fixture(scope="module")
def recs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cs.ContextStore]:
    root = build_recs_repo(tmp_path_factory.mktemp("replay") / "repo", users=30, n_items=N_ITEMS)
    store = open_built(root)
    yield store
    store.close()


def _events(store: cs.ContextStore) -> list[dict[str, Any]]:
    rows = pq.read_table(Path(store.config.repo) / "data" / "ratings.parquet").to_pylist()
    for r in rows:
        r["ts"] = datetime_to_us(r["ts"])
    return rows


def test_replay_is_exact_against_brute_force(recs: cs.ContextStore) -> None:
    events = _events(recs)
    view = recs.definitions.feature_view("user_interest")
    for user in ("u0", "u3", "u11", "u29"):
        for days in (0.5, 7, 21.3, 45, 70):
            at = T0 + timedelta(days=days)
            uc = recs.get_user_context(user, as_of=at)
            want = expected_view_row(view, events, {"user_id": user}, datetime_to_us(at))
            got = uc.feature_values
            assert got["user_interest.n_ratings"] == want["n_ratings"], (user, days)
            if want["interest"] is None:
                assert got["user_interest.interest"] is None
            else:
                assert values_match(list(got["user_interest.interest"]), want["interest"], rel=1e-5, scale=1.0)
            # Recent events: the brute-force newest 5 strictly before as_of.
            mine = sorted(
                (e for e in events if e["user_id"] == user and e["ts"] < datetime_to_us(at)),
                key=lambda e: e["ts"],
                reverse=True,
            )[:5]
            assert [e.values["item_id"] for e in uc.recent_events] == [e["item_id"] for e in mine]


def test_replay_reads_only_the_entitys_rows(recs: cs.ContextStore, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[tuple[str, Any]] = []
    real = recs.offline.read

    def spy(table: str, *args: Any, **kwargs: Any) -> Any:
        out = real(table, *args, **kwargs)
        reads.append((table, out.num_rows))
        return out

    monkeypatch.setattr(recs.offline, "read", spy)
    recs.get_user_context("u5", as_of=T0 + timedelta(days=40))
    fv = [n for t, n in reads if t == "fv__user_interest"]
    assert fv and max(fv) <= 30, reads  # u5's 30 ratings at most, not the 900 of the log


def test_items_added_after_as_of_are_not_returned(recs: cs.ContextStore) -> None:
    served = 0
    for days in (3.5, 10.5, 25.5):
        at = T0 + timedelta(days=days)
        later = [f"i{k}" for k in range(N_ITEMS) if release(k, N_ITEMS) > at]
        assert later
        for user in ("u1", "u2", "u8"):
            uc = recs.get_user_context(user, as_of=at, k=20)
            got = [i.entity_id for i in uc.similar]
            assert not set(got) & set(later), (days, user)
            if got:  # (a user without ratings yet has no interest vector)
                served += 1
                assert any(f"({len(later)} later items excluded)" in n for n in uc.notes), uc.notes
    assert served >= 6
    # Served now, the whole catalogue is eligible: items released late do come back.
    now = recs.get_user_context("u1", k=50)
    assert {i.entity_id for i in now.similar} & {f"i{k}" for k in range(N_ITEMS // 2, N_ITEMS)}
