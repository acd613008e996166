"""``context-store keys create|list|revoke|rotate``: API keys (stored hashed in one file for all workspaces).

Administration is workspace-scoped: ``list``, ``revoke`` and ``rotate`` act on the keys of ``--workspace``
only; ``--all-workspaces`` acts across workspaces, and says so.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import click

from ..errors import InvalidInputError
from ._common import config_from_ctx, handle_errors, repo_options

if TYPE_CHECKING:
    from ..server.keys import ApiKey, KeyStore

__all__ = ["keys"]

_SCOPES = ["read", "ingest", "admin", "metrics"]  # server.keys.SCOPES (not imported: keeps --help fast)
_ALL_WORKSPACES = click.option(
    "--all-workspaces", is_flag=True, help="Act on a key of any workspace (default: only --workspace's keys)."
)


def _store() -> KeyStore:
    from ..server.keys import KeyStore, key_store_path

    # One key file per data dir, shared by every workspace.
    return KeyStore(key_store_path(config_from_ctx().data_dir))


def _duration(value: str, field: str) -> timedelta:
    """``30d``, ``12h``, ``15m`` (or ``s``, ``w``); ``0`` for none."""
    from ..definitions.windows import parse_duration

    if value.strip() == "0":
        return timedelta(0)
    try:
        return parse_duration(value, field.lstrip("-"))
    except ValueError as e:
        raise InvalidInputError(str(e), field=field) from None


def _scope_workspace(all_workspaces: bool) -> str | None:
    """The workspace an admin command is limited to; None (with a notice on stderr) for --all-workspaces."""
    if all_workspaces:
        click.echo("acting across all workspaces (--all-workspaces)", err=True)
        return None
    return config_from_ctx().workspace


def _when(t: datetime | None) -> str:
    return "-" if t is None else f"{t:%Y-%m-%d %H:%M:%S}"


def _describe(rec: ApiKey) -> str:
    expiry = "" if rec.expires_at is None else f", expires {_when(rec.expires_at)} UTC"
    subject = "" if rec.subject is None else f", subject={rec.subject}"
    return f"{rec.key_id} (workspace={rec.workspace}, scope={rec.scope}{subject}{expiry})"


@click.group("keys")
def keys() -> None:
    """Create, list, revoke and rotate API keys."""


@keys.command("create")
@click.option(
    "--scope",
    default="read",
    show_default=True,
    type=click.Choice(_SCOPES),
    help="read: serve features; ingest: also push events; admin: everything; metrics: only scrape /metrics.",
)
@click.option("--description", default="", help="A note shown by `keys list`.")
@click.option("--rate-limit", default=None, type=float, help="Requests/second for this key (default: the server's).")
@click.option("--expires", default=None, metavar="DURATION", help="Expire the key after e.g. 30d, 12h or 45m.")
@click.option(
    "--subject",
    default=None,
    metavar="JOIN_KEY=VALUE",
    help="Bind the key to one entity, e.g. user_id=u0001: every call may touch only that entity.",
)
@repo_options
@handle_errors
def create(scope: str, description: str, rate_limit: float | None, expires: str | None, subject: str | None) -> None:
    """Create a key for --workspace and print it (alone, on the last line). It is shown only once."""
    workspace = config_from_ctx().workspace
    expires_in = None if expires is None else _duration(expires, "--expires")
    if expires_in is not None and expires_in <= timedelta(0):
        raise InvalidInputError("--expires must be a positive duration such as 30d", field="--expires")
    from ..access import Subject

    bound = None if subject is None else Subject.parse(subject, field="--subject")
    key, rec = _store().create(
        workspace, scope, description=description, rate_limit=rate_limit, expires_in=expires_in, subject=bound
    )
    click.echo(f"created key {_describe(rec)}; store it now, it is not shown again:", err=True)
    click.echo(key)


@keys.command("list")
@click.option("--all-workspaces", is_flag=True, help="Keys of every workspace.")
@click.option("--active", is_flag=True, help="Hide revoked and expired keys.")
@repo_options
@handle_errors
def list_keys(all_workspaces: bool, active: bool) -> None:
    """List the keys of --workspace (ids, never secrets), with expiry and last use (UTC)."""
    workspace = _scope_workspace(all_workspaces)
    rows = _store().list(workspace, include_revoked=not active)
    click.echo(
        f"{'KEY ID':<10} {'WORKSPACE':<20} {'SCOPE':<7} {'CREATED (UTC)':<19}  {'EXPIRES (UTC)':<19}  "
        f"{'LAST USED (UTC)':<19}  {'STATUS':<8} {'SUBJECT':<20} DESCRIPTION"
    )
    for k in rows:
        click.echo(
            f"{k.key_id:<10} {k.workspace:<20} {k.scope:<7} {_when(k.created_at):<19}  {_when(k.expires_at):<19}  "
            f"{_when(k.last_used_at):<19}  {k.status:<8} {str(k.subject or '-'):<20} {k.description}"
        )


@keys.command("revoke")
@click.argument("key_id")
@_ALL_WORKSPACES
@repo_options
@handle_errors
def revoke(key_id: str, all_workspaces: bool) -> None:
    """Revoke a key of --workspace by id (or by the full key). Running servers refuse it within a second."""
    rec = _store().revoke(key_id, _scope_workspace(all_workspaces))
    click.echo(f"revoked key {rec.key_id} (workspace={rec.workspace}, scope={rec.scope})")


@keys.command("rotate")
@click.argument("key_id")
@click.option(
    "--grace",
    default="1h",
    show_default=True,
    metavar="DURATION",
    help="How long the old key keeps working (e.g. 1h, 10m, 0 for not at all).",
)
@_ALL_WORKSPACES
@repo_options
@handle_errors
def rotate(key_id: str, grace: str, all_workspaces: bool) -> None:
    """Replace a key: a new key with the same workspace, scope, subject, description, rate limit and lifetime is printed
    (alone, on the last line; shown only once); the old key expires after --grace."""
    key, new, old = _store().rotate(key_id, _duration(grace, "--grace"), _scope_workspace(all_workspaces))
    click.echo(
        f"rotated key {old.key_id} -> {_describe(new)}; {old.key_id} expires {_when(old.expires_at)} UTC. "
        "Store the new key now, it is not shown again:",
        err=True,
    )
    click.echo(key)
