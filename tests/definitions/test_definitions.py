"""Loading a feature repo: every bad definition fails with file, line and object in the message."""

from __future__ import annotations

import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from context_store.compute.schema_probe import load_checked_repo as load_repo
from context_store.definitions import Float64, Int64, String, Timestamp
from context_store.errors import DefinitionError
from context_store.registry.loader import find_definition_files

HEADER = """\
import context_store as cs
user = cs.Entity("user", join_keys=["user_id"])
txn = cs.StreamSource(
    "transactions",
    schema=[cs.Field("user_id", cs.String), cs.Field("amount", cs.Float64),
            cs.Field("merchant", cs.String), cs.Field("ts", cs.Timestamp)],
    timestamp_field="ts",
)
"""


def _t(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC)


def _write_data(root: Path) -> None:
    (root / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "user_id": ["u1", "u2"],
                "age": pa.array([30, 40], pa.int64()),
                "name": ["a", "b"],
                "updated_at": pa.array([_t("2024-01-01"), _t("2024-01-02")], pa.timestamp("us", tz="UTC")),
            }
        ),
        root / "data" / "profiles.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "item_id": ["i1", "i2"],
                "title": ["The Quiet River", "Red Orbit"],
                "year": pa.array([1999, 2020], pa.int64()),
                "updated_at": pa.array([_t("2024-01-01"), _t("2024-01-02")], pa.timestamp("us", tz="UTC")),
            }
        ),
        root / "data" / "items.parquet",
    )


def write(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    _write_data(root)
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return root


def line_of(path: Path, marker: str) -> int:
    """1-based line of the first line containing ``marker`` (a ``# <-`` comment in the test source)."""
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if marker in line:
            return i
    raise AssertionError(f"marker {marker!r} not in {path}")


def load_error(root: Path) -> str:
    with pytest.raises(DefinitionError) as exc:
        load_repo(root)
    msg = str(exc.value)
    assert "Traceback" not in msg
    return msg


def assert_points_at(msg: str, path: Path, marker: str, obj: str, *fragments: str) -> None:
    assert f"{path}:{line_of(path, marker)}" in msg, msg
    assert obj in msg, msg
    for f in fragments:
        assert f in msg, msg


# -- good repos ------------------------------------------------------------------------------


def test_load_collects_objects_and_types(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "features.py": HEADER
            + """
stats = cs.FeatureView("stats", entities=[user], source=txn, aggregations=[
    cs.Aggregate("amount", "sum", "1d"), cs.Aggregate("merchant", "last_distinct_n", "7d", n=3),
    cs.Aggregate("amount", "count", "1h")])
profile = cs.FeatureView("profile", entities=[user],
    source=cs.FileSource("data/profiles.parquet", timestamp_field="updated_at"),
    features=[cs.Field("age", cs.Int64)], ttl="30d")
req = cs.RequestSource([cs.Field("amount", cs.Float64)])
@cs.realtime_feature_view(sources=[req, stats], output=[cs.Field("ratio", cs.Float64)])
def ratio(r, s):
    return {"ratio": 1.0}
svc = cs.FeatureService("svc", [stats, profile[["age"]], ratio])
"""
        },
    )
    repo = load_repo(root)
    assert set(repo.feature_views) == {"stats", "profile"}
    # The profile's FileSource was not assigned to a variable: registered through the view.
    assert set(repo.sources) == {"transactions", "src_profiles"}
    assert set(repo.entities) == {"user"}
    assert set(repo.realtime_views) == {"ratio"}
    assert repo.feature_services["svc"].feature_names[-1] == "ratio.ratio"
    assert repo.feature_types["stats"] == {
        "amount_sum_1d": Float64,
        "merchant_last_distinct_3_7d": __import__("context_store").Array(String),
        "amount_count_1h": Int64,
    }
    assert repo.feature_types["profile"] == {"age": Int64}
    assert repo.feature_types["ratio"] == {"ratio": Float64}
    assert repo.input_schemas["profile"]["updated_at"] == Timestamp
    assert repo.input_schemas["stats"]["amount"] == Float64


