"""`context-store list [--kind] [--tag] [--json]`, `describe NAME [--json]`, `search TEXT [--json]`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import context_store as cs
from context_store.cli.main import cli
from tests.support.catalog import RISK, build_catalog_repo


@pytest.fixture(scope="module")
def opts(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = build_catalog_repo(tmp_path_factory.mktemp("catcli") / "repo")
    with cs.ContextStore(root, workspace="catcli", online_store="sqlite") as s:
        s.apply()
    return ["--repo", str(root), "--workspace", "catcli", "--online-store", "sqlite"]


def _run(args: list[str]) -> str:
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    return res.output


def test_list_table_filters_and_json(opts: list[str]) -> None:
    out = _run(["list", *opts])
    lines = out.splitlines()
    assert lines[0].split() == ["KIND", "NAME", "OWNER", "TAGS", "DESCRIPTION"]
    row = next(line for line in lines if " txn_stats " in line)
    assert row.split()[:4] == ["feature_view", "txn_stats", RISK, "team=risk,tier=gold"] and "Spending of a user" in row
    views = _run(["list", "--kind", "feature_view", "--tag", "team=growth", *opts]).splitlines()
    assert [line.split()[1] for line in views[1:]] == ["user_profile"]
    body = json.loads(_run(["list", "--tag", "team=risk", "--json", *opts]))
    assert body["workspace"] == "catcli" and [i["name"] for i in body["items"]] == ["txn_stats", "user_features"]
    assert _run(["list", "--tag", "team=nobody", *opts]).strip() == "no definitions match"
    bad = CliRunner().invoke(cli, ["list", "--kind", "views", *opts])
    assert (
        bad.exit_code != 0 and "kind" in bad.output and "feature_view" in bad.output and "Traceback" not in bad.output
    )


def test_describe_shows_lineage(opts: list[str]) -> None:
    out = _run(["describe", "user_features", *opts])
    assert out.startswith("feature service user_features") and f"owner:       {RISK}" in out
    assert "txn_stats.amount_sum_1d  float64" in out
    lineage = out.split("lineage:")[1].split()
    assert lineage.index("src_transactions") < lineage.index("txn_stats") < lineage.index("user_features")
    assert lineage.index("user_features") < lineage.index("user_context")
    assert "* feature_service" in out  # the item itself is marked
    body = json.loads(_run(["describe", "txn_stats", "--json", *opts]))
    assert body["owner"] == RISK and body["lineage"][0] == ["batch_source", "src_transactions"]
    assert body["features"][0]["name"] == "amount_sum_1d"
    bad = CliRunner().invoke(cli, ["describe", "txn_stat", *opts])
    assert bad.exit_code != 0 and "did you mean 'txn_stats'" in bad.output


def test_search(opts: list[str], tmp_path: Path) -> None:
    out = _run(["search", "help", "refunds", *opts]).splitlines()
    assert out[0].split() == ["SCORE", "KIND", "NAME", "DESCRIPTION"] and out[1].split()[1:3] == [
        "knowledge",
        "help_articles",
    ]
    body = json.loads(_run(["search", "spending", "-n", "2", "--json", *opts]))
    assert body["query"] == "spending" and body["items"][0]["name"] == "txn_stats" and len(body["items"]) <= 2
    assert "nothing matches" in _run(["search", "zzzz", *opts])
    assert CliRunner().invoke(cli, ["search", "x", "-n", "0", *opts]).exit_code != 0
