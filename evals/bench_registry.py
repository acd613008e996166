"""Registry and CLI benchmark: how long the lifecycle commands take on the example repo.

    python -m evals.bench_registry            # 5 runs each
    python -m evals.bench_registry --quick    # 3 runs each

Measures (median of runs): synthetic data generation (events/s), loading + validating the
example repo (`plan`), `apply`, reloading the applied snapshot (`applied()`, what a server does
at start), and the CLI's start-up time (`context-store --help`) next to a bare `python -c pass`
floor measured in the same run. Writes ``evals/results/registry-cli.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from context_store.compute.schema_probe import TransformSchemaProbe  # noqa: E402
from context_store.config import load_config  # noqa: E402
from context_store.registry.registry import Registry  # noqa: E402
from context_store.scaffold import scaffold  # noqa: E402
from context_store.scaffold.generator import generate  # noqa: E402

END = datetime(2024, 6, 1, tzinfo=UTC)


def median_time(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=None)
    args = ap.parse_args()
    runs = args.runs or (3 if args.quick else 5)
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        n = 200_000 if args.quick else 1_000_000
        t = median_time(lambda: generate(base / "gen", users=10_000, events=n, items=2_000, end=END), runs)
        rows.append((f"generate {n:,} transactions + {n:,} item views", f"{t:.2f} s ({2 * n / t:,.0f} rows/s)"))

        root = scaffold(base / "repo", users=100, events=5000, end=END).root
        reg = Registry(load_config(root), TransformSchemaProbe())
        t = median_time(reg.plan, runs)
        rows.append(("plan (load + validate 18 objects, 5 views read their sources)", f"{t * 1000:.0f} ms"))
        i = 0

        def apply_new() -> None:
            nonlocal i
            i += 1
            Registry(load_config(root, workspace=f"w{i}"), TransformSchemaProbe()).apply()

        t = median_time(apply_new, runs)
        rows.append(("apply (plan + snapshot + atomic commit, new workspace)", f"{t * 1000:.0f} ms"))
        t = median_time(lambda: Registry(load_config(root, workspace="w1")).applied(), runs)
        rows.append(("applied() from the snapshot (server start)", f"{t * 1000:.0f} ms"))

        exe = Path(sys.executable).parent / "context-store"
        argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "context_store.cli"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTEXT_STORE_")}
        floor = median_time(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True, env=env), runs)
        t = median_time(lambda: subprocess.run([*argv, "--help"], check=True, capture_output=True, env=env), runs)
        rows.append(
            ("`context-store --help` process", f"{t * 1000:.0f} ms (python -c pass floor: {floor * 1000:.0f} ms)")
        )
        t = median_time(
            lambda: subprocess.run([*argv, "plan", "--repo", str(root)], check=True, capture_output=True, env=env), runs
        )
        rows.append(("`context-store plan` process", f"{t * 1000:.0f} ms"))

    lines = [
        "# Registry and CLI",
        "",
        f"`python -m evals.bench_registry{' --quick' if args.quick else ''}` — median of {runs} runs.",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()}; load average at the end {os.getloadavg()[0]:.1f} (other work on the machine inflates "
        "wall times).",
        "Process times are dominated by importing pyarrow/duckdb and by interpreter exit, not by the registry.",
        "",
        "| what | time |",
        "|---|---|",
        *[f"| {a} | {b} |" for a, b in rows],
        "",
    ]
    out = ROOT / "evals" / "results" / "registry-cli.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
