"""``context-store list / describe / search``: the catalog of the applied definitions (``serving/catalog.py``).

They read the registry only (no online store), so they work wherever ``plan`` does. ``--json`` prints
the shapes of ``GET /v1/catalog*``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from ..limits import CATALOG_K, CATALOG_K_DEFAULT
from ._common import echo_json, handle_errors, repo_options, store_from_ctx

if TYPE_CHECKING:
    from ..serving.catalog import CatalogItem

__all__ = ["list_cmd", "describe_cmd", "search_cmd"]


def _tags(item: CatalogItem) -> str:
    return ",".join(f"{k}={v}" for k, v in item.tags.items())


def _table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for r in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(r, widths, strict=False)]
        click.echo("  ".join([*cells, r[-1]]).rstrip())


@click.command("list")
@click.option("--kind", "-k", default=None, help="Only this kind: feature_view, feature_service, entity, ...")
@click.option("--tag", "-t", default=None, metavar="KEY[=VALUE]", help="Only definitions with this tag.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (as GET /v1/catalog returns it).")
@repo_options
@handle_errors
def list_cmd(kind: str | None, tag: str | None, as_json: bool) -> None:
    """The applied definitions: kind, name, owner, tags, description."""
    store = store_from_ctx()
    items = store.catalog(kind=kind, tag=tag)
    if as_json:
        echo_json({"workspace": store.workspace, "items": [i.to_dict() for i in items]})
        return
    if not items:
        click.echo("no definitions match" if kind or tag else "nothing applied")
        return
    rows = [(i.kind, i.name, i.owner or "-", _tags(i) or "-", i.description) for i in items]
    _table(rows, ("KIND", "NAME", "OWNER", "TAGS", "DESCRIPTION"))


@click.command("describe")
@click.argument("name")
@click.option("--kind", "-k", default=None, help="The kind, when several kinds share NAME.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (as GET /v1/catalog/NAME returns it).")
@repo_options
@handle_errors
def describe_cmd(name: str, kind: str | None, as_json: bool) -> None:
    """One definition: owner, tags, features and its lineage (source -> view -> service -> context)."""
    item = store_from_ctx().describe(name, kind=kind)
    if as_json:
        echo_json(item.describe_dict())
        return
    click.echo(f"{item.kind.replace('_', ' ')} {item.name}")
    for label, value in (
        ("description", item.description),
        ("owner", item.owner),
        ("tags", _tags(item)),
        ("entities", ", ".join(item.entities)),
        ("upstream", ", ".join(f"{r.name} ({r.kind})" for r in item.upstream)),
        ("downstream", ", ".join(f"{r.name} ({r.kind})" for r in item.downstream)),
    ):
        if value:
            click.echo(f"  {label + ':':<12} {value}")
    if item.features:
        click.echo("  features:")
        for f in item.features:
            click.echo(f"    {f.name}  {f.dtype or '?'}" + (f"  {f.description}" if f.description else ""))
    click.echo("  lineage:")
    for r in item.lineage:
        mark = "*" if r == item.ref else " "
        click.echo(f"   {mark} {r.kind:<22} {r.name}")


@click.command("search")
@click.argument("text", nargs=-1, required=True)
@click.option("-n", "k", type=click.IntRange(CATALOG_K.lo, CATALOG_K.hi), default=CATALOG_K_DEFAULT, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (as GET /v1/catalog/search returns it).")
@repo_options
@handle_errors
def search_cmd(text: tuple[str, ...], k: int, as_json: bool) -> None:
    """Find definitions by name, description, tag or feature name (semantic with the workspace's embedder)."""
    store = store_from_ctx()
    query = " ".join(text)
    hits = store.search_catalog(query, k)
    if as_json:
        echo_json({"workspace": store.workspace, "query": query, "items": [h.to_dict() for h in hits]})
        return
    if not hits:
        click.echo(f"nothing matches {query!r}")
        return
    _table(
        [(f"{h.score:.2f}", h.item.kind, h.item.name, h.item.description) for h in hits],
        ("SCORE", "KIND", "NAME", "DESCRIPTION"),
    )
