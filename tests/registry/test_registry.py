"""Registry: plan, apply, breaking changes, snapshots, workspaces, concurrent readers."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from context_store.compute.schema_probe import TransformSchemaProbe
from context_store.config import load_config
from context_store.errors import ConflictError, NotFoundError
from context_store.registry.plan import REBACKFILL, REINDEX, REMATERIALIZE
from context_store.registry.registry import Registry
from tests.support.repo import make_repo

BASE = """
import context_store as cs
user = cs.Entity("user", join_keys=["user_id"])
txn = cs.StreamSource(
    "transactions",
    schema=[cs.Field("user_id", cs.String), cs.Field("amount", cs.Float64), cs.Field("merchant", cs.String),
            cs.Field("ts", cs.Timestamp)],
    timestamp_field="ts",
)
stats = cs.FeatureView("stats", entities=[user], source=txn, ttl="1d", description="d1",
    aggregations=[AGGS])
svc = cs.FeatureService("svc", [stats])
"""
AGGS = 'cs.Aggregate("amount", "sum", "1d"), cs.Aggregate("amount", "count", "7d")'


def repo(tmp_path: Path, text: str = BASE, aggs: str = AGGS) -> Path:
    return make_repo(tmp_path / "repo", text.replace("AGGS", aggs))


def registry(root: Path, workspace: str = "default") -> Registry:
    return Registry(load_config(root, workspace=workspace), TransformSchemaProbe())


def rewrite(root: Path, old: str, new: str) -> None:
    p = root / "features.py"
    text = p.read_text()
    assert old in text
    p.write_text(text.replace(old, new))


def change_of(plan, name: str):  # type: ignore[no-untyped-def]
    found = [c for c in plan.changes if c.name == name]
    assert len(found) == 1, plan
    return found[0]


def test_first_plan_adds_everything_and_apply_commits(tmp_path: Path) -> None:
    root = repo(tmp_path)
    reg = registry(root)
    assert reg.applied_version() == 0
    plan = reg.plan()
    assert plan.from_version == 0 and not plan.breaking
    assert {(c.action, c.kind, c.name) for c in plan.changes} == {
        ("add", "entity", "user"),
        ("add", "stream_source", "transactions"),
        ("add", "feature_view", "stats"),
        ("add", "feature_service", "svc"),
    }
    assert change_of(plan, "stats").forces == [REBACKFILL, REMATERIALIZE]
    text = str(plan)
    assert "+ feature view stats" in text and "forces: rebackfill, rematerialize" in text
    done = reg.apply()
    assert done.to_version == 1 and reg.applied_version() == 1
    applied = reg.applied()
    assert set(applied.feature_views) == {"stats"}
    assert applied.feature_services["svc"].feature_names == ["stats.amount_sum_1d", "stats.amount_count_7d"]
    assert str(applied.feature_types["stats"]["amount_count_7d"]) == "cs.Int64"
    assert applied.input_schemas["stats"]["amount"].name == "float64"
    again = reg.plan()
    assert again.is_empty and "no changes" in str(again)
    assert reg.apply().to_version == 1  # nothing new: no new version


def test_non_breaking_changes_and_field_diffs(tmp_path: Path) -> None:
    root = repo(tmp_path)
    reg = registry(root)
    reg.apply()
    rewrite(root, 'ttl="1d", description="d1"', 'ttl="2d", description="d2"')
    plan = reg.plan()
    c = change_of(plan, "stats")
    assert c.action == "change" and not c.breaking
    assert c.forces == [REMATERIALIZE]
    paths = {d.path: (d.old, d.new) for d in c.diffs}
    assert paths["ttl_s"] == (86400.0, 172800.0) and paths["description"] == ("d1", "d2")
    assert "ttl_s: 86400.0 -> 172800.0" in str(plan)
    assert reg.apply().to_version == 2


def test_adding_an_aggregation_is_not_breaking_but_forces_rebackfill(tmp_path: Path) -> None:
    root = repo(tmp_path)
    reg = registry(root)
    reg.apply()
    rewrite(root, AGGS, AGGS + ', cs.Aggregate("amount", "max", "1d")')
    plan = reg.plan()
    c = change_of(plan, "stats")
    assert not c.breaking and REBACKFILL in c.forces
    assert any(d.path == "aggregations[amount_max_1d]" for d in c.diffs)
    # The service now has one more feature appended: not breaking for existing clients.
    assert not change_of(plan, "svc").breaking
    reg.apply()


def test_breaking_change_needs_force(tmp_path: Path) -> None:
    root = repo(tmp_path)
    reg = registry(root)
    reg.apply()
    rewrite(root, 'cs.Aggregate("amount", "count", "7d")', 'cs.Aggregate("amount", "count", "7d", name="n7")')
    rewrite(
        root, 'cs.Aggregate("amount", "sum", "1d")', 'cs.Aggregate("merchant", "count", "1d", name="amount_sum_1d")'
    )
    plan = reg.plan()
    c = change_of(plan, "stats")
    assert c.breaking and "amount_sum_1d" in " ".join(c.reasons)
    assert change_of(plan, "svc").breaking  # a feature was renamed: clients see another vector
    assert "[BREAKING]" in str(plan) and "needs --force" in str(plan)
    with pytest.raises(ConflictError) as exc:
        reg.apply()
    assert "feature view 'stats'" in str(exc.value) and "--force" in str(exc.value)
    assert reg.applied_version() == 1
    assert reg.apply(force=True).to_version == 2
    assert reg.applied().feature_services["svc"].feature_names == ["stats.amount_sum_1d", "stats.n7"]


def test_changing_source_schema_and_entities(tmp_path: Path) -> None:
    root = repo(tmp_path)
    reg = registry(root)
    reg.apply()
    rewrite(root, 'cs.Field("merchant", cs.String)', 'cs.Field("merchant", cs.Int64)')
    plan = reg.plan()
    src = change_of(plan, "transactions")
    assert src.breaking and "merchant" in src.reasons[0] and src.affects == ["feature view stats"]
    rewrite(root, 'cs.Field("merchant", cs.Int64)', 'cs.Field("merchant", cs.String), cs.Field("extra", cs.Bool)')
    plan = reg.plan()
    assert not change_of(plan, "transactions").breaking  # adding a field is compatible


def test_removing_a_view_used_by_a_service_is_breaking(tmp_path: Path) -> None:
    root = repo(tmp_path)
    reg = registry(root)
    reg.apply()
    text = (root / "features.py").read_text()
    start = text.index("stats = cs.FeatureView")
    (root / "features.py").write_text(text[:start])
    plan = reg.plan()
    assert {(c.action, c.name) for c in plan.changes} == {("remove", "stats"), ("remove", "svc")}
    assert change_of(plan, "stats").breaking and "feature service svc" in change_of(plan, "stats").reasons[0]
    with pytest.raises(ConflictError):
        reg.apply()
    reg.apply(force=True)
    assert reg.applied().feature_views == {}


def test_applied_is_the_snapshot_not_the_working_copy(tmp_path: Path) -> None:
    root = repo(tmp_path)
    reg = registry(root)
    reg.apply()
    rewrite(root, '"sum", "1d"', '"sum", "3d"')  # edited, not applied
    fresh = registry(root)  # e.g. a server process started later
    assert fresh.applied().feature_services["svc"].feature_names[0] == "stats.amount_sum_1d"
    (root / "features.py").unlink()  # even without the repo's files
    assert registry(root).applied().feature_views["stats"].aggregations[0].output_name == "amount_sum_1d"


def test_python_transform_and_realtime_code_survive_the_snapshot(tmp_path: Path) -> None:
    text = (
        BASE
        + """
