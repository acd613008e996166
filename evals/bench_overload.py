"""Load shedding under overload: accepted-request latency at 2x saturation against the unsaturated latency.

    python evals/bench_overload.py [--duration 5] [--repeat 3] [--configs 0:0 32:10:0 32:10:5]
    python evals/bench_overload.py --spin-ms 4 --workers 1 --connections 64 --append   # known capacity
    python evals/bench_overload.py --calm-duration 10 --calm-after --configs 0:0 32:10:0 a32:10:0   # adaptive limit

Each config is ``max_in_flight:max_lag_ms[:max_queue_ms]`` of the server (``0:0`` = unbounded, ``32:0`` = the
in-flight bound alone, ``32:10:0`` = the ``serve`` default: in-flight + event-loop lag, ``32:10:5`` = those + the
CoDel queue-delay bound, ``serve --max-queue-ms 5``; a checkout given without ``max_queue_ms`` runs its own
default). Per repetition, the configs are run one after the other (A B C A B C ...), each on a fresh server
(2 workers, Redis):

1. saturation: ``wrk`` closed loop against the unbounded server (the first config of each repetition: wrk
   against a shedding server would count its 503s as throughput); every config of that repetition is then
   driven at the same rates;
2. calm: ``evals/loadgen/openloop.c`` (built with ``cc -O2`` on first use; open loop, keep-alive, latency from
   each request's scheduled send time, shed 503s told from other 503s) at 0.5x saturation, 32 connections:
   the unsaturated p99 of 200s;
3. hot: the same generator at 2x saturation with 512 connections: p99 of the 200s, speed of the 503s, errors.

A generator in Python could not send 2x saturation (~20k req/s) of get-features from the same 2 cores: its own
delay reached seconds (evals/results/overload_fast_path.md). The C one uses a fraction of a core (reported,
with the server's CPU, per run). ``--generator-cpus``/``--server-cpus`` pin them apart with taskset.

The ratio hot p99 (200s) / calm p99 (200s) is computed within one run of one server. Medians and ranges over
the repetitions, with the load average, go to evals/results/overload.md. The generator shares the machine's
cores with the server (unless pinned), as a co-located client would; its own delay (scheduled time -> request
written) is reported, since on a loaded machine it is part of every latency. ``--spin-ms`` serves a request-time
view that holds the event loop that long instead: a capacity that does not depend on the machine's load (no wrk).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import bench_server as bs  # noqa: E402  (a sibling script, not a package)

sys.path.insert(0, str(Path(__file__).parent / "loadgen"))
import openloop  # noqa: E402

OUT = bs.RESULTS / "overload.md"
SPIN_DEFINITIONS = """
import context_store as cs

request = cs.RequestSource(schema=[cs.Field("amount", cs.Float64)])


@cs.realtime_feature_view(sources=[request], output=[cs.Field("spun", cs.Float64)])
def spin(req):
    import time

    end = time.perf_counter() + req["amount"] / 1000  # wall time: the capacity does not depend on the load
    while time.perf_counter() < end:
        pass
    return {"spun": req["amount"]}


