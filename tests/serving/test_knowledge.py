"""Knowledge (RAG): chunking, indexing Markdown/text/JSONL, search with sources, re-indexing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from context_store.compute.embeddings import chunk_text
from context_store.errors import InvalidInputError, NotFoundError
from tests.support.vectors import VectorServiceFactory, indexer

REFUNDS = """# Refunds

Refunds are issued to the original payment method within 14 days of the return arriving at our warehouse.
Gift cards are never refunded in cash.

## Exceptions

Perishable goods such as flowers cannot be returned or refunded.
"""
SHIPPING = """Shipping

We ship worldwide. Standard delivery takes 3 to 5 business days; express delivery arrives the next day.
Tracking numbers are emailed when the parcel leaves the warehouse.
"""
FAQ = [
    {"id": 1, "text": "How do I reset my password? Click 'forgot password' on the login page."},
    {"id": 2, "text": "Can I change my delivery address after ordering? Yes, until the parcel ships."},
]


def _docs() -> dict[str, str]:
    return {
        "docs/refunds.md": REFUNDS,
        "docs/shipping.txt": SHIPPING,
        "docs/faq.jsonl": "\n".join(json.dumps(r) for r in FAQ) + "\n",
    }


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from("ab c.\n"), max_size=400),
    size=st.integers(10, 80),
    overlap_frac=st.floats(0, 0.9),
)
def test_chunk_spans_are_bounded_ordered_and_cover_the_text(text: str, size: int, overlap_frac: float) -> None:
    overlap = int(size * overlap_frac)
    spans = chunk_text(text, size, overlap)
    covered = [False] * len(text)
    prev_start = -1
    for s, e in spans:
        assert 0 <= s < e <= len(text) and e - s <= size
        assert s > prev_start  # always makes progress
        assert not text[s].isspace() and not text[e - 1].isspace()
        prev_start = s
        for i in range(s, e):
            covered[i] = True
    # every non-whitespace character lands in some chunk
    assert all(covered[i] for i, c in enumerate(text) if not c.isspace())


def test_chunk_overlap_and_boundaries() -> None:
    text = " ".join(f"word{i}" for i in range(200))
    spans = chunk_text(text, 100, 30)
    assert len(spans) > 5
    for (_s1, e1), (s2, _) in zip(spans, spans[1:]):
        assert s2 < e1  # consecutive chunks overlap
        assert text[s2 - 1] == " " and (e1 == len(text) or text[e1] == " ")  # cut between words
    with pytest.raises(ValueError):
        chunk_text("abc", 10, 10)


def test_search_returns_chunks_with_sources_and_offsets(tmp_path: Path, build: VectorServiceFactory) -> None:
    vs = build(tmp_path, docs=_docs(), chunk_size=120, chunk_overlap=20)
    res = vs.search_knowledge("help", "refunds payment method", k=3)
    assert res.knowledge == "help" and res.query == "refunds payment method" and len(res.chunks) == 3
    top = res.chunks[0]
    assert top.source == "docs/refunds.md" and "Refunds" in top.text
    for c in res.chunks:
        file, _, line = c.source.partition("#")
        raw = (tmp_path / file).read_text()
        doc = json.loads(raw.splitlines()[int(line) - 1])["text"] if line else raw
        assert doc[c.start : c.end] == c.text  # offsets point into the document
    assert [c.score for c in res.chunks] == sorted((c.score for c in res.chunks), reverse=True)
    faq = vs.search_knowledge("help", "reset password login", k=1).chunks[0]
    assert faq.source == "docs/faq.jsonl#1" and faq.start == 0
    only = vs.search_knowledge("help", "refunds", k=5, filter={"file": "docs/shipping.txt"})
    assert only.chunks and all(c.source == "docs/shipping.txt" for c in only.chunks)


def test_reindex_replaces_changed_files_and_removes_deleted(tmp_path: Path, build: VectorServiceFactory) -> None:
    vs = build(tmp_path, docs=_docs(), chunk_size=120, chunk_overlap=20)
    assert vs.search_knowledge("help", "refunds", k=1).chunks  # build() indexed it
    again = indexer(vs).index_knowledge()["help"]
    assert again == {"files": 3, "reindexed": 0, "removed": 0, "chunks": 0}  # nothing changed, nothing embedded
    (tmp_path / "docs/refunds.md").write_text("# Returns\n\nReturns of kayaks are accepted within 30 days.\n")
    (tmp_path / "docs/shipping.txt").unlink()
    stats = indexer(vs).index_knowledge()["help"]
    assert stats["files"] == 2 and stats["reindexed"] == 1 and stats["removed"] == 1 and stats["chunks"] == 1
    res = vs.search_knowledge("help", "kayaks returns", k=10)
    sources = [c.source for c in res.chunks]
    assert sources[0] == "docs/refunds.md" and "kayaks" in res.chunks[0].text
    assert sources.count("docs/refunds.md") == 1  # old chunks of the file are gone
    assert "docs/shipping.txt" not in sources
    assert not any("Gift cards" in c.text for c in res.chunks)
    assert len(res.chunks) == 3  # 1 new chunk + 2 FAQ records
    # a restarted service sees exactly the same collection
    vs2 = build(tmp_path, docs={}, chunk_size=120, chunk_overlap=20)
    assert sorted(c.chunk_id for c in vs2.search_knowledge("help", "kayaks", k=10).chunks) == sorted(
        c.chunk_id for c in res.chunks
    )


def test_knowledge_errors(tmp_path: Path, build: VectorServiceFactory) -> None:
    vs = build(tmp_path, docs=_docs())
    with pytest.raises(NotFoundError) as e:
        vs.search_knowledge("nope", "q")
    assert e.value.field == "knowledge"
    for kwargs, field in [
        ({"query": ""}, "query"),
        ({"query": "q", "k": 0}, "k"),
        ({"query": "q", "k": 500}, "k"),
        ({"query": "q", "filter": {"text": "x"}}, "filter.text"),
    ]:
        with pytest.raises(InvalidInputError) as e:
            vs.search_knowledge("help", **kwargs)
        assert e.value.field == field
    (tmp_path / "docs/bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(InvalidInputError, match="bad.jsonl:2"):
        indexer(vs).index_knowledge()


@pytest.mark.model
def test_real_model_finds_the_relevant_passage(tmp_path: Path, build: VectorServiceFactory) -> None:
    vs = build(tmp_path, docs=_docs(), chunk_size=200, chunk_overlap=20, embedder="all-MiniLM-L6-v2")
    res = vs.search_knowledge("help", "how do I get my money back?", k=2)
    assert res.chunks[0].source == "docs/refunds.md"
    res = vs.search_knowledge("help", "when will my package arrive", k=1)
    assert res.chunks[0].source == "docs/shipping.txt"
    res = vs.search_knowledge("help", "I forgot my login credentials", k=1)
    assert res.chunks[0].source == "docs/faq.jsonl#1"
