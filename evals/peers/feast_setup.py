"""Create the separate virtualenv used by the Feast peer benchmark.

    python evals/peers/feast_setup.py [--venv PATH] [--version 0.67.0] [--no-duckdb]

Feast pins (redis<8, pandas<3, ...) clash with context-store's own environment, so Feast lives in
``.venv-feast`` at the repo root (gitignored) and ``bench_feast.py`` re-executes itself there.
Idempotent: does nothing when the venv already has the requested Feast version.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

__all__ = ["DEFAULT_VENV", "FEAST_VERSION", "ensure_feast_venv", "venv_python"]

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = ROOT / ".venv-feast"
FEAST_VERSION = "0.67.0"


def venv_python(venv: Path = DEFAULT_VENV) -> Path:
    return venv / "bin" / "python"


def _installed_version(python: Path) -> str | None:
    if not python.exists():
        return None
    r = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('feast'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return r.stdout.strip() if r.returncode == 0 else None


def ensure_feast_venv(venv: Path = DEFAULT_VENV, version: str = FEAST_VERSION, duckdb: bool = True) -> Path:
    """Return the venv's python, creating the venv and installing ``feast[redis(,duckdb)]`` if needed."""
    python = venv_python(venv)
    if _installed_version(python) == version:
        return python
    if not python.exists():
        # Same interpreter version as the main venv, so both sides run the same CPython.
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    extras = "redis,duckdb" if duckdb else "redis"
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"feast[{extras}]=={version}"], check=True)
    installed = _installed_version(python)
    if installed != version:
        raise SystemExit(f"feast {version} not importable in {venv} (found {installed!r})")
    return python


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    ap.add_argument("--version", default=FEAST_VERSION)
    ap.add_argument("--no-duckdb", action="store_true", help="skip the DuckDB offline store extra (ibis)")
    args = ap.parse_args()
    python = ensure_feast_venv(args.venv, args.version, duckdb=not args.no_duckdb)
    print(python)


if __name__ == "__main__":
    main()
