"""Shared pieces of every CLI command: repo/workspace options, the store, errors, output.

Usage in a command module (e.g. ``cli/serve.py``)::

    import click
    from ._common import handle_errors, repo_options, store_from_ctx

    @click.command()
    @repo_options                      # adds --repo/-r, --workspace/-w, --online-store
    @handle_errors                     # ContextStoreError -> one line on stderr, exit 1
    def serve() -> None:
        store = store_from_ctx()       # ContextStore for those options, closed on exit
        ...

Commands registered in the main group get the error handling from the group as well;
``handle_errors`` makes a command safe when invoked on its own (tests, other groups).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..errors import ContextStoreError, InvalidInputError
from ..vocab.json import to_jsonable
from ..vocab.redact import redact_text
from ..vocab.time import checked_utc, parse_iso

if TYPE_CHECKING:
    from ..config import Config
    from ..serving.store import ContextStore

__all__ = [
    "repo_options",
    "store_from_ctx",
    "config_from_ctx",
    "handle_errors",
    "run_guarded",
    "parse_pairs",
    "parse_time",
    "echo_json",
    "to_jsonable",
    "print_vector",
    "DEBUG_ENV",
]

F = TypeVar("F", bound=Callable[..., Any])
DEBUG_ENV = "CONTEXT_STORE_DEBUG"  # set to 1 to see tracebacks of unexpected errors
_META = "context_store.options"


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.meta.setdefault(_META, {})[param.name] = value
    return value


def repo_options(f: F) -> F:
    """Add ``--repo``, ``--workspace`` and ``--online-store``; read them with ``store_from_ctx``."""
    f = click.option(
        "--online-store",
        default=None,
        metavar="URL",
        expose_value=False,
        callback=_remember,
        is_eager=True,
        help="Override the online store: 'sqlite' or redis://host:port/db (default: from config).",
    )(f)
    f = click.option(
        "--workspace",
        "-w",
        default=None,
        metavar="NAME",
        expose_value=False,
        callback=_remember,
        is_eager=True,
        help="Workspace (isolated registry, keys and data; default: from config, else 'default').",
    )(f)
    f = click.option(
        "--repo",
        "-r",
        default=".",
        show_default=True,
        metavar="DIR",
        expose_value=False,
        callback=_remember,
        is_eager=True,
        type=click.Path(file_okay=False),
        help="Feature repo directory.",
    )(f)
    return f


def _options(ctx: click.Context | None) -> dict[str, Any]:
    ctx = ctx or click.get_current_context()
    opts: dict[str, Any] = {}
    # Options given to a parent group apply unless the command sets them itself.
    chain = []
    c: click.Context | None = ctx
    while c is not None:
        chain.append(c)
        c = c.parent
    for c in reversed(chain):
        for k, v in c.meta.get(_META, {}).items():
            if v is not None:
                opts[k] = v
    return opts


def config_from_ctx(ctx: click.Context | None = None) -> Config:
    """The ``Config`` for the command's ``--repo``/``--workspace``/``--online-store``."""
    from ..config import load_config

    o = _options(ctx)
    return load_config(o.get("repo") or ".", workspace=o.get("workspace"), online_store=o.get("online_store"))


def store_from_ctx(ctx: click.Context | None = None, **overrides: Any) -> ContextStore:
    """A ``ContextStore`` for the command's options, created once per invocation and closed after it.

    ``overrides`` (e.g. ``online_store="sqlite"``) win over the command line.
    """
    from ..serving.store import ContextStore

    ctx = ctx or click.get_current_context()
    key = "context_store.store"
    store = ctx.meta.get(key)
    if store is None or overrides:
        o = {**_options(ctx), **{k: v for k, v in overrides.items() if v is not None}}
        store = ContextStore(o.get("repo") or ".", workspace=o.get("workspace"), online_store=o.get("online_store"))
        ctx.call_on_close(store.close)
        if not overrides:
            ctx.meta[key] = store
    return store