busy = cs.FeatureService("busy", [spin])
"""


# max_in_flight (negative: adaptive, ``a32``), max_lag_ms, max_queue_ms, checkout served ("" = this one)
Config = tuple[int, float, float, str]


def _parse_config(spec: str) -> Config:
    """``limit:lag[:queue][:checkout]``; a checkout without ``queue`` is served as it is (it may predate it)."""
    limit, lag, *rest = spec.split(":", 3)
    queue = 0.0
    if rest:
        try:
            queue = float(rest[0])
            rest = rest[1:]
        except ValueError:
            queue = -1.0  # not given with a checkout: that checkout's own default
    cap = -int(limit[1:]) if limit.startswith("a") else int(limit)
    return cap, float(lag), queue, ":".join(rest)


def _start(
    repo: Path,
    port: int,
    workers: int,
    max_in_flight: int,
    max_lag_ms: float,
    max_queue_ms: float = 0.0,
    root: str = "",
    cpus: str | None = None,
) -> subprocess.Popen[bytes]:
    queue = f", max_queue_ms={max_queue_ms}" if max_queue_ms >= 0 else ""
    src = Path(root or bs.ROOT).resolve()
    if max_in_flight < 0:  # adaptive (a checkout that predates it fails to start: say so rather than serve fixed)
        queue += ", adaptive_limit=True"
        max_in_flight = -max_in_flight
    elif "adaptive_limit" in (src / "context_store/server/run.py").read_text():  # fixed, whatever serve's default
        queue += ", adaptive_limit=False"
    code = (
        "from context_store.server.run import ServeOptions, serve; "
        f"serve(ServeOptions(repo={str(repo)!r}, host='127.0.0.1', port={port}, workers={workers}, auth=False, "
        f"mcp=False, stream_workers=False, log_level='error', max_in_flight={max_in_flight}, "
        f"max_lag_ms={max_lag_ms}{queue}))"
    )
    env = {**os.environ, "PYTHONPATH": str(src)}  # that checkout's code in the uvicorn workers too
    pin = ["taskset", "-c", cpus] if cpus else []  # the workers inherit it
    return subprocess.Popen([*pin, sys.executable, "-c", code], cwd=src, env=env, start_new_session=True)


def fixed_rate(port: int, body: bytes, rate: float, seconds: float, conns: int, args: Any) -> dict[str, Any]:
    """``evals/loadgen/openloop.c`` at ``rate`` for ``seconds``: open loop, latency from each request's scheduled
    time, shed 503s (body says ``overloaded``) told from other 503s, and the generator's own delay and CPU."""
    out = openloop.run(
        args.openloop,
        port,
        rate=rate,
        seconds=seconds,
        connections=conns,
        body=body,
        path=bs.PATH,
        cpus=args.generator_cpus,
    )
    out["cpu_share"] = (out["cpu_user_s"] + out["cpu_sys_s"]) / max(out["elapsed_s"], 1e-9)  # of one core
    return out


def _cpu_list(spec: str) -> set[int]:
    cpus: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def _label(cfg: Config) -> str:
    limit, lag, queue, root = cfg
    cap = [f"adaptive in-flight <= {-limit}"] if limit < 0 else [f"in-flight {limit}"] if limit else []
    parts = cap + ([f"lag {lag:g} ms"] if lag else [])
    parts += [f"queue {queue:g} ms"] if queue > 0 else []
    return (" + ".join(parts) or "unbounded") + (f" (served from {root})" if root else "")


def run_one(repo: Path, body: bytes, cfg: Config, sat: float | None, args: Any) -> dict[str, Any]:
    port = bs._free_port()
    proc = _start(repo, port, args.workers, *cfg, cpus=args.server_cpus)
    try:
        bs._wait_up(port, proc)
        if args.spin_ms:  # known capacity: warm one request, no wrk
            fixed_rate(port, body, 10, 0.5, 1, args)
            sat = args.workers * 1000 / args.spin_ms
        else:
            bs.wrk_throughput(port, body, 2)  # warm-up
        load0 = os.getloadavg()[0]
        if sat is None:
            thr = bs.wrk_throughput(port, body, int(args.duration))
            sat = thr["rps"]  # 200s only (wrk_throughput discounts non-2xx: a 503 is not throughput)
        cpu0 = bs._tree_cpu_s(proc.pid)
        calm = fixed_rate(port, body, sat / 2, args.calm_duration or args.duration, 32, args)
        cpu1 = bs._tree_cpu_s(proc.pid)
        hot = fixed_rate(port, body, sat * 2, args.duration, args.connections, args)
        cpu2 = bs._tree_cpu_s(proc.pid)
        # The denominator's own spread: the same server, the same rate, after the overload has passed.
        again = (
            fixed_rate(port, body, sat / 2, args.calm_duration or args.duration, 32, args) if args.calm_after else None
        )
        load1 = os.getloadavg()[0]
    finally:
        bs._stop(proc)
    ok, shed = hot["2xx"], hot["shed"]
    return {
        "config": _label(cfg),
        "saturation_rps": sat,
        "calm_p99_ms": calm["2xx"]["p99_ms"],
        "calm_shed": calm["shed"]["n"],
        "calm_other": calm["503_other"]["n"] + calm["other"]["n"] + calm["errors"] + calm["unanswered"],
        "calm_send_delay_p99_ms": calm["send_delay"]["p99_ms"],
        "calm_after_p99_ms": again["2xx"]["p99_ms"] if again else float("nan"),
        "hot_sent_rps": hot["sent"] / args.duration,
        "hot_200": ok["n"],
        "hot_200_p50_ms": ok["p50_ms"],
        "hot_200_p99_ms": ok["p99_ms"],
        "ratio": (ok["p99_ms"] or float("nan")) / calm["2xx"]["p99_ms"],
        "config_args": list(cfg),
        "hot_shed": shed["n"],
        "hot_shed_p50_ms": shed["p50_ms"] if shed["n"] else float("nan"),
        "hot_shed_p99_ms": shed["p99_ms"] if shed["n"] else float("nan"),
        "hot_other": hot["503_other"]["n"] + hot["other"]["n"],
        "hot_errors": hot["errors"] + hot["unanswered"],
        "hot_send_delay_p99_ms": hot["send_delay"]["p99_ms"],
        "calm_gen_cpu": calm["cpu_share"],
        "hot_gen_cpu": hot["cpu_share"],
        "calm_server_cpu": (cpu1 - cpu0) / calm["elapsed_s"],  # cores used by the server's workers
        "hot_server_cpu": (cpu2 - cpu1) / hot["elapsed_s"],
        "load_before": load0,
        "load_after": load1,
    }