def test_cross_file_imports_and_isolation(tmp_path: Path) -> None:
    a = write(
        tmp_path / "a",
        {
            "entities.py": 'import context_store as cs\nuser = cs.Entity("user", join_keys=["user_id"])\n',
            "views.py": HEADER.replace('user = cs.Entity("user", join_keys=["user_id"])', "from entities import user")
            + 'stats = cs.FeatureView("stats_a", entities=[user], source=txn, '
            'aggregations=[cs.Aggregate("amount", "sum", "1d")])\n',
            "sub/more.py": "from entities import user\nimport context_store as cs\n"
            'other = cs.Entity("account", join_keys=["account_id"])\n',
        },
    )
    b = write(
        tmp_path / "b",
        {
            "entities.py": "import context_store as cs\n"
            'user = cs.Entity("user", join_keys=[cs.Field("user_id", cs.Int64)])\n',
        },
    )
    before = set(sys.modules)
    ra, rb = load_repo(a), load_repo(b)
    # The entity imported by views.py is the very object of entities.py: no duplicate error.
    assert set(ra.entities) == {"user", "account"}
    assert ra.feature_views["stats_a"].entities[0] is ra.entities["user"]
    assert rb.entities["user"].join_key_fields[0].dtype == Int64
    assert not {m for m in set(sys.modules) - before if m in ("entities", "views", "sub", "sub.more")}
    assert not list(a.rglob("__pycache__"))


def test_rewritten_file_is_reloaded(tmp_path: Path) -> None:
    root = write(tmp_path, {"features.py": 'import context_store as cs\nu = cs.Entity("aaaa", join_keys=["k"])\n'})
    assert set(load_repo(root).entities) == {"aaaa"}
    (root / "features.py").write_text('import context_store as cs\nu = cs.Entity("bbbb", join_keys=["k"])\n')
    assert set(load_repo(root).entities) == {"bbbb"}  # same size, same second: no stale bytecode


def test_file_discovery_skips_data_tests_and_hidden(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "features.py": "x = 1\n",
            "tests/test_x.py": "raise RuntimeError\n",
            ".hidden/h.py": "raise RuntimeError\n",
            "data/gen.py": "raise RuntimeError\n",
            "test_local.py": "raise RuntimeError\n",
            "pkg/defs.py": "y = 2\n",
        },
    )
    names = [p.relative_to(root).as_posix() for p in find_definition_files(root)]
    assert names == ["features.py", "pkg/defs.py"]


# -- bad repos: every message names file:line and the object ----------------------------------


def test_duplicate_name_across_files(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "a.py": HEADER + 'v = cs.FeatureView("stats", entities=[user], source=txn, '
            'aggregations=[cs.Aggregate("amount", "sum", "1d")])  # <-a\n',
            "b.py": "import context_store as cs\nfrom a import user, txn\n"
            + 'w = cs.FeatureView("stats", entities=[user], source=txn, '
            'aggregations=[cs.Aggregate("amount", "max", "1d")])  # <-b\n',
        },
    )
    msg = load_error(root)
    assert_points_at(msg, root / "b.py", "# <-b", "feature_view 'stats'", "duplicate feature view name 'stats'")
    assert f"{root / 'a.py'}:{line_of(root / 'a.py', '# <-a')}" in msg


def test_duplicate_source_name(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "f.py": HEADER
            + """
txn2 = cs.StreamSource("transactions",  # <-
    schema=[cs.Field("user_id", cs.String), cs.Field("ts", cs.Timestamp)], timestamp_field="ts")
"""
        },
    )
    assert_points_at(load_error(root), root / "f.py", "# <-", "stream_source 'transactions'", "duplicate source name")


def test_feature_view_and_realtime_view_share_a_namespace(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "f.py": HEADER
            + """
stats = cs.FeatureView("stats", entities=[user], source=txn, aggregations=[cs.Aggregate("amount", "sum", "1d")])
req = cs.RequestSource([cs.Field("amount", cs.Float64)])
@cs.realtime_feature_view(sources=[req], output=[cs.Field("x", cs.Float64)], name="stats")  # <-
def stats_rt(r):
    return {"x": 1.0}
"""
        },
    )
    msg = load_error(root)
    assert "duplicate feature view name 'stats'" in msg and "realtime_feature_view 'stats'" in msg
    assert str(root / "f.py") in msg


def test_unknown_aggregate_column(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "f.py": HEADER
            + """
stats = cs.FeatureView(
    "stats", entities=[user], source=txn,
    aggregations=[
        cs.Aggregate("amount", "sum", "1d"),
        cs.Aggregate("amonut", "mean", "1d"),  # <-
    ],
)
"""
        },
    )
    assert_points_at(
        load_error(root),
        root / "f.py",
        "# <-",
        "feature_view 'stats'",
        "unknown column 'amonut'",
        "amonut_mean_1d",
        "amount",
    )


