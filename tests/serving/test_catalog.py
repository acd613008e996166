"""The catalog (``serving/catalog.py``): owner/tags/description through apply, filters, lineage and search."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest

import context_store as cs
from context_store.errors import DefinitionError, InvalidInputError, NotFoundError
from context_store.registry.loader import collect
from context_store.serving.catalog import KINDS, Catalog, catalog_of
from tests.support.catalog import GROWTH, RISK, build_catalog_repo

ITEM_KEYS = ["kind", "name", "description", "owner", "tags", "entities", "upstream", "downstream"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = build_catalog_repo(tmp_path_factory.mktemp("catalog") / "repo")
    s = cs.ContextStore(root, workspace="catalog_t", online_store="sqlite")
    s.apply()
    yield s
    s.close()


def _defs(**objects: Any) -> Any:
    """Definitions collected from plain objects, as from a repo's module (no files, no apply)."""
    return collect([types.SimpleNamespace(**objects)])


def test_owner_tags_and_description_round_trip_through_apply(store: cs.ContextStore) -> None:
    # A second store reads the applied snapshot, not the objects the first one built.
    with cs.ContextStore(store.config.repo, workspace=store.workspace, online_store="sqlite") as other:
        item = other.describe("txn_stats")
    assert (item.owner, item.tags, item.description) == (RISK, {"team": "risk", "tier": "gold"}, "Spending of a user")
    assert item.spec["owner"] == RISK and item.spec["tags"] == {"team": "risk", "tier": "gold"}
    records = store.registry.applied_records()
    assert records["feature_views/user_profile"]["spec"]["owner"] == GROWTH
    # No owner: no key in the spec, so an upgrade shows no change for objects that never had one.
    assert "owner" not in records["sources/transactions"]["spec"]
    assert store.describe("transactions").owner is None


def test_plan_shows_owner_and_tag_changes(tmp_path: Path) -> None:
    root = build_catalog_repo(tmp_path / "repo")
    with cs.ContextStore(root, workspace="catalog_plan", online_store="sqlite") as s:
        s.apply()
        code = (root / "features.py").read_text()
        code = code.replace(
            f'owner="{RISK}", tags={{"team": "risk", "tier": "gold"}}', 'owner="ops", tags={"team": "ops"}'
        )
        (root / "features.py").write_text(code)
        plan = s.plan()
        [change] = plan.changes
        assert (change.action, change.name, change.forces, change.breaking) == ("change", "txn_stats", [], False)
        diffs = {d.path: (d.old, d.new) for d in change.diffs}
        assert diffs == {"owner": (RISK, "ops"), "tags.team": ("risk", "ops"), "tags.tier": ("gold", None)}
        assert "owner: " in str(plan) and '"ops"' in str(plan)
        s.apply()
        assert s.registry.applied_version() == 2


def test_every_definition_takes_an_owner() -> None:
    user = cs.Entity("user", ["user_id"], owner="a")
    files = cs.FileSource("data/x.parquet", timestamp_field="ts", owner="b")
    stream = cs.StreamSource("s", [cs.Field("user_id", cs.String), cs.Field("ts", cs.Timestamp)], "ts", owner="c")
    fv = cs.FeatureView("fv", [user], stream, features=[cs.Field("ts", cs.Timestamp)], owner="d")
    req = cs.RequestSource([cs.Field("x", cs.Float64)])

    @cs.realtime_feature_view(sources=[req], output=[cs.Field("y", cs.Float64)], owner="e")
    def rt(r: dict[str, Any]) -> dict[str, Any]:
        return {"y": r["x"]}

    emb = cs.EmbeddingView("emb", [user], files, text="t", embedder="hash-8", owner="f")
    kb = cs.Knowledge("kb", source="docs/*.md", owner="g")
    fs = cs.FeatureService("fs", [fv], owner="h")
    ctx = cs.ContextService("ctx", entity=user, features=[fv], owner="i")
    mem = cs.Memory("mem", entity=user, owner="j")
    objs = [user, files, stream, fv, rt, emb, kb, fs, ctx, mem]
    assert [o.owner for o in objs] == list("abcdefghij")
    assert [o.spec()["owner"] for o in objs] == list("abcdefghij")
    assert ctx.feature_service is not None and ctx.feature_service.owner == "i"  # built from the list: inherits


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"owner": 3}, "owner must be a string"),
        ({"owner": "  "}, "owner must be a non-empty single line"),
        ({"owner": "a\nb"}, "owner must be a non-empty single line"),
        ({"owner": "x" * 257}, "at most 256"),
        ({"tags": {"": "x"}}, "keys must be non-empty"),
        ({"tags": {"team": 1}}, "tags must be a dict of str to str"),
        ({"description": ["x"]}, "description must be a string"),
    ],
)
def test_bad_owner_tags_description_are_clear_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError, match=message) as e:
        cs.Entity("user", ["user_id"], **kwargs)
    assert "entity 'user'" in str(e.value) and "test_catalog.py" in str(e.value)  # names the object and its line


