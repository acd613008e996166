"""``context-store mcp``: the MCP tool server over stdio, for one workspace.

An MCP client (Claude Desktop, an IDE, the Inspector) starts this command and speaks JSON-RPC on
its stdin/stdout; nothing else may write to stdout. The workspace is the operator's choice here
(``--workspace``); over HTTP it comes from the caller's API key instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ._common import handle_errors, repo_options, store_from_ctx

__all__ = ["mcp"]

if TYPE_CHECKING:
    from ..serving.store import ContextStore


@click.command("mcp")
@repo_options
@handle_errors
def mcp() -> None:
    """Serve the MCP tools (get_user_context, get_features, ...) over stdio."""
    store = store_from_ctx()
    _check_workspace(store)
    try:
        from context_store.tools.server import run_stdio
    except ImportError as e:  # the mcp SDK is an optional extra
        raise click.ClickException(
            f"the MCP server needs the mcp SDK: pip install 'context-store[mcp]' ({e})"
        ) from None
    try:
        run_stdio(store=store)
    except KeyboardInterrupt:
        pass


def _check_workspace(store: ContextStore) -> None:
    """Fail before the stdio handshake (an MCP client shows only "Connection closed" once it started):
    one line naming the workspace and the ones that have something applied."""
    from ..errors import NotFoundError
    from ..registry.registry import applied_workspaces

    try:
        _ = store.definitions
    except NotFoundError as e:
        if e.field != "workspace":
            raise
        known = applied_workspaces(store.config.registry_path)
        raise click.ClickException(
            f"workspace {store.workspace!r} has nothing applied in {store.config.repo} "
            f"(workspaces applied there: {', '.join(known) or 'none'}); pass one of them with --workspace, "
            f"or run `context-store apply --workspace {store.workspace}`"
        ) from None
