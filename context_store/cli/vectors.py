"""``context-store similar VIEW --text ...`` and ``context-store knowledge search|index``."""

from __future__ import annotations

import json
from typing import Any

import click

from ..errors import InvalidInputError
from ._common import echo_json, handle_errors, repo_options, store_from_ctx

__all__ = ["similar", "knowledge"]


def _parse_filter(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InvalidInputError(f"--filter must be a JSON object: {e.msg}", field="filter") from None
    if not isinstance(value, dict):
        raise InvalidInputError('--filter must be a JSON object such as \'{"category": "shoes"}\'', field="filter")
    return value


def _parse_vector(raw: str | None) -> list[float] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InvalidInputError(f"--vector must be a JSON list of numbers: {e.msg}", field="vector") from None
    return value


@click.command()
@click.argument("view")
@click.option("--text", "-t", default=None, help="Query text (embedded with the view's embedder).")
@click.option("--entity-id", "-e", default=None, help="Find items similar to this entity (itself excluded).")
@click.option("--vector", default=None, metavar="JSON", help="Query vector as a JSON list of numbers.")
@click.option("-k", "k", default=10, show_default=True, type=int, help="How many results (1..100).")
@click.option(
    "--filter", "filter_", default=None, metavar="JSON", help='Attribute filter, e.g. \'{"price": {"$lt": 50}}\'.'
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@repo_options
@handle_errors
def similar(
    view: str, text: str | None, entity_id: str | None, vector: str | None, k: int, filter_: str | None, as_json: bool
) -> None:
    """Find the items of embedding view VIEW most similar to a text, an entity or a vector."""
    store = store_from_ctx()
    result = store.find_similar(
        view, text=text, entity_id=entity_id, vector=_parse_vector(vector), k=k, filter=_parse_filter(filter_)
    )
    if as_json:
        echo_json(
            {
                "view": result.view,
                "items": [
                    {"entity_id": i.entity_id, "score": i.score, "attributes": i.attributes} for i in result.items
                ],
            }
        )
        return
    if not result.items:
        click.echo("no results")
    for rank, item in enumerate(result.items, start=1):
        attrs = "  ".join(f"{a}={v}" for a, v in item.attributes.items())
        click.echo(f"{rank:>3}. {item.entity_id}  {item.score:.4f}  {attrs}".rstrip())


@click.group()
def knowledge() -> None:
    """Search or (re)index knowledge collections (documents for RAG)."""


@knowledge.command("search")
@click.argument("name")
@click.argument("query")
@click.option("-k", "k", default=5, show_default=True, type=int, help="How many chunks (1..100).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@repo_options
@handle_errors
def search(name: str, query: str, k: int, as_json: bool) -> None:
    """Search knowledge collection NAME for QUERY."""
    store = store_from_ctx()
    result = store.search_knowledge(name, query, k=k)
    if as_json:
        echo_json(
            {
                "knowledge": result.knowledge,
                "query": result.query,
                "chunks": [
                    {
                        "chunk_id": c.chunk_id,
                        "score": c.score,
                        "source": c.source,
                        "start": c.start,
                        "end": c.end,
                        "text": c.text,
                    }
                    for c in result.chunks
                ],
            }
        )
        return
    if not result.chunks:
        click.echo("no results")
    for rank, c in enumerate(result.chunks, start=1):
        click.echo(f"{rank}. {c.source} [{c.start}:{c.end}]  score {c.score:.4f}")
        text = " ".join(c.text.split())
        click.echo(f"   {text[:300]}{'...' if len(text) > 300 else ''}")


@knowledge.command("index")
@click.argument("names", nargs=-1)
@repo_options
@handle_errors
def index(names: tuple[str, ...]) -> None:
    """(Re)index knowledge collections NAMES (default: all); unchanged files are skipped."""
    store = store_from_ctx()
    stats = store.index_knowledge(list(names) or None, progress=True)
    for name, s in stats.items():
        click.echo(
            f"{name}: {s['files']} files, {s['reindexed']} re-indexed ({s['chunks']} chunks), {s['removed']} removed"
        )