def test_list_items_and_filters(store: cs.ContextStore) -> None:
    items = store.catalog()
    assert {i.kind for i in items} == set(KINDS) - {"realtime_feature_view"}
    assert [i.kind for i in items] == sorted((i.kind for i in items), key=KINDS.index)  # grouped by kind
    d = next(i for i in items if i.name == "txn_stats").to_dict()
    assert list(d) == ITEM_KEYS
    assert d == {
        "kind": "feature_view",
        "name": "txn_stats",
        "description": "Spending of a user",
        "owner": RISK,
        "tags": {"team": "risk", "tier": "gold"},
        "entities": ["user"],
        "upstream": [{"kind": "stream_source", "name": "transactions"}],
        "downstream": [{"kind": "feature_service", "name": "user_features"}],
    }
    assert [i.name for i in store.catalog(kind="feature_view")] == ["txn_stats", "user_profile"]
    assert [i.name for i in store.catalog(kind="batch_source")] == ["src_items", "src_profiles", "src_transactions"]
    assert [i.name for i in store.catalog(tag="team=risk")] == ["txn_stats", "user_features"]
    assert [i.name for i in store.catalog(tag="team=growth")] == ["user_profile", "item_embeddings"]
    assert [i.name for i in store.catalog(tag="pii")] == ["user_profile"]  # KEY alone: any value
    assert [i.name for i in store.catalog(kind="feature_view", tag="team")] == ["txn_stats", "user_profile"]
    assert store.catalog(tag="team=nobody") == []
    with pytest.raises(InvalidInputError) as e:
        store.catalog(kind="view")
    assert e.value.field == "kind" and "feature_view" in str(e.value)
    with pytest.raises(InvalidInputError) as e:
        store.catalog(tag="=x")
    assert e.value.field == "tag"


def test_lineage_one_hop_and_full_chain(store: cs.ContextStore) -> None:
    ctx = store.describe("user_context")
    assert {(r.kind, r.name) for r in ctx.upstream} == {
        ("feature_service", "user_features"),
        ("stream_source", "transactions"),
        ("embedding_view", "item_embeddings"),
        ("knowledge", "help_articles"),
        ("memory", "memories"),  # the built-in memory of its entity
    }
    chain = [(r.kind, r.name) for r in ctx.lineage]
    # source -> view -> feature service -> context service, each after everything it reads from
    for a, b in [
        ("src_transactions", "transactions"),
        ("transactions", "txn_stats"),
        ("txn_stats", "user_features"),
        ("src_profiles", "user_profile"),
        ("user_profile", "user_features"),
        ("src_items", "item_embeddings"),
        ("user_features", "user_context"),
    ]:
        names = [n for _, n in chain]
        assert names.index(a) < names.index(b), (a, b, chain)
    assert chain[-1] == ("context_service", "user_context") and len(chain) == len(set(chain)) == 11
    src = store.describe("src_transactions")
    assert [(r.kind, r.name) for r in src.downstream] == [("stream_source", "transactions")]
    down = [n for _, n in src.describe_dict()["lineage"]]
    assert down[0] == "src_transactions" and set(down[1:]) == {
        "transactions",
        "txn_stats",
        "user_features",
        "user_context",
        "user_context_events",
    }
    assert store.describe("user").lineage == [store.describe("user").ref]  # entities are not lineage nodes


def test_describe_features_spec_and_unknown_names(store: cs.ContextStore) -> None:
    d = store.describe("txn_stats").describe_dict()
    assert list(d) == [*ITEM_KEYS, "spec", "features", "lineage"]
    assert d["features"][0] == {"name": "amount_sum_1d", "dtype": "float64", "description": "sum of amount over 1d"}
    assert d["features"][2]["description"] == "last distinct 3 of item_id over 7d"
    assert d["spec"]["source"] == "transactions" and d["spec"]["aggregations"][0]["window"] == "1d"
    fs = store.describe("user_features").describe_dict()
    assert {
        "name": "user_profile.interest",
        "dtype": "embedding[64]",
        "description": fs["features"][3]["description"],
    } in fs["features"]
    # "user" is an entity only; kind= picks among kinds sharing a name
    assert store.describe("user").kind == "entity"
    assert store.describe("user", kind="entity").features[0].name == "user_id"
    with pytest.raises(NotFoundError) as e:
        store.describe("txn_stat")
    assert e.value.field == "name" and "did you mean 'txn_stats'" in str(e.value)
    with pytest.raises(NotFoundError):
        store.describe("txn_stats", kind="feature_service")


