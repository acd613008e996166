"""Lifecycle commands: init, plan, apply, backfill, materialize, get."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import InvalidInputError, NotFoundError
from ._common import (
    echo_json,
    handle_errors,
    parse_pairs,
    parse_time,
    print_vector,
    repo_options,
    store_from_ctx,
    to_jsonable,
)

__all__ = [
    "init_cmd",
    "plan_cmd",
    "apply_cmd",
    "backfill_cmd",
    "materialize_cmd",
    "get_cmd",
    "coerce_value",
    "print_result",
]

if TYPE_CHECKING:
    from ..serving.store import ContextStore


def print_result(result: Any, err: bool = False) -> None:
    """Print what a backfill/materialize returned (a summary object, dict or nothing); ``err``: to stderr."""
    if result is None:
        return
    if isinstance(result, dict):
        for k, v in result.items():
            click.echo(f"  {k}: {to_jsonable(v)}", err=err)
        return
    text = str(result)
    if text and not text.startswith("<"):
        click.echo(text, err=err)


@click.command("init")
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--users", default=100, show_default=True, type=click.IntRange(1), help="Number of synthetic users.")
@click.option(
    "--events",
    default=5000,
    show_default=True,
    type=click.IntRange(1),
    help="Number of synthetic transactions (and about as many item views).",
)
@click.option("--items", default=200, show_default=True, type=click.IntRange(1), help="Number of catalog items.")
@click.option("--days", default=14, show_default=True, type=click.IntRange(1), help="Days of history, ending now.")
@click.option("--seed", default=7, show_default=True, type=int, help="Random seed (same seed, same data).")
@click.option("--force", is_flag=True, help="Write into a non-empty directory, replacing the example files.")
@repo_options
@handle_errors
def init_cmd(directory: str | None, users: int, events: int, items: int, days: int, seed: int, force: bool) -> None:
    """Scaffold a feature repo in DIRECTORY with example definitions and synthetic data.

    Two use cases: fraud detection (card transactions) and personalization (item views,
    item title embeddings, help articles, an agent context).
    """
    from ..scaffold import scaffold

    target = directory or click.get_current_context().meta.get("context_store.options", {}).get("repo") or "."
    res = scaffold(target, users=users, events=events, items=items, days=days, seed=seed, force=force)
    click.echo(f"Created a feature repo in {res.root}")
    for f in res.files:
        click.echo(f"  {f.relative_to(res.root)}")
    rows = ", ".join(f"{n} {k}" for k, n in res.data.rows.items())
    click.echo(f"Synthetic data: {rows} ({res.data.start:%Y-%m-%d} .. {res.data.end:%Y-%m-%d %H:%M} UTC).")
    cd = "" if res.root == Path.cwd().resolve() else f"cd {directory or target} && "
    click.echo("Next:")
    click.echo(f"  {cd}context-store plan && context-store apply")
    click.echo("  context-store backfill && context-store materialize")
    click.echo(f"  context-store get fraud_detection_service user_id={res.data.busiest_user} --request amount=250")


@click.command("plan")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@repo_options
@handle_errors
def plan_cmd(as_json: bool) -> None:
    """Show what `apply` would change: added, changed and removed objects and what each forces."""
    plan = store_from_ctx().plan()
    if as_json:
        echo_json(plan.to_dict())
    else:
        click.echo(str(plan))


@click.command("apply")
@click.option("--force", is_flag=True, help="Apply breaking changes too.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--take-over",
    is_flag=True,
    help="Move the workspace's online namespace (Redis db + workspace) to this repo when another deployment "
    "holds it; that deployment's workers and servers then refuse to run there.",
)
@repo_options
@handle_errors
def apply_cmd(force: bool, yes: bool, take_over: bool = False) -> None:
    """Register the repo's definitions in the workspace (a new registry version).

    Refuses breaking changes without --force. Asks for confirmation when run in a terminal. Refuses when
    another deployment (another repo) holds the workspace's online namespace, unless --take-over.
    """
    store = store_from_ctx()
    if take_over:
        previous = store.take_over()
        if previous is not None:
            click.echo(
                f"Moved workspace '{store.workspace}' to this repo; it belonged to deployment {previous.describe()}, "
                "whose workers stop consuming. Its online state stays: run `context-store materialize` to load this "
                "repo's."
            )
    else:
        _check_deployment(store)
    plan = store.plan()
    click.echo(str(plan))
    if plan.is_empty and plan.from_version:
        click.echo("Nothing to apply.")
        return
    if plan.breaking and not force:
        names = ", ".join(f"{c.kind.replace('_', ' ')} '{c.name}'" for c in plan.breaking)
        raise click.ClickException(
            f"refusing {len(plan.breaking)} breaking change(s) ({names}); re-run with --force to apply them"
        )
    if not yes and sys.stdin.isatty():
        click.confirm(f"Apply these changes to workspace '{store.workspace}'?", abort=True)
    done = store.apply(force=force)
    click.echo(f"Applied version {done.to_version} to workspace '{store.workspace}'.")
    forces = done.forces or plan.forces
    steps = store.applied_coverage.next_steps() if store.applied_coverage is not None else ""
    if steps:  # features of a live workspace not materialized yet: name them and the commands
        click.echo(steps)
    elif "rebackfill" in forces or "reindex" in forces:
        click.echo(
            "Next: context-store backfill" + (" && context-store materialize" if "rematerialize" in forces else "")
        )
    elif "rematerialize" in forces:
        click.echo("Next: context-store materialize")


@click.command("backfill")
@click.option("--start", default=None, metavar="TIME", help="Only events at or after TIME (ISO-8601, UTC).")
@click.option("--end", default=None, metavar="TIME", help="Only events before TIME (ISO-8601, UTC).")
@click.option("--view", "views", multiple=True, metavar="NAME", help="Only this feature view (repeatable).")
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Compute locally, or as Ray tasks (cluster from --address / CONTEXT_STORE_RAY_ADDRESS, else a local one).",
)
@click.option(
    "--address",
    default=None,
    metavar="ADDR",
    help="With --engine ray: join this Ray cluster (ray.init(address=...), e.g. ray://head:10001 or auto).",
)
@repo_options
@handle_errors
def backfill_cmd(
    start: str | None, end: str | None, views: tuple[str, ...], engine: str = "local", address: str | None = None
) -> None:
    """Compute feature views from their batch sources into the offline store."""
    s, e = parse_time(start, "start"), parse_time(end, "end")
    if address and engine != "ray":
        raise InvalidInputError("--address joins a Ray cluster: use it with --engine ray", field="address")
    if s and e and s >= e:
        raise InvalidInputError(f"--start {start} must be before --end {end}", field="start")
    store = store_from_ctx()
    _check_views(store, views, indexes=True)
    print_result(
        store.backfill(
            start=s, end=e, views=list(views) or None, progress=True, engine=engine, ray_address=address, warm=False
        )
    )
    click.echo("Backfill done.")


@click.command("materialize")
@click.option("--view", "views", multiple=True, metavar="NAME", help="Only this feature view (repeatable).")
@click.option(
    "--full",
    is_flag=True,
    help="Reload every view's whole history (within its windows), ignoring watermarks: "
    "restores online state after the online store lost it (e.g. Redis restarted empty).",
)
@repo_options
@handle_errors
def materialize_cmd(views: tuple[str, ...], full: bool = False) -> None:
    """Load online state (latest values, window tiles) from the offline store."""
    store = store_from_ctx()
    _check_views(store, views)
    print_result(store.materialize(views=list(views) or None, progress=True, full=full))
    click.echo("Materialize done.")


def _check_deployment(store: ContextStore) -> None:
    """Refuse before printing a plan when another deployment holds the online namespace (an unreachable
    store does not stop an apply: serve, worker and push claim the namespace when they start)."""
    from ..errors import UnavailableError

    try:
        store.check_deployment()
    except UnavailableError:
        pass


def _check_views(store: ContextStore, views: tuple[str, ...], indexes: bool = False) -> None:
    """Every ``--view`` names a feature view (or, with ``indexes`` as backfill builds them, an embedding
    view or knowledge); an unknown one is listed with every name the command accepts."""
    defs = store.definitions
    groups = {"feature views": sorted(defs.feature_views)}
    if indexes:
        groups |= {"embedding views": sorted(defs.embedding_views), "knowledge": sorted(defs.knowledge)}
    for v in views:
        if not any(v in names for names in groups.values()):
            known = "; ".join(f"{g}: {', '.join(names)}" for g, names in groups.items() if names) or "none"
            what = "view" if indexes else "feature view"
            raise NotFoundError(f"unknown {what} {v!r} (--view); known {known}", field="view")


def _check_known(given: dict[str, str], known: list[str], what: str, service: str, where: str) -> None:
    """A misspelt name (``usr_id=``) is named as unknown, with the close match and the known ones,
    instead of surfacing later as a missing key."""
    import difflib

    for name in given:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            takes = f"known {what}s: {', '.join(known)}" if known else f"it takes no {what}s"
            raise InvalidInputError(
                f"unknown {what} {name!r}{where} for feature service {service!r}; {hint}{takes}", field=name
            )


def coerce_value(raw: str, dtype: Any, field: str) -> Any:
    """Turn a command-line string into a value of ``dtype`` (a cs dtype), naming the field on failure."""
    name = getattr(dtype, "name", "string")
    try:
        if name == "int64":
            return int(raw)
        if name == "float64":
            return float(raw)
        if name == "bool":
            low = raw.strip().lower()
            if low in ("true", "1", "yes"):
                return True
            if low in ("false", "0", "no"):
                return False
            raise ValueError(raw)
        if name in ("array", "embedding"):
            v = json.loads(raw)
            if not isinstance(v, list):
                raise ValueError(raw)
            return v
    except (ValueError, json.JSONDecodeError):
        raise InvalidInputError(f"{field}={raw!r} is not a valid {name}", field=field) from None
    return raw


@click.command("get")
@click.argument("service")
@click.argument("keys", nargs=-1, metavar="KEY=VALUE...")
@click.option(
    "--request", "-q", "request", multiple=True, metavar="NAME=VALUE", help="Request-context field (repeatable)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the feature vector as JSON.")
@click.option("--time", "at", default=None, metavar="TIME", help="Request time (ISO-8601, UTC; default: now).")
@repo_options
@handle_errors
def get_cmd(service: str, keys: tuple[str, ...], request: tuple[str, ...], as_json: bool, at: str | None) -> None:
    """Look up the features of SERVICE for one entity, e.g. `get fraud_detection_service user_id=u1 -q amount=25`."""
    from ..definitions import RealtimeFeatureView

    store = store_from_ctx()
    join_raw = parse_pairs(keys, "join key")
    req_raw = parse_pairs(request, "request field")
    defs = store.definitions
    svc = defs.feature_service(service)
    key_types: dict[str, Any] = {}
    for view in svc.views:
        srcs = view.feature_view_sources if isinstance(view, RealtimeFeatureView) else [view]
        for v in srcs:
            for f in v.join_key_fields:
                key_types.setdefault(f.name, f.dtype)
    _check_known(join_raw, list(key_types), "join key", service, "")
    join_keys = {k: coerce_value(v, key_types.get(k), k) for k, v in join_raw.items()}
    req_types = defs.request_fields(svc)
    _check_known(req_raw, list(req_types), "request field", service, " (--request)")
    request_context = {k: coerce_value(v, req_types.get(k), k) for k, v in req_raw.items()}
    vector = store.get_features(service, join_keys, request_context or None, parse_time(at, "time"))
    print_vector(vector, as_json=as_json)
