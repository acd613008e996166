"""find_similar through VectorService: queries, filters, errors, recall, freshness, durability."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from context_store.embedders import get_embedder
from context_store.errors import InvalidInputError, NotFoundError
from tests.support.vectors import VectorServiceFactory, brute_topk, indexer, items_table


def test_find_similar_by_text_entity_and_vector(tmp_path: Path, build: VectorServiceFactory) -> None:
    vs = build(tmp_path)
    r = vs.find_similar("items", text="running shoes", k=3)
    assert r.view == "items" and len(r.items) == 3
    assert {i.entity_id for i in r.items} == {"i0", "i1", "i7"}  # the three running-shoe titles
    by = {i.entity_id: i for i in r.items}
    assert by["i0"].attributes == {"title": "red running shoes", "category": "shoes", "price": 0}
    scores = [i.score for i in r.items]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)

    by_id = vs.find_similar("items", entity_id="i2", k=3)
    assert "i2" not in [i.entity_id for i in by_id.items] and by_id.items[0].entity_id == "i3"  # other cake

    q = get_embedder("hash-64").embed(["gaming laptop"])[0]
    by_vec = vs.find_similar("items", vector=q.tolist(), k=1)
    assert by_vec.items[0].entity_id == "i5" and by_vec.items[0].score == pytest.approx(1.0, abs=1e-5)
    # an un-normalised vector gives the same ranking and cosine scores
    assert vs.find_similar("items", vector=(q * 7).tolist(), k=1).items[0].score == pytest.approx(1.0, abs=1e-5)
    stored = vs.get_vectors("items", ["i5", "missing"])
    assert list(stored) == ["i5"] and np.allclose(stored["i5"], q, atol=1e-6)
    np.testing.assert_allclose(vs.embed_query("items", "gaming laptop"), q, atol=1e-6)


def test_filter_on_attributes(tmp_path: Path, build: VectorServiceFactory) -> None:
    vs = build(tmp_path, items_table(n=400))
    r = vs.find_similar("items", text="running shoes", k=10, filter={"category": "tech"})
    assert len(r.items) == 10 and all(i.attributes["category"] == "tech" for i in r.items)
    r = vs.find_similar(
        "items", text="cake", k=10, filter={"price": {"$gte": 10, "$lt": 12}, "category": ["shoes", "tech"]}
    )
    # price in {10, 11} -> ids i%100 in {10, 11}; category shoes (i%4==0) or tech (i%4==2) -> i%100 == 10 only
    assert sorted(i.entity_id for i in r.items) == ["i10", "i110", "i210", "i310"]
    assert vs.find_similar("items", text="cake", k=5, filter={"category": "none-such"}).items == []


@pytest.mark.parametrize(
    ("kwargs", "field", "exc"),
    [
        ({"view": "nope", "text": "x"}, "view", NotFoundError),
        ({"view": "items"}, "query", InvalidInputError),
        ({"view": "items", "text": "x", "entity_id": "i1"}, "query", InvalidInputError),
        ({"view": "items", "text": "x", "k": 0}, "k", InvalidInputError),
        ({"view": "items", "text": "x", "k": 101}, "k", InvalidInputError),
        ({"view": "items", "text": "x", "k": "5"}, "k", InvalidInputError),
        ({"view": "items", "text": "x", "k": True}, "k", InvalidInputError),
        ({"view": "items", "text": "   "}, "text", InvalidInputError),
        ({"view": "items", "text": "x" * 10_001}, "text", InvalidInputError),
        ({"view": "items", "vector": [1.0, 2.0]}, "vector", InvalidInputError),
        ({"view": "items", "vector": [0.0] * 64}, "vector", InvalidInputError),
        ({"view": "items", "vector": "abc"}, "vector", InvalidInputError),
        ({"view": "items", "vector": [[1.0], ["a"]]}, "vector", InvalidInputError),
        ({"view": "items", "entity_id": "missing"}, "entity_id", NotFoundError),
        ({"view": "items", "text": "x", "filter": {"colour": "red"}}, "filter.colour", InvalidInputError),
        ({"view": "items", "text": "x", "filter": {"price": {"$near": 1}}}, "filter.price", InvalidInputError),
        ({"view": "items", "text": "x", "filter": "price=1"}, "filter", InvalidInputError),
    ],
)
def test_bad_requests_name_the_field(
    tmp_path: Path, kwargs: dict, field: str, exc: type, build: VectorServiceFactory
) -> None:
    vs = build(tmp_path)
    view = kwargs.pop("view")
    with pytest.raises(exc) as e:
        vs.find_similar(view, **kwargs)
    assert e.value.field == field


def test_recall_at_10_against_brute_force_20k(tmp_path: Path, build: VectorServiceFactory) -> None:
    words = [
        "red",
        "blue",
        "green",
        "wool",
        "silk",
        "shoe",
        "shirt",
        "lamp",
        "desk",
        "mug",
        "cake",
        "tea",
        "small",
        "large",
        "vintage",
        "modern",
        "cotton",
        "steel",
        "oak",
        "glass",
        "soft",
        "bright",
    ]
    rng = np.random.default_rng(0)
    n = 20_000
    titles = [" ".join(rng.choice(words, size=5)) + f" {i % 997}" for i in range(n)]
    vs = build(tmp_path, items_table(titles=titles[:10]), embedder="hash-384", index="hnsw")
    indexer(vs).upsert_entities("items", [{"item_id": f"x{i}", "title": t} for i, t in enumerate(titles)])
    assert vs.stats()["views"]["items"]["mode"] == "hnsw"
    emb = get_embedder("hash-384")
    data = emb.embed(titles)
    queries = emb.embed([" ".join(rng.choice(words, size=4)) for _ in range(100)])
    truth = brute_topk(data, queries, 10)
    hit = 0
    for q, t in zip(queries, truth):
        got = {i.entity_id for i in vs.find_similar("items", vector=q.tolist(), k=10).items}
        # ties (equal cosines) are common with hashed features: count any id scoring >= the 10th truth score
        tenth = float(data[t[-1]] @ q)
        hit += sum(1 for g in got if g.startswith("x") and float(data[int(g[1:])] @ q) >= tenth - 1e-6)
    assert hit / (10 * len(queries)) >= 0.95


def test_incremental_changes_are_visible_and_durable(tmp_path: Path, build: VectorServiceFactory) -> None:
    vs = build(tmp_path)
    assert (
        indexer(vs).upsert_entities(
            "items", [{"item_id": "new1", "title": "purple umbrella", "category": "home", "price": 3}]
        )
        == 1
    )
    assert vs.find_similar("items", text="purple umbrella", k=1).items[0].entity_id == "new1"
    indexer(vs).upsert_entities(
        "items", [{"item_id": "i0", "title": "espresso machine", "category": "home", "price": 99}]
    )
    top = vs.find_similar("items", text="espresso machine", k=1).items[0]
    assert top.entity_id == "i0" and top.attributes["price"] == 99
    assert indexer(vs).delete_entities("items", ["i5"]) == 1
    assert "i5" not in [i.entity_id for i in vs.find_similar("items", text="gaming laptop", k=20).items]
    # a new service (a restarted server) rebuilds the same state from LanceDB
    vs2 = build(tmp_path)
    ids = [i.entity_id for i in vs2.find_similar("items", text="purple umbrella", k=20).items]
    assert ids[0] == "new1" and "i5" not in ids and len(ids) == 8
    assert vs2.find_similar("items", entity_id="i0", k=1).items  # updated row is there
    assert vs2.find_similar("items", text="espresso machine", k=1).items[0].attributes["category"] == "home"


def test_other_process_writes_are_picked_up(tmp_path: Path, build: VectorServiceFactory) -> None:
    reader = build(tmp_path, refresh_interval=0.0)
    writer = build(tmp_path)
    assert reader.find_similar("items", text="x", k=1).items
    indexer(writer).upsert_entities(
        "items", [{"item_id": "w1", "title": "silver teapot", "category": "home", "price": 1}]
    )
    assert reader.find_similar("items", text="silver teapot", k=1).items[0].entity_id == "w1"
    indexer(writer).delete_entities("items", ["w1", "i1"])
    ids = [i.entity_id for i in reader.find_similar("items", text="silver teapot", k=20).items]
    assert "w1" not in ids and "i1" not in ids and len(ids) == 7


def test_backfill_embeds_only_new_and_changed_rows(tmp_path: Path, build: VectorServiceFactory) -> None:
    vs = build(tmp_path)
    assert vs.find_similar("items", text="cake", k=1).items  # build() ran the first backfill
    first = indexer(vs).backfill()["items"]
    assert first["rows"] == 8 and first["embedded"] == 0 and first["unchanged"] == 8
    t = items_table().to_pylist()
    t[2]["title"] = "lemon tart recipe"  # text changed -> re-embed
    t[3]["price"] = 42.0  # attribute changed -> update, no embedding
    t.append({**t[0], "item_id": "i8", "title": "wool socks"})  # new row
    t.append({**t[1], "title": "blue suede shoes", "ts": t[1]["ts"].replace(year=2020)})  # older duplicate: ignored
    pq.write_table(pa.Table.from_pylist(t, schema=items_table().schema), tmp_path / "data" / "items.parquet")
    stats = indexer(vs).backfill()["items"]
    assert stats == {"rows": 9, "unchanged": 6, "embedded": 2, "updated": 3}
    assert vs.find_similar("items", text="lemon tart", k=1).items[0].entity_id == "i2"
    assert vs.find_similar("items", entity_id="i3", k=1, filter={"price": 42}).items == []  # i3 itself excluded
    assert vs.find_similar("items", text="blue running shoes", k=1).items[0].attributes["title"] == "blue running shoes"
    assert indexer(vs).backfill()["items"]["updated"] == 0  # idempotent


def test_upsert_entities_validates_rows(tmp_path: Path, build: VectorServiceFactory) -> None:
    vs = build(tmp_path)
    with pytest.raises(InvalidInputError) as e:
        indexer(vs).upsert_entities("items", [{"item_id": "a"}])
    assert e.value.field == "title"
    with pytest.raises(NotFoundError):
        indexer(vs).upsert_entities("nope", [])


def test_cli_similar_and_errors(tmp_path: Path, build: VectorServiceFactory) -> None:
    from context_store.cli.main import cli

    build(tmp_path)  # writes data/ and docs/
    (tmp_path / "features.py").write_text(
        textwrap.dedent("""
        import context_store as cs
        item = cs.Entity("item", join_keys=["item_id"])
        src = cs.FileSource("data/items.parquet", timestamp_field="ts")
        items = cs.EmbeddingView("items", [item], src, text="title", embedder="hash-64",
                                 attributes=["category", "price"])
        help = cs.Knowledge("help", "docs/*.md", chunk_size=200, chunk_overlap=20, embedder="hash-64")
    """)
    )
    runner = CliRunner()
    repo = ["--repo", str(tmp_path), "--workspace", "vec"]
    res = runner.invoke(cli, ["apply", "--yes", *repo])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["backfill", *repo])  # builds the view's index and the knowledge's
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["similar", "items", "--text", "running shoes", "-k", "2", *repo])
    assert res.exit_code == 0, res.output
    assert "red running shoes" in res.output and "chocolate" not in res.output
    res = runner.invoke(cli, ["similar", "items", "-e", "i2", "-k", "1", "--json", *repo])
    assert res.exit_code == 0 and '"i3"' in res.output
    res = runner.invoke(cli, ["similar", "items", "--text", "x", "-k", "0", *repo])
    assert res.exit_code != 0 and "k must be" in res.output and "Traceback" not in res.output
    res = runner.invoke(cli, ["similar", "items", "--text", "x", "--filter", "{bad", *repo])
    assert res.exit_code != 0 and "--filter" in res.output
    res = runner.invoke(cli, ["knowledge", "search", "help", "readme", *repo])
    assert res.exit_code == 0 and "docs/readme.md" in res.output


def test_changing_the_embedder_recomputes_vectors(tmp_path: Path, build: VectorServiceFactory) -> None:
    from context_store.embedders import HashEmbedder, register_embedder

    class Reversed:
        name, dim = "reversed-64", 64

        def embed(self, texts):  # type: ignore[no-untyped-def]
            return HashEmbedder(64).embed([t[::-1] for t in texts])

    register_embedder("reversed-64", Reversed)
    assert build(tmp_path).find_similar("items", text="cake", k=1).items
    vs = build(tmp_path, embedder="reversed-64")  # same dim, other model: old vectors must not be reused
    q = Reversed().embed(["gaming laptop"])[0]
    top = vs.find_similar("items", vector=q.tolist(), k=1).items[0]
    assert top.entity_id == "i5" and top.score == pytest.approx(1.0, abs=1e-5)


def test_ingest_routes_pushed_rows_to_views_on_the_source(tmp_path: Path, build: VectorServiceFactory) -> None:
    vs = build(tmp_path)
    src = vs.defs.embedding_views["items"].source.name
    assert indexer(vs).views_on_source(src) == ["items"] and indexer(vs).views_on_source("other") == []
    out = indexer(vs).ingest(
        src,
        [
            {
                "item_id": "p1",
                "title": "copper kettle",
                "category": "home",
                "price": 12.0,
                "ts": items_table().column("ts")[0].as_py(),
            }
        ],
    )
    assert out == {"items": 1}
    assert vs.find_similar("items", text="copper kettle", k=1).items[0].entity_id == "p1"
    assert indexer(vs).ingest(src, [{"item_id": "p2"}]) == {}  # rows without the text column are not for this view


def test_reads_of_an_index_never_built_name_the_command(tmp_path: Path, build: VectorServiceFactory) -> None:
    """Serving never builds an index: a read before any backfill is a clear 404, then a backfill fixes it."""
    vs = build(tmp_path, backfill=False)
    with pytest.raises(NotFoundError, match="context-store backfill --view items") as e:
        vs.find_similar("items", text="cake", k=1)
    assert e.value.field == "view" and e.value.status == 404
    with pytest.raises(NotFoundError, match="not indexed yet") as e:
        vs.search_knowledge("help", "readme")
    assert e.value.field == "knowledge"
    vs.warm()
    assert vs.readiness()["collections"] == {"view:items": "unbuilt", "knowledge:help": "unbuilt"}
    assert indexer(vs).backfill()["items"]["embedded"] == 8
    assert vs.find_similar("items", text="cake", k=1).items  # same collections: visible at once


def test_backfill_of_an_empty_source_builds_an_empty_index(tmp_path: Path, build: VectorServiceFactory) -> None:
    vs = build(tmp_path, items_table(titles=[]), docs={}, kb_source="nothing/*", backfill=False)
    assert indexer(vs).backfill()["items"]["rows"] == 0
    assert indexer(vs).index_knowledge()["help"]["files"] == 0
    assert vs.find_similar("items", text="cake", k=3).items == []
    assert vs.search_knowledge("help", "readme").chunks == []
    vs.close()
    again = build(tmp_path, items_table(titles=[]), docs={}, kb_source="nothing/*", backfill=False)
    assert again.find_similar("items", text="cake", k=3).items == []  # built, across a restart