def double(t):
    import pyarrow.compute as pc
    return t.append_column("double", pc.multiply(t.column("amount"), 2))

doubled = cs.FeatureView("doubled", entities=[user], source=txn, transform=double,
    aggregations=[cs.Aggregate("double", "sum", "1d")])
req = cs.RequestSource([cs.Field("amount", cs.Float64)])
@cs.realtime_feature_view(sources=[req], output=[cs.Field("half", cs.Float64)])
def half(r):
    return {"half": r["amount"] / 2}
"""
    )
    root = repo(tmp_path, text)
    reg = registry(root)
    reg.apply()
    defs = registry(root).applied()
    assert defs.realtime_views["half"]({"amount": 3.0}) == {"half": 1.5}
    assert callable(defs.feature_views["doubled"].transform)
    assert defs.feature_types["doubled"]["double_sum_1d"].name == "float64"
    assert reg.plan().is_empty  # same code, same spec hash
    rewrite(root, 'r["amount"] / 2', 'r["amount"] * 0.5')
    c = change_of(reg.plan(), "half")
    assert [d.path for d in c.diffs] == ["code_sha"] and not c.breaking


def test_workspaces_are_isolated(tmp_path: Path) -> None:
    root = repo(tmp_path)
    a, b = registry(root, "team_a"), registry(root, "team_b")
    a.apply()
    assert a.applied_version() == 1 and b.applied_version() == 0
    with pytest.raises(NotFoundError) as exc:
        b.applied()
    assert str(exc.value) == "nothing applied in workspace 'team_b'; run `context-store apply`"
    assert not b.plan().is_empty
    rewrite(root, 'ttl="1d"', 'ttl="5d"')
    b.apply()
    assert a.applied().feature_views["stats"].ttl.days == 1
    assert b.applied().feature_views["stats"].ttl.days == 5


def test_concurrent_reader_never_sees_a_partial_version(tmp_path: Path) -> None:
    root = repo(tmp_path)
    writer = registry(root)
    writer.apply()
    errors: list[BaseException] = []
    stop = threading.Event()
    seen: set[int] = set()

    def read() -> None:
        reader = registry(root)
        while not stop.is_set():
            try:
                v = reader.applied_version()
                defs = reader.applied()
                assert "stats" in defs.feature_views
                seen.add(v)
            except BaseException as e:  # noqa: BLE001 - any failure is the test's finding
                errors.append(e)
                return

    t = threading.Thread(target=read)
    t.start()
    try:
        for i in range(2, 8):
            rewrite(root, f'description="d{i - 1}"', f'description="d{i}"')
            assert writer.apply().to_version == i
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    assert writer.applied_version() == 7
    versions = writer.root / "versions"
    assert not [p for p in versions.iterdir() if p.name.startswith(".tmp")]
    assert not [p for p in writer.root.iterdir() if p.name.endswith(".tmp")]


def test_embedding_and_knowledge_force_reindex(tmp_path: Path) -> None:
    import pyarrow as pa

    text = (
        BASE
        + """
