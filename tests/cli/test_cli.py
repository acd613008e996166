"""The `context-store` CLI: lifecycle commands through click's runner and a real subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from context_store.cli._common import handle_errors, parse_pairs, repo_options, store_from_ctx
from context_store.cli.main import LazyGroup, cli

CORE = ["init", "plan", "apply", "backfill", "materialize", "get", "quickstart"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One scaffolded repo (small), copied per test that changes it."""
    from context_store.scaffold import scaffold

    root = tmp_path_factory.mktemp("example") / "repo"
    scaffold(root, users=20, events=400, items=30, end=datetime(2024, 6, 1, tzinfo=UTC))
    return root


def copy_repo(example: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "repo"
    shutil.copytree(example, dst, ignore=shutil.ignore_patterns(".context_store"))
    return dst


def test_help_of_every_command(runner: CliRunner) -> None:
    res = runner.invoke(cli, ["--help"])
    assert res.exit_code == 0
    for name in CORE + ["serve", "mcp", "keys", "push", "worker", "similar", "knowledge"]:
        assert f"  {name} " in res.output
    for name in CORE:
        res = runner.invoke(cli, [name, "--help"])
        assert res.exit_code == 0, res.output
        assert "--repo" in res.output and "--workspace" in res.output, name


def test_init_plan_apply(runner: CliRunner, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    res = runner.invoke(cli, ["init", str(root), "--users", "15", "--events", "300", "--items", "20"])
    assert res.exit_code == 0, res.output
    assert (root / "fraud.py").exists() and (root / "data" / "transactions.parquet").exists()
    assert (root / "docs" / "refunds.md").exists() and (root / "context_store.yaml").exists()
    assert "context-store get fraud_detection_service user_id=u" in res.output
    res = runner.invoke(cli, ["plan", "--repo", str(root)])
    assert res.exit_code == 0, res.output
    assert "+ feature view user_transaction_stats" in res.output and "(nothing applied yet)" in res.output
    res = runner.invoke(cli, ["plan", "--repo", str(root), "--json"])
    data = json.loads(res.output)
    assert (
        data["from_version"] == 0
        and {"action": "add", "name": "fraud_detection_service"}.items()
        <= next(c for c in data["changes"] if c["name"] == "fraud_detection_service").items()
    )
    res = runner.invoke(cli, ["apply", "--repo", str(root)])  # stdin is not a terminal: no prompt
    assert res.exit_code == 0, res.output
    assert "Applied version 1 to workspace 'default'" in res.output
    assert "Next: context-store backfill" in res.output
    res = runner.invoke(cli, ["apply", "--repo", str(root), "--yes"])
    assert res.exit_code == 0 and "Nothing to apply" in res.output


def test_breaking_apply_needs_force(runner: CliRunner, example: Path, tmp_path: Path) -> None:
    root = copy_repo(example, tmp_path)
    assert runner.invoke(cli, ["apply", "-r", str(root)]).exit_code == 0
    fraud = root / "fraud.py"
    fraud.write_text(
        fraud.read_text().replace(
            'cs.Aggregate("amount", "sum", "1d"),\n        cs.Aggregate("risky',
            'cs.Aggregate("amount", "sum", "2d"),\n        cs.Aggregate("risky',
        )
    )
    res = runner.invoke(cli, ["plan", "-r", str(root)])
    assert res.exit_code == 0 and "[BREAKING]" in res.output  # plan always exits 0
    res = runner.invoke(cli, ["apply", "-r", str(root)])
    assert res.exit_code == 1
    assert "breaking change" in res.stderr and "--force" in res.stderr and "user_spend_hourly" in res.stderr
    assert "Traceback" not in res.output + res.stderr
    res = runner.invoke(cli, ["apply", "-r", str(root), "--force", "--yes"])
    assert res.exit_code == 0 and "Applied version 2" in res.output


def test_workspaces(runner: CliRunner, example: Path, tmp_path: Path) -> None:
    root = copy_repo(example, tmp_path)
    assert runner.invoke(cli, ["apply", "-r", str(root), "-w", "ws_one"]).exit_code == 0
    res = runner.invoke(cli, ["plan", "-r", str(root), "--workspace", "ws_one"])
    assert "no changes" in res.output
    res = runner.invoke(cli, ["plan", "-r", str(root), "--workspace", "ws_two"])
    assert "nothing applied yet" in res.output
    res = runner.invoke(cli, ["get", "fraud_detection_service", "user_id=u0001", "-r", str(root), "-w", "ws_two"])
    assert res.exit_code == 1
    assert "nothing applied in workspace 'ws_two'; run `context-store apply`" in res.stderr
    res = runner.invoke(cli, ["plan", "-r", str(root), "-w", "bad name!"])
    assert res.exit_code == 1 and "workspace 'bad name!'" in res.stderr


def test_definition_error_is_one_clean_line(runner: CliRunner, example: Path, tmp_path: Path) -> None:
    root = copy_repo(example, tmp_path)
    (root / "broken.py").write_text("import context_store as cs\n\nx = 1 / 0\n")
    res = runner.invoke(cli, ["plan", "-r", str(root)])
    assert res.exit_code == 1
    assert f"{root / 'broken.py'}:3" in res.stderr and "ZeroDivisionError" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_bad_arguments(runner: CliRunner, example: Path, tmp_path: Path) -> None:
    root = copy_repo(example, tmp_path)
    res = runner.invoke(cli, ["init", str(root)])
    assert res.exit_code == 1 and "is not empty" in res.stderr and "--force" in res.stderr
    res = runner.invoke(cli, ["backfill", "-r", str(root), "--start", "yesterday"])
    assert res.exit_code == 1 and "--start 'yesterday' is not an ISO-8601 time" in res.stderr
    res = runner.invoke(cli, ["backfill", "-r", str(root), "--start", "2024-02-01", "--end", "2024-01-01"])
    assert res.exit_code == 1 and "must be before --end" in res.stderr
    res = runner.invoke(cli, ["backfill", "-r", str(root), "--address", "auto"])
    assert res.exit_code == 1 and "--address joins a Ray cluster: use it with --engine ray" in res.stderr
    runner.invoke(cli, ["apply", "-r", str(root)])
    res = runner.invoke(cli, ["get", "fraud_detection_service", "user_id", "-r", str(root)])
    assert res.exit_code == 1 and "join key 'user_id' must look like name=value" in res.stderr
    res = runner.invoke(cli, ["get", "no_such_service", "user_id=u1", "-r", str(root)])
    assert res.exit_code == 1 and "unknown feature service 'no_such_service'" in res.stderr
    res = runner.invoke(cli, ["get", "fraud_detection_service", "user_id=u1", "-q", "amount=lots", "-r", str(root)])
    assert res.exit_code == 1 and "amount='lots' is not a valid float64" in res.stderr
    res = runner.invoke(cli, ["materialize", "-r", str(root), "--view", "nope"])
    assert res.exit_code == 1 and "unknown feature view 'nope'" in res.stderr


def test_backfill_view_accepts_and_lists_every_kind(runner: CliRunner, example: Path, tmp_path: Path) -> None:
    root = copy_repo(example, tmp_path)
    assert runner.invoke(cli, ["apply", "-r", str(root)]).exit_code == 0
    res = runner.invoke(cli, ["backfill", "-r", str(root), "--view", "item_embedding"])
    assert res.exit_code == 1, res.output
    assert res.stderr.strip() == (
        "Error: unknown view 'item_embedding' (--view); known feature views: item_popularity, user_profile, "
        "user_spend_hourly, user_transaction_stats, user_view_stats; embedding views: item_embeddings; "
        "knowledge: help_articles"
    )
    # materialize loads feature views only: it lists those
    res = runner.invoke(cli, ["materialize", "-r", str(root), "--view", "item_embeddings"])
    assert res.exit_code == 1 and "known feature views: item_popularity" in res.stderr
    assert "embedding views" not in res.stderr
    # a listed name is accepted: knowledge alone is indexed, no feature view is computed
    res = runner.invoke(cli, ["backfill", "-r", str(root), "--view", "help_articles"])
    assert res.exit_code == 0, res.stderr
    assert "Backfill done." in res.output and "user_profile:" not in res.output
    assert "index help_articles" in res.stderr


def test_unknown_keys_are_named_with_the_known_ones(runner: CliRunner, example: Path, tmp_path: Path) -> None:
    """A typo in a key name is named as unknown (with the close match), not reported as a missing key."""
    root = copy_repo(example, tmp_path)
    assert runner.invoke(cli, ["apply", "-r", str(root)]).exit_code == 0
    res = runner.invoke(cli, ["get", "fraud_detection_service", "usr_id=u0001", "-q", "amount=250", "-r", str(root)])
    assert res.exit_code == 1 and "missing" not in res.stderr, res.stderr
    assert res.stderr.strip() == (
        "Error: unknown join key 'usr_id' for feature service 'fraud_detection_service'; "
        "did you mean 'user_id'? known join keys: user_id"
    )
    res = runner.invoke(
        cli, ["get", "fraud_detection_service", "user_id=u0001", "--request", "amt=250", "-r", str(root)]
    )
    assert res.exit_code == 1 and "missing" not in res.stderr, res.stderr
    assert "unknown request field 'amt' (--request)" in res.stderr and "did you mean 'amount'?" in res.stderr
    assert "known request fields: amount" in res.stderr
    res = runner.invoke(cli, ["get", "personalization_service", "user_id=u0001", "-q", "amount=1", "-r", str(root)])
    assert (
        res.exit_code == 1
        and "unknown request field 'amount'" in res.stderr
        and "it takes no request fields" in (res.stderr)
    )
    res = runner.invoke(cli, ["plan", "--no-such-option"])
    assert res.exit_code == 2 and "No such option" in res.stderr


def test_parse_pairs() -> None:
    assert parse_pairs(["a=1", "b=x=y", "c="], "join key") == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(Exception, match="given twice"):
        parse_pairs(["a=1", "a=2"], "join key")


def test_lazy_commands_missing_module_and_unexpected_errors(runner: CliRunner, tmp_path: Path) -> None:
    group = LazyGroup(name="t", lazy={"ghost": ("context_store.cli.no_such_module", "ghost", "A ghost.", "")})

    @group.command("boom")
    def boom() -> None:
        raise RuntimeError("kaput")

    @group.command("where")
    @repo_options
    @handle_errors
    def where() -> None:
        store = store_from_ctx()
        click.echo(f"{store.config.repo}|{store.workspace}|{store.config.online_store}")

    res = runner.invoke(group, ["--help"])
    assert res.exit_code == 0 and "A ghost." in res.output
    res = runner.invoke(group, ["ghost", "--anything"])
    assert res.exit_code == 1 and "command 'ghost' is not available" in res.stderr
    res = runner.invoke(group, ["boom"])
    assert res.exit_code == 1 and "unexpected RuntimeError: kaput" in res.stderr and "Traceback" not in res.stderr
    res = runner.invoke(group, ["where", "-r", str(tmp_path), "-w", "w1", "--online-store", "redis://127.0.0.1:6379/3"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"{tmp_path.resolve()}|w1|redis://127.0.0.1:6379/3"


def _cli_argv() -> list[str]:
    exe = Path(sys.executable).parent / "context-store"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "context_store.cli"]


def test_real_subprocess(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTEXT_STORE_")}
    argv = _cli_argv()

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([*argv, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
        assert (p.returncode == 0) == ok, (p.stdout, p.stderr)
        return p

    assert "Commands:" in run("--help").stdout
    run("init", "repo", "--users", "10", "--events", "200", "--items", "10")
    assert "+ feature service fraud_detection_service" in run("plan", "--repo", "repo").stdout
    assert "Applied version 1" in run("apply", "--repo", "repo").stdout
    p = run("apply", "--repo", "repo", "--workspace", "bad/ws", ok=False)
    assert p.returncode == 1 and p.stderr.startswith("Error: workspace 'bad/ws'") and "Traceback" not in p.stderr


def test_full_flow_backfill_materialize_get(runner: CliRunner, tmp_path: Path) -> None:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    root = tmp_path / "repo"
    assert runner.invoke(cli, ["init", str(root), "--users", "20", "--events", "600", "--items", "25"]).exit_code == 0
    for args in (["apply"], ["backfill"], ["materialize"]):
        res = runner.invoke(cli, [*args, "-r", str(root)])
        assert res.exit_code == 0, (args, res.output, res.stderr)
    assert "Backfill done." in runner.invoke(cli, ["backfill", "-r", str(root), "--view", "user_profile"]).output
    txn = pq.read_table(root / "data" / "transactions.parquet")
    counts = pc.value_counts(txn.column("user_id")).to_pylist()
    user = max(counts, key=lambda c: c["counts"])["values"]
    res = runner.invoke(
        cli, ["get", "fraud_detection_service", f"user_id={user}", "-q", "amount=250", "--json", "-r", str(root)]
    )
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.output)
    values = out["feature_values"]
    assert values["transaction_amount_check.is_unusual"] in (True, False)
    # The served 7-day count equals a count over the raw file at the request time (t - 7d <= ts < t).
    t = datetime.fromisoformat(out["request_time"])
    ts = txn.column("ts").to_pylist()
    ids = txn.column("user_id").to_pylist()
    expected = sum(1 for u, x in zip(ids, ts) if u == user and t - __import__("datetime").timedelta(days=7) <= x < t)
    assert values["user_transaction_stats.amount_count_7d"] == expected
    assert {m["status"] for m in out["metadata"]} <= {"PRESENT", "MISSING_DATA"}
    text = runner.invoke(
        cli, ["get", "fraud_detection_service", f"user_id={user}", "-q", "amount=250", "-r", str(root)]
    )
    assert text.exit_code == 0 and f"features for user_id={user}:" in text.output
    assert "user_transaction_stats.amount_count_7d" in text.output and "PRESENT" in text.output


def test_quickstart(runner: CliRunner, tmp_path: Path) -> None:
    import re

    res = runner.invoke(cli, ["quickstart", "--dir", str(tmp_path / "qs"), "--users", "20", "--events", "500"])
    assert res.exit_code == 0, (res.output, res.stderr)
    assert "features for user_id=" in res.output and "transaction_amount_check.amount_vs_mean" in res.output
    m = re.search(r"amount_count_1h: (\d+) before the push, (\d+) after", res.output)
    assert m is not None, res.output
    assert int(m.group(2)) == int(m.group(1)) + 3  # the three pushed events are visible at once


def test_quickstart_json_stdout_is_one_json_document(tmp_path: Path) -> None:
    """A real process (libraries that print would show up on fd 1): progress on stderr, JSON alone on stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTEXT_STORE_")}
    p = subprocess.run(
        [*_cli_argv(), "quickstart", "--json", "--dir", str(tmp_path / "qs"), "--users", "10", "--events", "200"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)  # raises on any progress line mixed in
    assert (
        out["join_keys"]["user_id"].startswith("u") and "transaction_amount_check.is_unusual" in out["feature_values"]
    )
    assert "-> apply ..." in p.stderr and "before the push" in p.stderr and "The example repo is in" in p.stderr


def test_synthetic_data_is_deterministic_and_realistic(tmp_path: Path) -> None:
    import numpy as np
    import pyarrow.parquet as pq

    from context_store.scaffold.generator import generate

    end = datetime(2024, 6, 1, tzinfo=UTC)
    a = generate(tmp_path / "a", users=200, events=20_000, seed=3, end=end)
    b = generate(tmp_path / "b", users=200, events=20_000, seed=3, end=end)
    c = generate(tmp_path / "c", users=200, events=20_000, seed=4, end=end)
    for name in a.files:
        assert pq.read_table(a.files[name]).equals(pq.read_table(b.files[name])), name
    txn = pq.read_table(a.files["transactions"])
    assert not txn.equals(pq.read_table(c.files["transactions"]))
    assert txn.num_rows == 20_000
    ts = np.array(txn.column("ts").cast("int64").to_pylist())
    assert ts.min() >= int(a.start.timestamp() * 1e6) and ts.max() < int(end.timestamp() * 1e6)
    amount = np.array([x for x in txn.column("amount").to_pylist() if x is not None])
    assert 0 < txn.column("amount").null_count < 200 and txn.column("category").null_count > 0
    assert np.percentile(amount, 99) / np.median(amount) > 8  # heavy right tail
    users = txn.column("user_id").to_pylist()
    _, counts = np.unique(users, return_counts=True)
    top = np.sort(counts)[::-1]
    assert top[: len(top) // 10].sum() > 0.3 * len(users)  # Zipf-like: the top 10% make >30%
    # Bursty users: someone makes 5+ transactions within 10 minutes.
    by_user: dict[str, list[int]] = {}
    for u, t in zip(users, ts.tolist()):
        by_user.setdefault(u, []).append(t)
    window = 600 * 1_000_000
    assert any(
        any(ts_u[i + 4] - ts_u[i] <= window for i in range(len(ts_u) - 4))
        for ts_u in (sorted(v) for v in by_user.values())
        if len(ts_u) >= 5
    )
    titles = pq.read_table(a.files["items"]).column("title").to_pylist()
    assert len(set(titles)) > len(titles) // 3 and all(t.strip() and t[0].isupper() for t in titles)
    views = pq.read_table(a.files["item_views"])
    assert 0.4 < views.column("rating").null_count / views.num_rows < 0.8  # most views are unrated


def test_apply_asks_for_confirmation_only_on_a_terminal(tmp_path: Path) -> None:
    import pty

    from context_store.scaffold import scaffold

    root = scaffold(tmp_path / "repo", users=5, events=50, items=5).root
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTEXT_STORE_")}

    def apply_on_tty(answer: bytes, *extra: str) -> subprocess.CompletedProcess[str]:
        master, slave = pty.openpty()
        try:
            os.write(master, answer)  # typed ahead; read by click.confirm from the terminal
            return subprocess.run(
                [*_cli_argv(), "apply", "--repo", str(root), *extra],
                stdin=slave,
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
            )
        finally:
            os.close(master)
            os.close(slave)

    p = apply_on_tty(b"n\n")
    assert p.returncode == 1 and "Apply these changes to workspace 'default'?" in p.stdout and "Aborted" in p.stderr
    p = apply_on_tty(b"", "--yes")
    assert p.returncode == 0 and "Apply these changes" not in p.stdout and "Applied version 1" in p.stdout
