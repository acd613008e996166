"""Before/after: run one benchmark of this repo at two git revisions, interleaved (A B A B ...).

    python evals/bench_revisions.py --base REV [--bench online] [--repeat 3] [-- extra bench args]

The base revision is checked out in a temporary git worktree; each run executes
``evals/bench_<name>.py`` of that checkout with ``PYTHONPATH`` set to it, so each side imports its
own code (same venv, same Redis, same machine). Every markdown table row the benchmark writes is
collected per run; the report keeps the numeric cells whose column header matches ``--columns``
and shows each side's median and range over the repeats, with the 1-minute load average before
each run. Ratios to a floor measured inside the same benchmark run are the figures to compare:
they cancel most of the machine's drift.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_NUM = re.compile(r"^-?[\d,]*\.?\d+(?:x)?")


@dataclass
class Side:
    name: str
    tree: Path
    runs: list[dict[tuple[str, str, str], float]] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)


def parse_tables(text: str) -> dict[tuple[str, str, str], float]:
    """``(section, row label, column header) -> number`` for every numeric cell of every table."""
    out: dict[tuple[str, str, str], float] = {}
    section, header = "", []
    for line in text.splitlines():
        if line.startswith("#"):
            section = line.lstrip("#").strip()
            header = []
            continue
        if not line.startswith("|"):
            header = []
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not header:
            header = cells
            continue
        if set(cells[0]) <= {"-", ":"}:
            continue
        # a row is named by its first cell, and by its second where that is a key too (run number, batch size)
        keyed = cells[0].isdigit() or header[1].lower() in {"batch", "server", "mode", "workers"}
        label = " ".join(cells[:2]) if keyed else cells[0]
        for h, c in zip(header[1:], cells[1:]):
            m = _NUM.match(c.replace("*", ""))
            if m:
                out[(section, label, h)] = float(m.group(0).rstrip("x").replace(",", ""))
    return out


def run_once(side: Side, bench: str, extra: list[str]) -> None:
    side.loads.append(os.getloadavg()[0])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.md"
        args = [sys.executable, str(side.tree / "evals" / f"bench_{bench}.py"), *extra]
        if bench in ("server", "stream"):
            args += ["--out", str(out)]
        env = {**os.environ, "PYTHONPATH": str(side.tree)}
        # bench_online writes into its tree's evals/results/: keep the tree's committed results as they were.
        kept = {p: p.read_bytes() for p in (side.tree / "evals" / "results").glob(f"{bench}*") if p.is_file()}
        try:
            proc = subprocess.run(args, cwd=side.tree, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{side.name}: bench_{bench} failed:\n{proc.stderr[-3000:]}")
            text = out.read_text() if out.exists() else (side.tree / "evals" / "results" / f"{bench}.md").read_text()
        finally:
            for path, data in kept.items():
                path.write_bytes(data)
    side.runs.append(parse_tables(text))


def summary(values: list[float]) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{med:,.2f} [{min(values):,.2f}–{max(values):,.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="git revision to compare against (e.g. a commit before a change)")
    ap.add_argument("--bench", default="online", choices=["online", "server", "stream"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--columns", default="vs floor|p50|p99|req/s|CPU", help="regex on column headers to report")
    ap.add_argument("--out", default=None, help="write the markdown report here too")
    ap.add_argument("extra", nargs="*", help="arguments passed to the benchmark (after --)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), args.base], cwd=ROOT, check=True)
        try:
            sides = [Side(f"base {args.base[:10]}", base_tree), Side("this tree", ROOT)]
            t0 = time.time()
            for _ in range(args.repeat):
                for side in sides:  # interleaved: A B A B ...
                    run_once(side, args.bench, args.extra)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, check=False)
    wanted = re.compile(args.columns)
    keys = sorted({k for s in sides for r in s.runs for k in r if wanted.search(k[2])}, key=lambda k: k[:2])
    lines = [
        f"# bench_{args.bench}: {sides[0].name} vs {sides[1].name}",
        "",
        f"`python evals/bench_revisions.py --base {args.base} --bench {args.bench} --repeat {args.repeat}"
        + (f" -- {' '.join(args.extra)}" if args.extra else "")
        + f"`: {args.repeat} runs per side, interleaved, {time.time() - t0:,.0f} s in all.",
        f"Load average (1 min) before each run: {sides[0].name}: {', '.join(f'{x:.1f}' for x in sides[0].loads)}; "
        f"{sides[1].name}: {', '.join(f'{x:.1f}' for x in sides[1].loads)}. Cells: median [min–max] over the runs.",
        "",
        f"| section | case | column | {sides[0].name} | {sides[1].name} |",
        "|---|---|---|---:|---:|",
    ]
    for sec, label, col in keys:
        a = [r[(sec, label, col)] for r in sides[0].runs if (sec, label, col) in r]
        b = [r[(sec, label, col)] for r in sides[1].runs if (sec, label, col) in r]
        lines.append(f"| {sec[:40]} | {label[:60]} | {col} | {summary(a)} | {summary(b)} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
