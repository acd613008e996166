"""compose.yaml as data: its services' ``context-store`` command lines, for the static checks and for
running the same sequence without Docker (tests/test_compose_pipeline.py)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ROOT", "load_compose", "service_commands", "SHELLS"]

ROOT = Path(__file__).resolve().parents[2]
# The entrypoints a service may run its command script with (one command a line, -e: the first failure stops).
SHELLS = (["sh", "-ec"], ["sh", "-euc"])
_SHELL_SYNTAX = set("|&;<>()$`\\\"'*?[]{}~")


def load_compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def service_commands(svc: dict[str, Any]) -> list[list[str]]:
    """The argv of every command the service runs, in order.

    A plain ``command: [...]`` is one; under a ``sh -ec`` entrypoint the script's lines are, and each must
    be a simple command (no pipes, substitutions, redirections or quoting), so running the lines one by one
    here does exactly what the shell in the container does.
    """
    cmd = svc.get("command")
    if cmd is None:
        return []
    entry = svc.get("entrypoint")
    if entry is None:
        assert isinstance(cmd, list), f"command must be an exec-form list, got {cmd!r}"
        return [[str(x) for x in cmd]]
    assert entry in SHELLS, f"unexpected entrypoint {entry!r}"
    script = cmd[0] if isinstance(cmd, list) and len(cmd) == 1 else cmd
    assert isinstance(script, str), f"a shell entrypoint takes one script string, got {cmd!r}"
    out = []
    for line in script.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        bad = _SHELL_SYNTAX & set(line)
        assert not bad, f"script line {line!r} uses shell syntax {sorted(bad)}: keep one simple command a line"
        out.append(shlex.split(line))
    return out