def _cell(rs: list[dict[str, Any]], key: str, fmt: str = "{:.1f}") -> str:
    xs = [r[key] for r in rs]
    med = statistics.median(xs)
    return f"{fmt.format(med)} ({fmt.format(min(xs))}-{fmt.format(max(xs))})" if len(xs) > 1 else fmt.format(med)


def table(runs: dict[str, list[dict[str, Any]]]) -> str:
    head = (
        "| server | p99 ms of 200s at 0.5x | shed at 0.5x | 200s at 2x | p50 / p99 ms of 200s at 2x "
        "| **p99 of 200s at 2x / p99 at 0.5x** | same / median p99 at 0.5x of all servers "
        "| shed (503) at 2x | p50 / p99 ms of shed | other 503s + errors "
        "| generator's own delay p99 ms at 2x | CPU (cores) at 2x: server / generator "
        "| load avg (1 min) before->after each run |"
    )
    lines = [head, "|---|" + "---:|" * 11 + "---|"]
    for name, rs in runs.items():
        shed = (
            f"{_cell(rs, 'hot_shed_p50_ms')} / {_cell(rs, 'hot_shed_p99_ms')}"
            if any(r["hot_shed"] for r in rs)
            else "-"
        )
        after = rs[0].get("calm_after_p99_ms", float("nan"))
        again = "" if after != after else f"; after the 2x run {_cell(rs, 'calm_after_p99_ms')}"  # nan: not run
        cells = [
            _cell(rs, "calm_p99_ms") + again,
            _cell(rs, "calm_shed", "{:.0f}"),
            _cell(rs, "hot_200", "{:.0f}"),
            f"{_cell(rs, 'hot_200_p50_ms')} / {_cell(rs, 'hot_200_p99_ms')}",
            _cell(rs, "ratio", "{:.1f}x"),
            _cell(rs, "ratio_pooled", "{:.1f}x"),
            _cell(rs, "hot_shed", "{:.0f}"),
            shed,
            str(sum(r["hot_errors"] + r["hot_other"] + r["calm_other"] for r in rs)),
            _cell(rs, "hot_send_delay_p99_ms"),
            f"{_cell(rs, 'hot_server_cpu', '{:.2f}')} / {_cell(rs, 'hot_gen_cpu', '{:.2f}')}",
            ", ".join(f"{r['load_before']:.1f}->{r['load_after']:.1f}" for r in rs),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def refusal_cost(n: int = 20000, repeat: int = 3) -> list[tuple[float, float]]:
    """Python CPU (us) per refused request, fed straight to the HTTP protocol (a fake transport: the syscalls,
    the same either way, are left out): uvicorn's protocol + the ASGI ``LoadShedder`` (a refusal is a scope, a
    task and two ASGI sends) against ``serve``'s protocol, which refuses once the headers are parsed."""
    import uvloop
    from uvicorn.config import Config
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Plain
    from uvicorn.server import ServerState

    from context_store.server.http_protocol import HttpToolsProtocol
    from context_store.server.shedding import LoadShedder

    class Sink(asyncio.Transport):
        writes = 0

        def write(self, data: Any) -> None:
            self.writes += 1

        def writelines(self, lines: Any) -> None:
            self.writes += 1

        def is_closing(self) -> bool:
            return False

        def close(self) -> None: ...

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

        def pause_reading(self) -> None: ...

        def resume_reading(self) -> None: ...

        def get_write_buffer_size(self) -> int:
            return 0

    async def never(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("everything is refused")

    body = b'{"params": {"workspaceName": "w", "featureServiceName": "bench", "joinKeyMap": {"user_id": "u1"}}}'
    req = f"POST {bs.PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n".encode()
    req += b"Content-Length: %d\r\n\r\n" % len(body) + body

    async def per_refusal(cls: Any) -> float:
        shedder = LoadShedder(never, max_in_flight=1)
        shedder.in_flight = 1  # full: every request is refused
        config = Config(app=shedder, loop="none", log_level="error")
        config.load()
        proto = cls(config=config, server_state=ServerState(), app_state={})
        sink = Sink()
        proto.connection_made(sink)
        t0 = time.process_time()
        for _ in range(n):
            proto.data_received(req)
            await asyncio.sleep(0)  # the ASGI task (uvicorn) or the coalesced write (serve) runs
            await asyncio.sleep(0)
        took = time.process_time() - t0
        assert sink.writes >= n
        proto.connection_lost(None)
        return took / n * 1e6

    async def both() -> list[tuple[float, float]]:
        return [(await per_refusal(Plain), await per_refusal(HttpToolsProtocol)) for _ in range(repeat)]

    return uvloop.run(both())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument(
        "--calm-duration",
        type=float,
        default=0.0,
        help="seconds of the 0.5x run whose p99 is the ratio's denominator (default: --duration); a p99 over a "
        "longer window depends less on one stall of the host",
    )
    ap.add_argument(
        "--calm-after",
        action="store_true",
        help="run the 0.5x load again after the 2x one (same server): how much the denominator itself moves",
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--connections", type=int, default=512, help="client connections at 2x saturation")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument(
        "--configs",
        nargs="+",
        default=["0:0", "32:10:0", "32:10:5"],
        help="max_in_flight:max_lag_ms[:max_queue_ms][:checkout to serve, e.g. /work/main for an A/B of the server "
        "code]; e.g. 32:10:0 = serve's default, 32:10:5 = with the queue-delay (CoDel) bound",
    )
    ap.add_argument(
        "--spin-ms",
        type=float,
        default=0.0,
        help="instead of get-features from Redis: a request-time view holding the event loop this long per "
        "request (known capacity: workers x 1000 / spin-ms req/s, not measured with wrk)",
    )
    ap.add_argument(
        "--generator-cpus", help="taskset CPU list for the load generators (wrk, openloop), e.g. 1; default: any"
    )
    ap.add_argument("--server-cpus", help="taskset CPU list for the server's processes, e.g. 0; default: any")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--append", action="store_true", help="add this run's section to --out instead of replacing it")
    ap.add_argument(
        "--refusal-cost", action="store_true", help="only: Python CPU per refused request, ASGI vs protocol layer"
    )
    args = ap.parse_args()
    if args.refusal_cost:
        for plain, ours in refusal_cost():
            print(f"per refusal: uvicorn + ASGI LoadShedder {plain:.1f} us, serve's protocol {ours:.1f} us")
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    args.openloop = openloop.build()
    if args.openloop is None:
        sys.exit("no C compiler (cc) to build evals/loadgen/openloop.c: apt-get install -y gcc")
    if args.generator_cpus:  # wrk inherits it (openloop is started under taskset)
        os.sched_setaffinity(0, _cpu_list(args.generator_cpus))
    configs = [_parse_config(c) for c in args.configs]
    ws = "ovl" + uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="cs-bench-overload-"))
    repo = tmp / "repo"
    repo.mkdir()
    if args.spin_ms:
        (repo / "features.py").write_text(SPIN_DEFINITIONS)
        (repo / "context_store.yaml").write_text(f"online_store: sqlite\nworkspace: {ws}\n")
        params = {"featureServiceName": "busy", "joinKeyMap": {}, "requestContextMap": {"amount": args.spin_ms}}
    else:
        (repo / "features.py").write_text(bs.DEFINITIONS)
        (repo / "context_store.yaml").write_text(f"online_store: {bs.REDIS_URL}\nworkspace: {ws}\n")
        params = {"featureServiceName": "bench", "joinKeyMap": {"user_id": "u1"}}
    body = json.dumps({"params": {"workspaceName": ws, **params}}).encode()
    import redis

    rds = redis.Redis.from_url(bs.REDIS_URL)
    runs: dict[str, list[dict[str, Any]]] = {_label(c): [] for c in configs}
    started = datetime.now(UTC)
    load_start = Path("/proc/loadavg").read_text().strip()
    try:
        if args.spin_ms:
            import context_store as cs

            cs.ContextStore(repo).apply()
        else:
            bs.seed(repo, args.users)
        for rep in range(args.repeat):
            sat: float | None = None
            for cfg in configs:
                row = run_one(repo, body, cfg, sat, args)
                row["rep"] = rep
                sat = row["saturation_rps"]
                runs[row["config"]].append(row)
                print(rep, json.dumps(row), file=sys.stderr, flush=True)
    finally:
        for k in rds.scan_iter(match=f"cs:{ws}:*", count=1000):
            rds.delete(k)
        rds.close()
        shutil.rmtree(tmp, ignore_errors=True)
    load_end = Path("/proc/loadavg").read_text().strip()
    for rep in range(args.repeat):  # a steadier baseline: the calm p99 of every server of the repetition
        rows = [r for rs in runs.values() for r in rs if r["rep"] == rep]
        base = statistics.median(r["calm_p99_ms"] for r in rows)
        for row in rows:
            row["ratio_pooled"] = row["hot_200_p99_ms"] / base
    sats = [r["saturation_rps"] for r in next(iter(runs.values()))]
    cmd = "python evals/bench_overload.py " + " ".join(sys.argv[1:])
    raw = "\n".join(json.dumps(r) for rs in runs.values() for r in rs)
    what = (
        f"a request-time view holding the event loop {args.spin_ms:g} ms per request (sqlite store): known capacity "
        f"{sats[0]:.0f} req/s"
        if args.spin_ms
        else "get-features of 10 features from Redis; saturation (wrk, unbounded server, per repetition): "
        + ", ".join(f"{s:.0f}" for s in sats)
        + " req/s"
    )
    text = f"""## {"Known capacity" if args.spin_ms else "get-features"}: `{cmd.strip()}`

Run {started:%Y-%m-%d %H:%M} UTC, {bs.machine()}; {args.workers} server worker(s), the load generator and other
sessions' jobs share the cores. /proc/loadavg before: `{load_start}`; after: `{load_end}`.
Served: {what}. The calm run sends half of it (32 connections), the hot run twice it ({args.connections}
connections), open loop, latency from each request's scheduled send time. {args.repeat} interleaved repetitions
of {args.duration:g} s runs (0.5x: {args.calm_duration or args.duration:g} s): median (min-max). The ratio is taken
within each run (one server, same minutes), then
the median of the ratios; as the calm p99 of one 5 s run is itself noisy on a shared machine, the next column
divides by the median calm p99 of all servers in the same repetition.

{table(runs)}

Raw rows (one per run):

```
{raw}
```
"""
    out = Path(args.out)
    out.write_text((out.read_text() if args.append and out.exists() else "") + text)
    print(text)


if __name__ == "__main__":
    main()
