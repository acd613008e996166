"""The ``context-store`` command: a click group whose heavier commands load lazily.

Commands of other modules (serve, mcp, push, ...) are imported only when run, so
``context-store plan`` starts fast and works without the server extras installed.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from ._common import run_guarded

__all__ = ["cli", "main", "LAZY_COMMANDS"]

# name -> (module, attribute, one-line help shown by --help without importing the module, extra hint)
LAZY_COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "serve": (
        "context_store.cli.serve",
        "serve",
        "Serve the REST API, MCP over HTTP at /mcp and stream workers.",
        "server",
    ),
    "mcp": ("context_store.cli.mcp_cmd", "mcp", "Run the MCP server over stdio (for agent hosts).", "mcp"),
    "keys": ("context_store.cli.keys", "keys", "Create, list, revoke and rotate API keys.", "server"),
    "push": ("context_store.cli.stream", "push", "Push events from a file (JSONL/CSV/Parquet) to a stream source.", ""),
    "worker": ("context_store.cli.stream", "worker", "Run the stream workers alone.", "redis"),
    "stream": (
        "context_store.cli.stream",
        "stream",
        "Stream operations: watermarks, lag and late counts; reset a watermark.",
        "",
    ),
    "status": (
        "context_store.cli.status",
        "status",
        "Per view freshness against expected_freshness, stream lag, late/rejected counts.",
        "",
    ),
    "forget": (
        "context_store.cli.forget",
        "forget",
        "Erase an entity from every store (right to erasure); --audit lists past forgets.",
        "",
    ),
    "similar": (
        "context_store.cli.vectors",
        "similar",
        "Find the items most similar to a text, entity or vector.",
        "embeddings",
    ),
    "knowledge": ("context_store.cli.vectors", "knowledge", "Search a knowledge collection.", "embeddings"),
    "list": ("context_store.cli.catalog_cmd", "list_cmd", "List the applied definitions (--kind, --tag).", ""),
    "describe": (
        "context_store.cli.catalog_cmd",
        "describe_cmd",
        "Describe one definition: owner, tags, features, lineage.",
        "",
    ),
    "search": (
        "context_store.cli.catalog_cmd",
        "search_cmd",
        "Search the catalog by name, description, tag or feature.",
        "",
    ),
    "context": (
        "context_store.cli.context_cmd",
        "context",
        "The user context of one entity (features, events, similar items, knowledge).",
        "",
    ),
    "validate": (
        "context_store.cli.quality_cmd",
        "validate",
        "Run the data quality expectations on the offline data; exit 1 on failure (CI).",
        "",
    ),
    "drift": ("context_store.cli.quality_cmd", "drift", "Drift (PSI per feature): training data against serving.", ""),
}
_CORE = ("context_store.cli.core", ["init", "plan", "apply", "backfill", "materialize", "get"])
_QUICKSTART = ("context_store.cli.quickstart", ["quickstart"])


def _unavailable(name: str, module: str, reason: str, extra: str) -> click.Command:
    hint = f" Install the extra: pip install 'context-store[{extra}]'." if extra else ""

    @click.command(
        name=name,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
        help=f"(unavailable: {reason})",
    )
    def cmd() -> None:
        raise click.ClickException(f"command '{name}' is not available: {reason}.{hint}")

    return cmd


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command is run."""

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str, str, str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None or cmd_name not in self.lazy:
            return cmd
        module, attr, _, extra = self.lazy[cmd_name]
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            missing = e.name or "?"
            if module.startswith(missing) or missing.startswith("context_store"):
                return _unavailable(cmd_name, module, f"module {module} is not part of this installation", "")
            return _unavailable(cmd_name, module, f"it needs the package {missing!r}", extra)
        except ImportError as e:
            return _unavailable(cmd_name, module, f"importing {module} failed ({e})", extra)
        found = getattr(mod, attr, None)
        if not isinstance(found, click.Command):
            return _unavailable(cmd_name, module, f"{module} has no command {attr!r}", "")
        return found

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help of lazy commands comes from LAZY_COMMANDS: --help imports nothing heavy.
        rows = []
        for name in self.list_commands(ctx):
            if name in self.lazy and super().get_command(ctx, name) is None:
                rows.append((name, self.lazy[name][2]))
                continue
            cmd = self.get_command(ctx, name)
            if cmd is None or cmd.hidden:
                continue
            rows.append(
                (name, cmd.get_short_help_str(limit=formatter.width - 6 - max(len(n) for n in self.list_commands(ctx))))
            )
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        # One place turns every error of every command into a clean message and exit code.
        return run_guarded(lambda: super(LazyGroup, self).invoke(ctx))


@click.group(cls=LazyGroup, lazy=LAZY_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="context-store", prog_name="context-store")
def cli() -> None:
    """context-store: a real-time feature platform and context service.

    \b
    Typical flow in a feature repo:
      context-store init my_repo && cd my_repo
      context-store plan            # diff definitions against the registry
      context-store apply           # register them
      context-store backfill        # compute history into the offline store
      context-store materialize     # load the online store
      context-store get fraud_detection_service user_id=u0001

    Or run everything at once on throw-away data: context-store quickstart
    """


def _register() -> None:
    for module, names in (_CORE, _QUICKSTART):
        mod = importlib.import_module(module)
        for name in names:
            cli.add_command(getattr(mod, name.replace("-", "_") + "_cmd"), name)


_register()


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``context-store``)."""
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="context-store")


if __name__ == "__main__":  # pragma: no cover
    main()