def test_unknown_declared_feature_column(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "f.py": HEADER
            + """
profile = cs.FeatureView("profile", entities=[user],  # <-
    source=cs.FileSource("data/profiles.parquet", timestamp_field="updated_at"),
    features=[cs.Field("agee", cs.Int64)])
"""
        },
    )
    assert_points_at(
        load_error(root), root / "f.py", "# <-", "feature_view 'profile'", "feature 'agee': unknown column"
    )


def test_unknown_timestamp_field(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "f.py": HEADER
            + """
stats = cs.FeatureView("stats", entities=[user], source=txn, timestamp_field="when",  # <-
    aggregations=[cs.Aggregate("amount", "sum", "1d")])
"""
        },
    )
    assert_points_at(load_error(root), root / "f.py", "# <-", "feature_view 'stats'", "'when'")


def test_unknown_join_key_column(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "f.py": HEADER
            + """
account = cs.Entity("account", join_keys=["account_id"])
stats = cs.FeatureView("stats", entities=[account], source=txn,  # <-
    aggregations=[cs.Aggregate("amount", "sum", "1d")])
"""
        },
    )
    assert_points_at(load_error(root), root / "f.py", "# <-", "feature_view 'stats'", "'account_id'")


def test_numeric_function_over_string_column(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "f.py": HEADER
            + """
stats = cs.FeatureView("stats", entities=[user], source=txn, aggregations=[
    cs.Aggregate("merchant", "sum", "1d"),  # <-
])
"""
        },
    )
    assert_points_at(
        load_error(root),
        root / "f.py",
        "# <-",
        "feature_view 'stats'",
        "type mismatch",
        "sum needs a numeric column",
        "'merchant' is cs.String",
    )


def test_declared_dtype_differs_from_column(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "f.py": HEADER
            + """
profile = cs.FeatureView("profile", entities=[user],  # <-
    source=cs.FileSource("data/profiles.parquet", timestamp_field="updated_at"),
    features=[cs.Field("age", cs.String)])
"""
        },
    )
    assert_points_at(
        load_error(root),
        root / "f.py",
        "# <-",
        "feature_view 'profile'",
        "type mismatch",
        "'age' is declared cs.String but the column is cs.Int64",
    )


def test_join_key_dtype_mismatch(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "f.py": HEADER
            + """
num_user = cs.Entity("num_user", join_keys=[cs.Field("user_id", cs.Int64)])
stats = cs.FeatureView("stats", entities=[num_user], source=txn,  # <-
    aggregations=[cs.Aggregate("amount", "sum", "1d")])
"""
        },
    )
    assert_points_at(
        load_error(root), root / "f.py", "# <-", "feature_view 'stats'", "type mismatch", "join key 'user_id'"
    )


def test_feature_service_points_at_unregistered_view(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "f.py": HEADER
            + """
svc = cs.FeatureService("svc", [  # <-
    cs.FeatureView("hidden", entities=[user], source=txn, aggregations=[cs.Aggregate("amount", "sum", "1d")]),
])
"""
        },
    )
    assert_points_at(
        load_error(root), root / "f.py", "# <-", "feature_service 'svc'", "feature view 'hidden' is not registered"
    )


def test_realtime_view_points_at_unregistered_view(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "f.py": HEADER
            + """
def make():
    return cs.FeatureView("inner", entities=[user], source=txn, aggregations=[cs.Aggregate("amount", "sum", "1d")])
@cs.realtime_feature_view(sources=[make()], output=[cs.Field("x", cs.Float64)])  # <-
def rt(s):
    return {"x": 1.0}
"""
        },
    )
    msg = load_error(root)
    assert "realtime_feature_view 'rt'" in msg and "'inner' is not registered" in msg
    assert str(root / "f.py") in msg


def test_context_service_points_at_unregistered_objects(tmp_path: Path) -> None:
    base = (
        HEADER
        + """
item = cs.Entity("item", join_keys=["item_id"])
"""
    )
    root = write(
        tmp_path / "a",
        {
            "f.py": base
            + """
def hidden():
    return cs.EmbeddingView("emb", [item], cs.FileSource("data/items.parquet", timestamp_field="updated_at"),
                            text="title")
ctx = cs.ContextService("ctx", entity=user, similar=(hidden(), 5))  # <-
"""
        },
    )
    assert_points_at(
        load_error(root), root / "f.py", "# <-", "context_service 'ctx'", "embedding view 'emb' is not registered"
    )
    root = write(
        tmp_path / "b",
        {
            "f.py": base
            + """
def hidden():
    return cs.StreamSource("clicks", schema=[cs.Field("user_id", cs.String), cs.Field("ts", cs.Timestamp)],
                           timestamp_field="ts")
ctx = cs.ContextService("ctx", entity=user, recent_events=(hidden(), 5))  # <-
"""
        },
    )
    assert_points_at(
        load_error(root), root / "f.py", "# <-", "context_service 'ctx'", "stream source 'clicks' is not registered"
    )
    root = write(
        tmp_path / "c",
        {
            "f.py": base
            + """
stats = cs.FeatureView("stats", entities=[user], source=txn, aggregations=[cs.Aggregate("amount", "sum", "1d")])
ctx = cs.ContextService("ctx", entity=user, features=cs.FeatureService("inline_svc", [stats]))  # <-
"""
        },
    )
    assert_points_at(
        load_error(root),
        root / "f.py",
        "# <-",
        "context_service 'ctx'",
        "feature service 'inline_svc' is not registered",
    )