def test_realtime_views_in_lineage() -> None:
    user = cs.Entity("user", ["user_id"])
    src = cs.FileSource("data/t.parquet", timestamp_field="ts")
    stats = cs.FeatureView("stats", [user], src, features=[cs.Field("amount", cs.Float64)])
    req = cs.RequestSource([cs.Field("x", cs.Float64)])

    @cs.realtime_feature_view(sources=[req, stats], output=[cs.Field("ratio", cs.Float64)], tags={"team": "rt"})
    def ratio(r: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
        """Request amount over the usual amount."""
        return {"ratio": r["x"] / (s["amount"] or 1)}

    fs = cs.FeatureService("scoring", [stats, ratio])
    cat = Catalog(_defs(user=user, src=src, stats=stats, ratio=ratio, fs=fs))
    rt = cat.get("ratio")
    assert rt.kind == "realtime_feature_view" and rt.description == "Request amount over the usual amount."
    assert rt.entities == ["user"] and rt.tags == {"team": "rt"}
    assert [r.name for r in rt.upstream] == ["stats"] and [r.name for r in rt.downstream] == ["scoring"]
    assert [r.name for r in cat.get("scoring").lineage] == ["src_t", "stats", "ratio", "scoring"]
    assert cat.index.embedder is None  # no embedding view, knowledge or memory: lexical only
    assert [h.item.name for h in cat.search("usual amount")][:1] == ["ratio"]


def test_search_lexical_ranking_with_the_hash_embedder(store: cs.ContextStore) -> None:
    cat = catalog_of(store.definitions)
    assert cat.index.embedder == "hash-64"  # the workspace's: its embedding view and knowledge use it

    def top(q: str, k: int = 10) -> list[str]:
        return [h.item.name for h in store.search_catalog(q, k)]

    assert top("spending")[0] == "txn_stats"  # description
    assert top("refunds shipping help")[0] == "help_articles"
    assert top("gold")[0] == "txn_stats"  # a tag value
    assert top("amount_sum_1d")[:2] == ["txn_stats", "user_features"]  # a feature name, and the service serving it
    assert top("interest segment")[0] == "user_profile"
    assert top("product titles vectors")[0] == "item_embeddings"
    hits = store.search_catalog("user_features", 3)
    assert hits[0].item.name == "user_features" and hits[0].score == 1.0 and len(hits) == 3
    assert all(0 < h.score <= 1 for h in hits) and [h.score for h in hits] == sorted(
        (h.score for h in hits), reverse=True
    )
    assert list(hits[0].to_dict()) == [*ITEM_KEYS, "score"]
    assert store.search_catalog("zzzz qqqq") == []
    for q, k, field in [("", 10, "query"), ("x" * 2001, 10, "query"), ("x", 0, "k"), ("x", 101, "k")]:
        with pytest.raises(InvalidInputError) as e:
            store.search_catalog(q, k)
        assert e.value.field == field


def test_item_embeddings_are_cached_per_registry_version(tmp_path: Path) -> None:
    root = build_catalog_repo(tmp_path / "repo")
    with cs.ContextStore(root, workspace="catalog_cache", online_store="sqlite") as s:
        s.apply()
        first = catalog_of(s.definitions)
        s.search_catalog("spending")
        vectors = first.index._vectors
        s.search_catalog("refunds")
        assert catalog_of(s.definitions) is first and first.index._vectors is vectors  # embedded once
        code = (root / "features.py").read_text().replace("Spending of a user", "Money a user paid")
        (root / "features.py").write_text(code)
        s.apply()
        s.refresh()
        assert catalog_of(s.definitions) is not first
        assert s.describe("txn_stats").description == "Money a user paid"
        assert s.search_catalog("paid")[0].item.name == "txn_stats"


@pytest.mark.model
def test_semantic_search_with_minilm_finds_a_synonym() -> None:
    user = cs.Entity("user", ["user_id"])
    src = cs.FileSource("data/t.parquet", timestamp_field="ts")

    def view(name: str, description: str) -> cs.FeatureView:
        return cs.FeatureView(name, [user], src, features=[cs.Field("v", cs.Float64)], description=description)

    views = {
        "chargebacks": view("chargebacks", "Disputed card payments the bank reversed"),
        "sessions": view("sessions", "Pages a visitor browsed on the website"),
        "weather": view("weather", "Temperature and rain where the user lives"),
    }
    emb = cs.EmbeddingView("docs", [user], src, text="t", embedder="all-MiniLM-L6-v2", description="Texts")
    cat = Catalog(_defs(user=user, src=src, emb=emb, **views))
    assert cat.index.embedder == "all-MiniLM-L6-v2"
    # No word in common with the description: only the meaning finds it.
    assert cat.index.lexical("fraudulent refund claims") == [0.0] * len(cat.items())
    assert [h.item.name for h in cat.search("fraudulent refund claims", 1)] == ["chargebacks"]
    assert [h.item.name for h in cat.search("which pages people clicked", 1)] == ["sessions"]