item = cs.Entity("item", join_keys=["item_id"])
items = cs.FileSource("data/items.parquet", timestamp_field="updated_at", name="items")
emb = cs.EmbeddingView("emb", [item], items, text="title")
kb = cs.Knowledge("kb", "docs/*.md")
"""
    )
    root = make_repo(
        tmp_path / "repo",
        text.replace("AGGS", AGGS),
        data={
            "items.parquet": pa.table(
                {"item_id": ["i1"], "title": ["A film"], "updated_at": pa.array([0], pa.timestamp("us", tz="UTC"))}
            )
        },
    )
    (root / "docs").mkdir()
    (root / "docs" / "a.md").write_text("# Help\nsome text\n")
    reg = registry(root)
    plan = reg.plan()
    assert change_of(plan, "emb").forces == [REINDEX] and change_of(plan, "kb").forces == [REINDEX]
    reg.apply()
    rewrite(root, 'text="title")', 'text="title", embedder="other-model")')
    c = change_of(reg.plan(), "emb")
    assert c.breaking and c.forces == [REINDEX]


def test_deployment_id_is_created_once_and_shared_by_every_process_of_a_repo(tmp_path: Path) -> None:
    root = repo(tmp_path / "a")
    assert registry(root).deployment_id(create=False) is None
    got: list[str | None] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        got.append(registry(root).deployment_id())  # each a separate Registry, as separate processes would be

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 1 and got[0] and len(got[0]) == 16
    registry(root).apply()
    assert registry(root).deployment_id(create=False) == got[0]  # apply keeps it
    other = repo(tmp_path / "b")
    registry(other).apply()
    assert registry(other).deployment_id(create=False) not in (None, got[0])  # a fresh repo: a new one
    assert registry(root, "dev").deployment_id(create=False) is None  # per workspace registry
