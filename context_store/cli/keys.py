"""``context-store keys create|list|revoke``: API keys (stored hashed; shared by all workspaces)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ._common import config_from_ctx, handle_errors, repo_options

if TYPE_CHECKING:
    from ..server.keys import KeyStore

__all__ = ["keys"]


def _store() -> KeyStore:
    from ..server.keys import KeyStore, key_store_path

    # One key file per data dir, shared by every workspace.
    return KeyStore(key_store_path(config_from_ctx().data_dir))


@click.group("keys")
def keys() -> None:
    """Create, list and revoke API keys."""


@keys.command("create")
@click.option(
    "--scope",
    default="read",
    show_default=True,
    type=click.Choice(["read", "ingest", "admin"]),
    help="read: serve features; ingest: also push events; admin: everything.",
)
@click.option("--description", default="", help="A note shown by `keys list`.")
@click.option("--rate-limit", default=None, type=float, help="Requests/second for this key (default: the server's).")
@repo_options
@handle_errors
def create(scope: str, description: str, rate_limit: float | None) -> None:
    """Create a key for --workspace and print it (alone, on the last line). It is shown only once."""
    workspace = config_from_ctx().workspace
    key, rec = _store().create(workspace, scope, description=description, rate_limit=rate_limit)
    click.echo(
        f"created key {rec.key_id} (workspace={rec.workspace}, scope={rec.scope}); "
        "store it now, it is not shown again:",
        err=True,
    )
    click.echo(key)


@keys.command("list")
@click.option("--all-workspaces", is_flag=True, help="Keys of every workspace.")
@click.option("--active", is_flag=True, help="Hide revoked keys.")
@repo_options
@handle_errors
def list_keys(all_workspaces: bool, active: bool) -> None:
    """List the keys of --workspace (ids, never secrets)."""
    workspace = None if all_workspaces else config_from_ctx().workspace
    rows = _store().list(workspace, include_revoked=not active)
    click.echo(f"{'KEY ID':<10} {'WORKSPACE':<20} {'SCOPE':<7} {'CREATED (UTC)':<20} {'STATUS':<8} DESCRIPTION")
    for k in rows:
        status = "active" if k.active else "revoked"
        click.echo(
            f"{k.key_id:<10} {k.workspace:<20} {k.scope:<7} "
            f"{k.created_at:%Y-%m-%d %H:%M:%S}  {status:<8} {k.description}"
        )


@keys.command("revoke")
@click.argument("key_id")
@repo_options
@handle_errors
def revoke(key_id: str) -> None:
    """Revoke a key by id (or by the full key). Running servers stop accepting it within a second."""
    rec = _store().revoke(key_id)
    click.echo(f"revoked key {rec.key_id} (workspace={rec.workspace}, scope={rec.scope})")
