"""``python -m context_store.tools [--repo DIR] [--workspace WS]``: the MCP server over stdio.

The same as ``context-store mcp``.
"""

from __future__ import annotations

import argparse

from .server import run_stdio


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m context_store.tools", description=__doc__)
    p.add_argument("--repo", default=".", help="feature repo directory (default: .)")
    p.add_argument("--workspace", default=None, help="workspace to serve (default: from config, else 'default')")
    args = p.parse_args()
    run_stdio(args.repo, workspace=args.workspace)


if __name__ == "__main__":
    main()
