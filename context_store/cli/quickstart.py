"""``context-store quickstart``: the whole embedded flow on throw-away data, in one command."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click

from ._common import handle_errors, print_vector, repo_options
from .core import print_result

__all__ = ["quickstart_cmd", "run_quickstart"]

T = TypeVar("T")
SERVICE = "fraud_detection_service"


def _step(label: str, fn: Callable[[], T], err: bool = False) -> T:
    click.echo(f"-> {label} ...", err=err)
    t0 = time.perf_counter()
    out = fn()
    click.echo(f"   done in {time.perf_counter() - t0:.2f} s", err=err)
    return out


def run_quickstart(
    directory: Path,
    *,
    users: int = 100,
    events: int = 5000,
    workspace: str | None = None,
    online_store: str | None = None,
    as_json: bool = False,
    keep: bool = True,
) -> Any:
    """init -> apply -> backfill -> materialize -> push -> get in ``directory``; returns the last vector."""
    from ..scaffold import scaffold
    from ..serving.store import ContextStore

    err = as_json  # with --json, stdout carries exactly one JSON document: progress goes to stderr

    def say(text: str) -> None:
        click.echo(text, err=err)

    def step(label: str, fn: Callable[[], T]) -> T:
        return _step(label, fn, err=err)

    res = step(
        f"init {directory} ({users} users, {events} transactions)",
        lambda: scaffold(directory, users=users, events=events),
    )
    user = res.data.busiest_user
    # The embedded default unless asked otherwise: quickstart never needs a server.
    with ContextStore(res.root, workspace=workspace, online_store=online_store or "sqlite") as store:
        plan = step("apply", lambda: store.apply())
        say(f"   registered {len(plan.changes)} objects (version {plan.to_version})")
        print_result(step("backfill", lambda: store.backfill(progress=True)), err=err)
        print_result(step("materialize", lambda: store.materialize(progress=True)), err=err)
        before = store.get_features(SERVICE, {"user_id": user}, {"amount": 250.0})
        now = datetime.now(UTC)
        rows = [
            {
                "user_id": user,
                "amount": amt,
                "merchant": "Quickstart Online",
                "category": "online",
                "country": "US",
                "ts": now - timedelta(seconds=s),
            }
            for amt, s in ((19.99, 30), (480.0, 20), (1250.0, 10))
        ]
        try:
            step(f"push {len(rows)} live transactions for {user}", lambda: store.push("transactions", rows))
            pushed = True
        except Exception as e:  # noqa: BLE001 - the demo goes on without live events
            say(f"   skipped: stream ingest is unavailable ({type(e).__name__}: {e})")
            pushed = False
        vector = step(
            f"get_features({SERVICE!r}, user_id={user!r}, amount=250.0)",
            lambda: store.get_features(SERVICE, {"user_id": user}, {"amount": 250.0}),
        )
        say("")
        print_vector(vector, as_json=as_json)
        key = "user_transaction_stats.amount_count_1h"
        if pushed and key in vector.feature_values:
            say(f"\n{key}: {before.feature_values.get(key)} before the push, {vector.feature_values[key]} after.")
        if keep:
            say(
                f"\nThe example repo is in {res.root}; try: context-store get --repo {res.root} "
                f"{SERVICE} user_id={user} --request amount=250"
            )
        else:
            say(
                "\nDone (the temporary repo is removed; `--keep` or `--dir DIR` keeps it). "
                "Next: `context-store init my_repo` and the README's Getting started."
            )
        return vector


@click.command("quickstart")
@click.option(
    "--dir",
    "directory",
    default=None,
    type=click.Path(file_okay=False),
    help="Create the example repo here (kept) instead of a temporary directory.",
)
@click.option("--keep", is_flag=True, help="Keep the temporary directory.")
@click.option("--users", default=100, show_default=True, type=click.IntRange(1), help="Synthetic users.")
@click.option("--events", default=5000, show_default=True, type=click.IntRange(1), help="Synthetic transactions.")
@click.option("--json", "as_json", is_flag=True, help="Print the final feature vector as JSON.")
@repo_options
@handle_errors
def quickstart_cmd(directory: str | None, keep: bool, users: int, events: int, as_json: bool) -> None:
    """Scaffold an example repo, apply, backfill, materialize, push live events and look up features.

    Runs on the embedded store (no Redis, no server) in a temporary directory.
    """
    opts = click.get_current_context().meta.get("context_store.options", {})
    tmp = None
    if directory is None and opts.get("repo") not in (None, "."):
        directory = opts["repo"]
    if directory is None:
        tmp = Path(tempfile.mkdtemp(prefix="context-store-quickstart-"))
        directory = str(tmp / "repo")
    try:
        run_quickstart(
            Path(directory),
            users=users,
            events=events,
            workspace=opts.get("workspace"),
            online_store=opts.get("online_store"),
            as_json=as_json,
            keep=tmp is None or keep,
        )
    finally:
        if tmp is not None and not keep:
            shutil.rmtree(tmp, ignore_errors=True)
