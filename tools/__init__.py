"""MCP tool server of context-store: ``create_mcp_server`` (tools) and ``create_mcp_http_app`` (HTTP + auth).

Imports are lazy so that ``import context_store.tools`` stays cheap and the ``mcp`` SDK is needed only when used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_mcp_server", "create_mcp_http_app", "run_stdio"]


def __getattr__(name: str) -> Any:
    if name in ("create_mcp_server", "run_stdio"):
        from . import server

        return getattr(server, name)
    if name == "create_mcp_http_app":
        from .http import create_mcp_http_app

        return create_mcp_http_app
    raise AttributeError(name)
