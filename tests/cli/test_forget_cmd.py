"""`context-store forget KEY=VALUE [--yes] [--json]` and `forget --audit`."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

import context_store as cs
from context_store.cli.main import cli
from tests.support.context import build_context_repo


@pytest.fixture
def repo(tmp_path: Path, workspace_name: str) -> tuple[Path, list[str]]:
    root = build_context_repo(tmp_path / "repo")
    with cs.ContextStore(root, workspace=workspace_name, online_store="sqlite") as s:
        s.apply()
        s.backfill()
        s.materialize()
    return root, ["--repo", str(root), "--workspace", workspace_name, "--online-store", "sqlite"]


def test_forget_asks_only_on_a_terminal_then_erases_and_audits(
    repo: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, opts = repo
    runner = CliRunner()
    tty = types.SimpleNamespace(stdin=types.SimpleNamespace(isatty=lambda: True))
    monkeypatch.setattr("context_store.cli.forget.sys", tty)
    res = runner.invoke(cli, ["forget", "user_id=u1", *opts], input="n\n")
    assert res.exit_code == 1 and "cannot be undone" in res.output and "Aborted" in res.output
    res = runner.invoke(cli, ["forget", "--audit", "--json", *opts])
    assert res.exit_code == 0 and json.loads(res.output) == []  # declined: nothing done
    monkeypatch.undo()

    res = runner.invoke(cli, ["forget", "user_id=u1", "--json", *opts])  # no terminal: no question
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["join_key"] == "user_id" and out["value"] == "u1" and out["actor"].startswith("cli:")
    assert out["offline"] == {"fv__txn_stats": 20, "fv__user_profile": 1}
    assert out["online"] == {"entities": 1, "recent_lists": 1} and out["total"] == 23

    res = runner.invoke(cli, ["forget", "user_id=u1", "--yes", *opts])  # again: nothing left
    assert res.exit_code == 0 and "0 records erased" in res.output
    res = runner.invoke(cli, ["forget", "--audit", "--json", "user_id=u1", *opts])
    audit = json.loads(res.output)
    assert [a["total"] for a in audit] == [23, 0] and all("u1" not in json.dumps(a) for a in audit)
    res = runner.invoke(cli, ["forget", "--audit", *opts])
    assert res.exit_code == 0 and res.output.count("user_id#") == 2


def test_forget_errors_are_clean(repo: tuple[Path, list[str]]) -> None:
    _, opts = repo
    runner = CliRunner()
    res = runner.invoke(cli, ["forget", *opts])
    assert res.exit_code == 2 and "KEY=VALUE" in res.output
    res = runner.invoke(cli, ["forget", "account=7", "--yes", *opts])
    assert res.exit_code == 1 and "not a join key" in res.output and "Traceback" not in res.output
