"""Build and run ``openloop.c``, the open-loop HTTP/1.1 load generator (see the head of that file).

    binary = build()          # cc -O2, cached by the source's hash; None when no C compiler is installed
    result = run(binary, port, rate=2000, seconds=5, connections=64, body=b"{...}", path="/api/...")

``run`` returns the generator's JSON: ``status`` counts, per-class latency percentiles (``2xx``, ``shed``,
``503_other``, ``other``; ms from each request's scheduled send time), ``send_delay`` (scheduled -> written),
``unanswered``/``errors``/``reconnects`` and its own CPU seconds (``cpu_user_s``, ``cpu_sys_s``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).with_name("openloop.c")


def compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")


def build(cache: Path | None = None) -> Path | None:
    """Compile once per source version; ``None`` if there is no C compiler."""
    cc = compiler()
    if cc is None:
        return None
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    base = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "context-store-evals"
    binary = base / f"openloop-{digest}"
    if binary.exists():
        return binary
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=base))  # then an atomic rename: concurrent builds do not see half a binary
    subprocess.run([cc, "-O2", "-o", str(tmp / "openloop"), str(SOURCE)], check=True, capture_output=True)
    os.replace(tmp / "openloop", binary)
    tmp.rmdir()
    return binary


def run(
    binary: Path,
    port: int,
    *,
    rate: float,
    seconds: float,
    connections: int,
    body: bytes = b"",
    path: str = "/",
    method: str = "POST",
    headers: tuple[str, ...] = ("Content-Type: application/json",),
    shed_marker: str = "overloaded",
    drain_s: float = 30.0,
    cpus: str | None = None,
) -> dict[str, Any]:
    """Run the generator (pinned to ``cpus`` with taskset when given) and return its JSON."""
    with tempfile.NamedTemporaryFile(suffix=".body") as f:
        f.write(body)
        f.flush()
        cmd = [str(binary), "-p", str(port), "-r", f"{rate:.3f}", "-d", f"{seconds:g}", "-c", str(connections)]
        cmd += ["-m", method, "-u", path, "-b", f.name, "-s", shed_marker, "-t", f"{drain_s:g}"]
        for h in headers:
            cmd += ["-H", h]
        if cpus is not None:
            cmd = ["taskset", "-c", cpus, *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout))
