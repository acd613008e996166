"""``context-store context ENTITY_ID``: the user context an agent gets (``ContextStore.get_user_context``)."""

from __future__ import annotations

import click

from ..limits import MAX_TOKENS
from ._common import echo_json, handle_errors, repo_options, store_from_ctx

__all__ = ["context"]


@click.command("context")
@click.argument("entity_id")
@click.option("--service", "-s", default=None, help="Context service (default: the first one).")
@click.option("--max-tokens", type=int, default=None, help=f"Token budget of the rendered text ({MAX_TOKENS}).")
@click.option("--as-of", default=None, metavar="TIME", help="Replay the context at this ISO-8601 time.")
@click.option("--query", "-q", default=None, help="A question: adds matching knowledge chunks.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole context as JSON (as REST and MCP return it).")
@repo_options
@handle_errors
def context(
    entity_id: str, service: str | None, max_tokens: int | None, as_of: str | None, query: str | None, as_json: bool
) -> None:
    """Features, recent events, similar items and knowledge of ENTITY_ID, with provenance."""
    uc = store_from_ctx().get_user_context(
        entity_id, context_service=service, max_tokens=max_tokens, as_of=as_of, query=query
    )
    if as_json:
        echo_json(uc.to_dict())
    else:
        click.echo(uc.text)
