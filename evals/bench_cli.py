"""CLI cold starts: wall time of fresh ``context-store`` processes on a scaffolded, materialized repo.

    python -m evals.bench_cli [--repeats 5] [--no-serve] [--baseline REV] [--out evals/results/cli.md]

Set-up (not timed): ``init`` (the scaffold: 100 users, 5000 transactions, 200 items), ``apply``,
``backfill`` (feature views, item embeddings with all-MiniLM-L6-v2, help articles) and ``materialize``,
embedded (SQLite online store, Lance offline store). Then, interleaved over ``--repeats`` rounds (one
round runs every command once, so a load spike hits all of them alike), the wall time of:

- ``context-store --help``
- ``context-store get fraud_detection_service user_id=u0043 --request amount=250``
- ``context-store materialize`` with nothing new (a no-op rerun)
- ``context-store similar item_embeddings --text ...`` (loads the embedding model)
- ``context-store serve``: seconds until /readyz answers 200, then the first text query (POST /v1/similar)
  and the tenth (each text new, so no query cache helps).

Reported: median and min-max per command, and the 1-minute load average seen during the rounds (the
machine is shared: read the numbers with it). ``--baseline REV`` also runs every command with the code
of git revision REV (``git archive``d to a temp dir), interleaved in the same rounds on the same repo.
Results -> evals/results/cli.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "evals" / "results"
SERVICE_ARGS = ["fraud_detection_service", "user_id=u0043", "--request", "amount=250"]
# name -> target seconds (issue 18), None: measured only
TARGETS: dict[str, float | None] = {
    "--help": 0.3,
    "get": 1.0,
    "materialize (no-op)": 1.0,
    "similar --text": None,
    "serve: until /readyz 200": None,
    "serve: 1st text query after ready": None,
    "serve: 10th text query": None,
}


def cli_argv() -> list[str]:
    exe = Path(sys.executable).parent / "context-store"  # the console script, as a user runs it
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "context_store.cli"]


def env(code: Path = ROOT) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("CONTEXT_STORE_")}
    e["PYTHONPATH"] = os.pathsep.join([str(code), *filter(None, [e.get("PYTHONPATH")])])  # that checkout's code
    e.setdefault("HF_HUB_OFFLINE", "1")  # the model is cached by the set-up's backfill: never ask the network
    return e


def run(args: list[str], cwd: Path, code: Path = ROOT) -> float:
    t0 = time.perf_counter()
    p = subprocess.run([*cli_argv(), *args], cwd=cwd, env=env(code), capture_output=True, text=True, timeout=600)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"context-store {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}")
    return dt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_round(repo: Path, round_no: int, code: Path = ROOT) -> dict[str, float]:
    """Start ``serve``; seconds until ready, then the 1st and the 10th text query (each text new)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*cli_argv(), "serve", "--port", str(port), "--no-auth", "--no-mcp"],
        cwd=repo,
        env=env(code),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with httpx.Client(timeout=60) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"serve exited: {proc.stderr.read() if proc.stderr else ''}")
                try:
                    if client.get(url + "/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.perf_counter() - t0 > 300:
                    raise RuntimeError("serve was not ready within 300 s")
                time.sleep(0.05)
            ready = time.perf_counter() - t0
            times = []
            for i in range(10):
                body = {"view": "item_embeddings", "text": f"quiet winter documentary {round_no} {i}", "k": 5}
                q0 = time.perf_counter()
                r = client.post(url + "/v1/similar", json=body)
                times.append(time.perf_counter() - q0)
                if r.status_code != 200:
                    raise RuntimeError(f"/v1/similar answered {r.status_code}: {r.text}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {
        "serve: until /readyz 200": ready,
        "serve: 1st text query after ready": times[0],
        "serve: 10th text query": times[9],
    }


def setup(root: Path) -> Path:
    repo = root / "repo"
    steps: list[list[str]] = [["init", str(repo)], ["apply"], ["backfill"], ["materialize"]]
    for args in steps:
        t = run(args, cwd=root if args[0] == "init" else repo)
        print(f"  set-up: {args[0]} {t:.1f} s", flush=True)
    return repo


def checkout(rev: str, dest: Path) -> Path:
    """The tree of git revision ``rev`` in ``dest`` (no worktree, no repository metadata touched)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-serve", action="store_true", help="skip the serve measurements")
    ap.add_argument("--baseline", metavar="REV", help="also time the code of this git revision, interleaved")
    ap.add_argument("--out", type=Path, default=RESULTS / "cli.md")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_cli_"))
    try:
        codes = {"this": ROOT}
        if a.baseline:
            short = subprocess.run(
                ["git", "-C", str(ROOT), "rev-parse", "--short", a.baseline], check=True, capture_output=True, text=True
            ).stdout.strip()
            codes[f"baseline {a.baseline} ({short})"] = checkout(a.baseline, tmp / "baseline")
        print("set-up (not timed) ...", flush=True)
        repo = setup(tmp)
        samples: dict[str, dict[str, list[float]]] = {c: {name: [] for name in TARGETS} for c in codes}
        loads: list[float] = []
        for r in range(a.repeats):
            loads.append(os.getloadavg()[0])
            for label, code in codes.items():
                got = samples[label]
                for name, fn in commands(repo, code):
                    got[name].append(fn())
                if not a.no_serve:
                    for name, v in serve_round(repo, r, code).items():
                        got[name].append(v)
                print(
                    f"round {r + 1}/{a.repeats} {label}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in got.items() if v)
                )
            loads.append(os.getloadavg()[0])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write(a.out, samples, loads, a.repeats)


def commands(repo: Path, code: Path) -> list[tuple[str, Callable[[], float]]]:
    return [
        ("--help", lambda: run(["--help"], repo, code)),
        ("get", lambda: run(["get", *SERVICE_ARGS], repo, code)),
        ("materialize (no-op)", lambda: run(["materialize"], repo, code)),
        (
            "similar --text",
            lambda: run(["similar", "item_embeddings", "--text", "quiet winter", "-k", "5"], repo, code),
        ),
    ]


def _cell(vals: list[float]) -> str:
    return f"{statistics.median(vals):.3f} ({min(vals):.3f}-{max(vals):.3f})" if vals else ""


def write(out: Path, samples: dict[str, dict[str, list[float]]], loads: list[float], repeats: int) -> None:
    labels = list(samples)
    lines = [
        "# CLI cold starts (`python -m evals.bench_cli`)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {repeats} interleaved rounds; 1-min load average during the rounds "
        f"{min(loads):.2f}-{max(loads):.2f} (a shared machine: other processes ran meanwhile).",
        "",
        "Embedded scaffold (`context-store init`: 100 users, 5000 transactions, 200 items), applied, backfilled and "
        "materialized before timing. Wall time of a fresh process (the console script), seconds: median (min-max).",
        "",
        "| command | " + " | ".join(labels) + " | target (on this code's median) |",
        "|---|" + "---:|" * len(labels) + "---|",
    ]
    for name, target in TARGETS.items():
        cells = [_cell(samples[c][name]) for c in labels]
        if not any(cells):
            continue
        this = samples["this"][name]
        verdict = (
            ""
            if target is None or not this
            else f"<= {target} s: " + ("met" if statistics.median(this) <= target else "MISSED")
        )
        lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {verdict} |")
    lines += [
        "",
        "`serve: until /readyz 200` counts from process start until /readyz says ready; with this code that is once "
        "the vector indexes are loaded and the embedder is loaded and warmed. The text queries are POST /v1/similar "
        "over HTTP, each with a new text (no query cache).",
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