def test_embedding_view_text_column_missing(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "f.py": """
import context_store as cs
item = cs.Entity("item", join_keys=["item_id"])
items = cs.FileSource("data/items.parquet", timestamp_field="updated_at")
emb = cs.EmbeddingView("emb", [item], items, text="name")  # <-
"""
        },
    )
    assert_points_at(
        load_error(root), root / "f.py", "# <-", "embedding_view 'emb'", "unknown text column 'name'", "title"
    )


def test_embedding_view_text_column_not_string(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "f.py": """
import context_store as cs
item = cs.Entity("item", join_keys=["item_id"])
emb = cs.EmbeddingView("emb", [item], cs.FileSource("data/items.parquet", timestamp_field="updated_at"),  # <-
                       text="year")
"""
        },
    )
    assert_points_at(load_error(root), root / "f.py", "# <-", "embedding_view 'emb'", "type mismatch", "'year'")


def test_embedding_view_unknown_attribute(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "f.py": """
import context_store as cs
item = cs.Entity("item", join_keys=["item_id"])
emb = cs.EmbeddingView("emb", [item], cs.FileSource("data/items.parquet", timestamp_field="updated_at"),  # <-
                       text="title", attributes=["genre"])
"""
        },
    )
    assert_points_at(
        load_error(root), root / "f.py", "# <-", "embedding_view 'emb'", "unknown attribute column 'genre'"
    )


def test_exception_while_importing_reports_file_and_line(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "f.py": """
import context_store as cs

def helper():
    return {}["missing"]  # <-

value = helper()
"""
        },
    )
    msg = load_error(root)
    assert_points_at(msg, root / "f.py", "# <-", "file f.py", "KeyError", "'missing'")
    assert "Traceback" not in msg and 'File "' not in msg


def test_import_of_missing_module(tmp_path: Path) -> None:
    root = write(tmp_path, {"f.py": "import context_store as cs\nfrom nowhere_module import thing  # <-\n"})
    assert_points_at(load_error(root), root / "f.py", "# <-", "file f.py", "ModuleNotFoundError", "nowhere_module")


def test_syntax_error(tmp_path: Path) -> None:
    root = write(tmp_path, {"f.py": "import context_store as cs\nx = (1,\ny = 2 +  # <-\n"})
    msg = load_error(root)
    assert str(root / "f.py") in msg and "syntax error" in msg and "file f.py" in msg


def test_bad_window_string(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "f.py": HEADER
            + """
stats = cs.FeatureView("stats", entities=[user], source=txn, aggregations=[
    cs.Aggregate("amount", "sum", "7 days"),  # <-
])
"""
        },
    )
    assert_points_at(load_error(root), root / "f.py", "# <-", "aggregate 'amount'/'sum'", "bad window '7 days'")


def test_unknown_aggregation_function(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "f.py": HEADER
            + """
stats = cs.FeatureView("stats", entities=[user], source=txn, aggregations=[
    cs.Aggregate("amount", "median", "1d"),  # <-
])
"""
        },
    )
    assert_points_at(
        load_error(root), root / "f.py", "# <-", "aggregate 'amount'/'median'", "unknown function 'median'"
    )


def test_feature_service_selects_unknown_feature(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "f.py": HEADER
            + """
stats = cs.FeatureView("stats", entities=[user], source=txn, aggregations=[cs.Aggregate("amount", "sum", "1d")])
svc = cs.FeatureService("svc", [stats[["amount_sum_7d"]]])  # <-
"""
        },
    )
    msg = load_error(root)
    assert "feature_view 'stats'" in msg and "no feature 'amount_sum_7d'" in msg and str(root / "f.py") in msg
    assert_points_at(msg, root / "f.py", "# <-", "feature_view 'stats'", "did you mean 'amount_sum_1d'?")