def _passthrough(e: BaseException) -> bool:
    return isinstance(e, (click.ClickException, click.exceptions.Exit, click.Abort))


def run_guarded(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` turning our errors (and unexpected ones) into a clean ClickException (credentials masked)."""
    try:
        return fn()
    except ContextStoreError as e:
        raise click.ClickException(redact_text(str(e))) from None
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:  # `context-store get ... | head`: the reader left; not an error
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        sys.exit(0)
    except Exception as e:
        if _passthrough(e) or os.environ.get(DEBUG_ENV):
            raise
        msg = redact_text(str(e).strip().splitlines()[0]) if str(e).strip() else ""
        raise click.ClickException(
            f"unexpected {type(e).__name__}{': ' + msg if msg else ''} (set {DEBUG_ENV}=1 for the traceback)"
        ) from None


def handle_errors(f: F) -> F:
    """Decorator: ``ContextStoreError`` -> ``Error: <message>`` on stderr and exit 1, never a traceback."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return run_guarded(lambda: f(*args, **kwargs))

    return wrapper  # type: ignore[return-value]


def parse_pairs(items: Iterable[str], what: str) -> dict[str, str]:
    """``["user_id=u1", "x=2"]`` -> ``{"user_id": "u1", "x": "2"}``; a bad item names itself."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInputError(f"{what} {item!r} must look like name=value", field=what.replace(" ", "_"))
        if key.strip() in out:
            raise InvalidInputError(f"{what} {key.strip()!r} is given twice", field=key.strip())
        out[key.strip()] = value
    return out


def parse_time(value: str | None, field: str) -> datetime | None:
    """ISO-8601 date/time (``2024-05-01``, ``2024-05-01T12:00:00Z``) -> aware UTC datetime."""
    if value is None:
        return None
    try:
        dt = parse_iso(value)
    except ValueError:
        raise InvalidInputError(
            f"--{field} {value!r} is not an ISO-8601 time such as 2024-05-01 or 2024-05-01T12:00:00Z", field=field
        ) from None
    return checked_utc(dt, field, label=f"--{field}")


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(to_jsonable(obj), indent=2, default=str))


def _fmt_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        inner = ", ".join(_fmt_value(x) for x in v[:8])
        return f"[{inner}{', ...' if len(v) > 8 else ''}]"
    return str(v)


def vector_dict(vector: Any) -> dict[str, Any]:
    """A FeatureVector as plain JSON-able data."""
    return {
        "join_keys": to_jsonable(getattr(vector, "join_keys", {})),
        "request_time": to_jsonable(getattr(vector, "request_time", None)),
        "feature_values": to_jsonable(vector.feature_values),
        "metadata": [
            {
                "name": m.name,
                "view": m.view,
                "data_type": m.data_type,
                "status": m.status,
                "effective_time": to_jsonable(m.effective_time),
            }
            for m in vector.metadata
        ],
    }


def print_vector(vector: Any, as_json: bool = False) -> None:
    """Print a FeatureVector as an aligned table (name, value, status, effective time) or JSON."""
    if as_json:
        echo_json(vector_dict(vector))
        return
    meta = {m.name: m for m in vector.metadata}
    names = list(vector.feature_values)
    width = max((len(n) for n in names), default=10)
    vals = {n: _fmt_value(vector.feature_values[n]) for n in names}
    vals = {n: v if len(v) <= 60 else v[:57] + "..." for n, v in vals.items()}  # --json shows it all
    vwidth = max((len(v) for v in vals.values()), default=5)
    keys = ", ".join(f"{k}={v}" for k, v in (getattr(vector, "join_keys", None) or {}).items())
    if keys:
        click.echo(f"features for {keys}:")
    for n in names:
        m = meta.get(n)
        status = m.status if m else ""
        eff = m.effective_time.isoformat(timespec="seconds") if m and m.effective_time else ""
        click.echo(f"  {n:<{width}}  {vals[n]:<{vwidth}}  {status:<12}  {eff}".rstrip())
