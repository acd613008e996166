"""Context rendering under a token budget: per-section shares, compact item lines, honest notes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import context_store as cs
from context_store.errors import DefinitionError
from context_store.serving.context_text import count_tokens
from tests.support.recs import build_recs_repo, open_built


@pytest.fixture(scope="module")
def recs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cs.ContextStore]:
    store = open_built(build_recs_repo(tmp_path_factory.mktemp("budget") / "repo", similar="(items, 10)"))
    yield store
    store.close()


def test_at_least_five_similar_items_at_300_tokens(recs: cs.ContextStore) -> None:
    for user in ("u0", "u1", "u2", "u3"):
        full = recs.get_user_context(user)
        assert len(full.similar) == 10 and len(full.recent_events) == 5
        uc = recs.get_user_context(user, max_tokens=300)
        assert uc.tokens is not None and uc.tokens <= 300 and count_tokens([uc.text])[0] == uc.tokens
        kept = 10 - uc.omitted.get("similar", 0)
        assert kept >= 5, (uc.omitted, uc.text)
        assert sum(f'"{i.entity_id}"' in uc.text for i in full.similar) == kept
        # Other sections keep their share too: the features and at least one recent event.
        assert "user_interest.n_ratings" in uc.text and uc.omitted.get("recent_events", 0) < 5


def test_item_lines_are_compact(recs: cs.ContextStore) -> None:
    uc = recs.get_user_context("u1")
    lines = uc.text.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("similar items"))
    assert lines[head] == "similar items (id title score):"
    first = uc.similar[0]
    assert lines[head + 1] == f'- "{first.entity_id}" "{first.attributes["title"]}" {first.score:.3f}'
    assert "genre=" not in uc.text  # id + title + score only


def test_section_shares_are_configurable(tmp_path: Path) -> None:
    big = open_built(
        build_recs_repo(tmp_path / "a", similar='(items, 10), budget={"similar": 0.8, "recent_events": 0.05}')
    )
    small = open_built(
        build_recs_repo(tmp_path / "b", similar='(items, 10), budget={"similar": 0.05, "recent_events": 0.6}')
    )
    try:
        a = big.get_user_context("u2", max_tokens=200)
        b = small.get_user_context("u2", max_tokens=200)
        assert a.tokens is not None and a.tokens <= 200 and b.tokens is not None and b.tokens <= 200
        assert a.omitted.get("similar", 0) < b.omitted.get("similar", 0)
        assert a.omitted.get("recent_events", 0) > b.omitted.get("recent_events", 0)
    finally:
        big.close()
        small.close()
    with pytest.raises(DefinitionError, match="unknown section"):
        cs.ContextService("x", entity=cs.Entity("e", join_keys=["k"]), budget={"simlar": 0.5})


def test_note_says_why_there_is_no_interest_vector(tmp_path: Path) -> None:
    """No interest feature, and the recent items have no vector in the view: the note names the items."""
    root = build_recs_repo(tmp_path / "repo", similar="(items, 10)")
    src = (root / "features.py").read_text()
    src = src.replace('interest="user_interest.interest",', "")
    (root / "features.py").write_text(src)
    store = open_built(root)
    try:
        uc = store.get_user_context("u1")
        assert uc.similar  # the recent items' vectors make the interest vector
        assert any("mean vector of" in n for n in uc.notes)
        store.indexer.delete_entities("items", [str(e.values["item_id"]) for e in uc.recent_events])
        gone = store.get_user_context("u1")
        assert gone.similar == []
        note = next(n for n in gone.notes if n.startswith("similar: skipped"))
        assert "has a vector in 'items'" in note and "recent items" in note, note
        assert "no recent events with items" not in note
    finally:
        store.close()