def test_slice_typo_is_reported_at_the_slice_line_not_the_view_line(tmp_path: Path) -> None:
    """The view is fine; the typo is in a slice written in another file: point there (and at the view)."""
    root = write(
        tmp_path,
        {
            "views.py": HEADER
            + """
stats = cs.FeatureView("stats", entities=[user], source=txn, aggregations=[
    cs.Aggregate("amount", "sum", "1d"), cs.Aggregate("amount", "count", "1d"),
])
req = cs.RequestSource([cs.Field("amount", cs.Float64)])
@cs.realtime_feature_view(sources=[req, stats], output=[cs.Field("ratio", cs.Float64)])
def check(request, stats):
    return {"ratio": request["amount"]}
""",
            "services.py": """
import context_store as cs
from views import stats, check

svc = cs.FeatureService(
    "svc",
    [
        stats[["amount_count_1d"]],
        stats[["amount_sum_1d", "amount_sum_id"]],  # <-
    ],
)
""",
            "other.py": """
import context_store as cs
from views import check

svc2 = cs.FeatureService("svc2", [check[["ratoi"]]])  # <-
""",
        },
    )
    msg = load_error(root)  # files load in name order: other.py first
    assert_points_at(msg, root / "other.py", "# <-", "realtime_feature_view 'check'", "no feature 'ratoi'")
    assert "did you mean 'ratio'?" in msg and f"defined at {root / 'views.py'}:" in msg
    (root / "other.py").unlink()
    msg = load_error(root)
    assert_points_at(msg, root / "services.py", "# <-", "feature_view 'stats'", "no feature 'amount_sum_id'")
    assert "did you mean 'amount_sum_1d'?" in msg
    assert f"{root / 'views.py'}:{line_of(root / 'views.py', 'stats = ')}" in msg  # the view, as a pointer
    assert msg.startswith(f"{root / 'services.py'}:")


def test_missing_data_file(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "f.py": """
import context_store as cs
user = cs.Entity("user", join_keys=["user_id"])
src = cs.FileSource("data/nothing.parquet", timestamp_field="ts", name="nothing")  # <-
v = cs.FeatureView("v", entities=[user], source=src, features=[cs.Field("age", cs.Int64)])
"""
        },
    )
    assert_points_at(load_error(root), root / "f.py", "# <-", "file_source 'nothing'", "data/nothing.parquet")


def test_broken_sql_transform(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "f.py": HEADER
            + """
stats = cs.FeatureView("stats", entities=[user], source=txn, transform="SELECT user_id, ts, amont FROM source",  # <-
    aggregations=[cs.Aggregate("amount", "sum", "1d")])
"""
        },
    )
    assert_points_at(load_error(root), root / "f.py", "# <-", "feature_view 'stats'", "transform SQL failed")


def test_transform_output_column_checked(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "f.py": HEADER
            + """
stats = cs.FeatureView("stats", entities=[user], source=txn,
    transform="SELECT user_id, ts, amount * 2 AS double_amount FROM source",
    aggregations=[cs.Aggregate("amount", "sum", "1d")])  # <-
"""
        },
    )
    assert_points_at(
        load_error(root), root / "f.py", "# <-", "feature_view 'stats'", "unknown column 'amount'", "double_amount"
    )


def test_knowledge_without_documents(tmp_path: Path) -> None:
    root = write(tmp_path, {"f.py": 'import context_store as cs\nkb = cs.Knowledge("kb", "docs/*.md")  # <-\n'})
    assert_points_at(
        load_error(root), root / "f.py", "# <-", "knowledge 'kb'", "no document matches source 'docs/*.md'"
    )


def test_scaffold_repo_loads(tmp_path: Path) -> None:
    from context_store.scaffold import scaffold

    res = scaffold(tmp_path / "repo", users=20, events=300, items=30, end=_t("2024-06-01"))
    repo = load_repo(res.root)
    assert {"user_transaction_stats", "user_spend_hourly", "user_profile", "user_view_stats", "item_popularity"} <= set(
        repo.feature_views
    )
    assert set(repo.feature_services) >= {"fraud_detection_service", "personalization_service"}
    assert set(repo.context_services) == {"user_context"}
    assert set(repo.embedding_views) == {"item_embeddings"} and set(repo.knowledge) == {"help_articles"}
    assert repo.feature_views["user_spend_hourly"].aggregation_interval is not None
    assert repo.feature_types["user_spend_hourly"]["risky_amount_sum_7d"] == Float64
    assert repo.request_fields(repo.feature_services["fraud_detection_service"]) == {"amount": Float64}
