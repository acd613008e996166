"""``context-store forget KEY=VALUE``: erase an entity from every store (right to erasure).

``--audit`` lists the audit of forgets instead (no entity data: a salted hash of each value).
Asks for confirmation only in a terminal, like ``apply``. See docs/erasure.md.
"""

from __future__ import annotations

import sys

import click

from ._common import echo_json, handle_errors, parse_pairs, repo_options, store_from_ctx

__all__ = ["forget"]


@click.command("forget")
@click.argument("keys", nargs=-1, metavar="KEY=VALUE")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--audit", is_flag=True, help="List the audit of forgets (of KEY=VALUE only, when given).")
@repo_options
@handle_errors
def forget(keys: tuple[str, ...], yes: bool, as_json: bool, audit: bool) -> None:
    """Erase the entity KEY=VALUE (e.g. user_id=u0001) from the offline, online and vector stores, for good.

    Later backfills, materializes, late events and replays do not bring it back; its activity after the
    forget is new data. Each forget is audited (who, when, counts; not the data).
    """
    from ..serving.forget import cli_actor

    store = store_from_ctx()
    join_keys = parse_pairs(keys, "join key")
    if audit:
        entries = store.forget_audit(join_keys or None)
        if as_json:
            echo_json(entries)
            return
        for e in entries:
            counts = ", ".join(f"{k}={v}" for k, v in sorted(e["counts"].get("online", {}).items()))
            click.echo(f"{e['at']}  {e['actor']}  {e['join_key']}#{e['value_hash'][:12]}  total={e['total']}  {counts}")
        if not entries:
            click.echo("No forgets recorded.")
        return
    if not join_keys:
        raise click.UsageError("name the entity to forget: context-store forget KEY=VALUE (e.g. user_id=u0001)")
    if not yes and sys.stdin.isatty():
        (k, v), *_ = join_keys.items()
        click.confirm(
            f"Erase every record of {k}={v} from workspace '{store.workspace}' (cannot be undone)?", abort=True
        )
    res = store.forget(join_keys, actor=cli_actor())
    if as_json:
        echo_json(res.to_dict())
        return
    click.echo(f"Forgot {res.join_key}={res.value} at {res.to_dict()['forgotten_at']}: {res.total} records erased.")
    for table, n in sorted(res.offline.items()):
        click.echo(f"  offline {table}: {n} rows")
    for what, n in sorted(res.online.items()):
        click.echo(f"  online {what}: {n}")
    for table, n in sorted(res.vectors.items()):
        click.echo(f"  vectors {table}: {n} items")
