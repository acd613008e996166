"""``context-store mcp``: the MCP tool server over stdio, for one workspace.

An MCP client (Claude Desktop, an IDE, the Inspector) starts this command and speaks JSON-RPC on
its stdin/stdout; nothing else may write to stdout. The workspace is the operator's choice here
(``--workspace``); over HTTP it comes from the caller's API key instead.
"""

from __future__ import annotations

import click

from ._common import handle_errors, repo_options, store_from_ctx

__all__ = ["mcp"]


@click.command("mcp")
@repo_options
@handle_errors
def mcp() -> None:
    """Serve the MCP tools (get_user_context, get_features, ...) over stdio."""
    try:
        from context_store.tools.server import run_stdio
    except ImportError as e:  # the mcp SDK is an optional extra
        raise click.ClickException(
            f"the MCP server needs the mcp SDK: pip install 'context-store[mcp]' ({e})"
        ) from None
    try:
        run_stdio(store=store_from_ctx())
    except KeyboardInterrupt:
        pass
