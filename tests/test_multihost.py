"""Several hosts: the online store, two API servers, two stream workers and a load generator, each in its own
network namespace on one bridge. Mid-load one API server's link is cut (the loader fails over to the other server
and retries with the same Idempotency-Key), then a store host's link is cut:

- ``redis``: the one Redis host; writes and reads fail with 503 until its link is back;
- ``cluster``: a Redis Cluster of 6 hosts (3 masters + 3 replicas, WAIT 1), and the cut host is the master holding
  the source's stream slot. Its replica on another host is promoted and reads recover while the link is still
  down; pushes to that slot answer 503 until the old master is back as the new master's replica (WAIT 1 needs a
  replica: durability before availability, docs/deploy.md), then succeed again.

Afterwards every acknowledged event counts exactly once: the served count and sum per user equal a recomputation
from the loader's acknowledged events.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.netns import Host, Network, netns_available
from tests.support.repo import make_repo
from tests.support.server import SERVER_DEFINITIONS

pytestmark = [pytest.mark.slow, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[1]
PORT = 8000


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTEXT_STORE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _cli(host: Host, repo: Path, *args: str) -> Any:
    return host.popen([sys.executable, "-m", "context_store.cli", *args, "--repo", str(repo)], env=_env())


def _wait_http(host: Host, url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if host.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url + "/healthz"]).stdout == "200":
            return
        time.sleep(0.3)
    raise AssertionError(f"{url} did not come up")


@dataclass
class Store:
    url: str
    hosts: list[Host]
    cut: Host  # the store host whose link is cut mid-load


def _redis_host(net: Network) -> Store:
    db = net.add_host("redis")
    args = ["--port", "6379", "--bind", db.ip, "--save", "", "--appendonly", "no", "--protected-mode", "no"]
    db.popen(["redis-server", *args], stdout=subprocess.DEVNULL)
    return Store(f"redis://{db.ip}:6379/0", [db], db)


def _cluster_hosts(net: Network, tmp: Path) -> Store:
    hosts = [net.add_host(f"node{i}") for i in range(6)]
    for h in hosts:
        (tmp / h.name).mkdir()
        args = ["--port", "7000", "--bind", h.ip, "--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]
        args += [
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-replica-validity-factor",
            "0",
            "--dir",
            str(tmp / h.name),
        ]
        args += ["--save", "", "--appendonly", "no", "--protected-mode", "no"]
        h.popen(["redis-server", *args], stdout=subprocess.DEVNULL)
    for h in hosts:
        _until(lambda h=h: h.run(["redis-cli", "-h", h.ip, "-p", "7000", "ping"]).stdout.strip() == "PONG", "node up")
    nodes = [f"{h.ip}:7000" for h in hosts]
    create = ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "1", "--cluster-yes"]
    done = hosts[0].run(create, timeout=60)
    assert done.returncode == 0, done.stdout[-800:] + done.stderr[-800:]

    def ready() -> bool:
        for h in hosts:
            info = h.run(["redis-cli", "-h", h.ip, "-p", "7000", "info", "replication"]).stdout
            state = h.run(["redis-cli", "-h", h.ip, "-p", "7000", "cluster", "info"]).stdout
            if "cluster_state:ok" not in state or ("role:slave" in info and "master_link_status:up" not in info):
                return False
        return True

    _until(ready, "cluster ok with replicas in sync")
    # The master serving the source's stream slot (all partitions of a source share one hash tag).
    slot = int(
        hosts[0].run(["redis-cli", "-h", hosts[0].ip, "-p", "7000", "cluster", "keyslot", "{s:transactions}"]).stdout
    )
    table = hosts[0].run(["redis-cli", "-h", hosts[0].ip, "-p", "7000", "cluster", "nodes"]).stdout
    owner = None
    for line in table.splitlines():
        parts = line.split()
        if "master" not in parts[2]:
            continue
        for rng in parts[8:]:
            lo, _, hi = rng.partition("-")
            if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                owner = parts[1].split(":")[0]
    cut = next(h for h in hosts if h.ip == owner)
    return Store("redis+cluster://" + ",".join(nodes), hosts, cut)


def _until(check: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.skipif(netns_available() is not None, reason=str(netns_available()))
@pytest.mark.parametrize("topology", ["redis", "cluster"])
def test_cut_links_mid_load_lose_no_acknowledged_event(tmp_path: Path, topology: str) -> None:
    net = Network()
    try:
        store = _redis_host(net) if topology == "redis" else _cluster_hosts(net, tmp_path)
        api1, api2, w1, w2, load = (net.add_host(n) for n in ("api1", "api2", "w1", "w2", "load"))
        ws = "mh" + uuid.uuid4().hex[:8]
        config: dict[str, Any] = {
            "online_store": store.url,
            "workspace": ws,
            "redis_read_timeout_ms": 1000,
            "allowed_hosts": [f"{api1.ip}:{PORT}", f"{api2.ip}:{PORT}"],
        }
        if topology == "cluster":
            config["redis_wait_replicas"] = 1  # acknowledged = on a replica too: a failover keeps it
        repo = make_repo(tmp_path / "repo", SERVER_DEFINITIONS, config=config)
        done = load.run([sys.executable, "-m", "context_store.cli", "apply", "--repo", str(repo)], timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        from context_store.server.keys import KeyStore, key_store_path

        key = KeyStore(key_store_path(repo / ".context_store")).create(ws, "ingest")[0]
        for api in (api1, api2):
            # No lag shedding: on a busy 2-core box it would answer some reads 503, which this test would
            # count as network failures.
            _cli(api, repo, "serve", "--host", api.ip, "--port", str(PORT), "--no-mcp", "--max-lag-ms", "0")
        for w in (w1, w2):
            w.popen(
                [sys.executable, "-c", "from context_store.cli.stream import worker; worker()", "--repo", str(repo)],
                env=_env(),
            )
        urls = [f"http://{api1.ip}:{PORT}", f"http://{api2.ip}:{PORT}"]
        for url in urls:
            _wait_http(load, url)
        report = tmp_path / "report.json"
        seconds = "14" if topology == "redis" else "36"
        loader = load.popen(
            [
                sys.executable,
                "-m",
                "tests.support.multihost_loader",
                ",".join(urls),
                key,
                ws,
                seconds,
                "20",
                str(report),
            ],
            env=_env(),
        )
        time.sleep(3)
        net.cut(api1)
        time.sleep(4)
        net.restore(api1)
        time.sleep(2)
        net.cut(store.cut)
        cut_start = time.time()
        time.sleep(3 if topology == "redis" else 12)
        net.restore(store.cut)
        cut_end = time.time()
        assert loader.wait(240) == 0
        out = json.loads(report.read_text())
    finally:
        net.close()
    acked = out["acked"]
    fails = [t for t, ok in out["reads"] if not ok]
    print(f"{topology}: {len(acked)} acked in {out['attempts']} attempts, {len(fails)} failed reads")
    for t, status, text in out["failures"][:40]:
        print(f"  push failed at {t - cut_start:+.1f} s from the store cut: {status} {text}")
    assert len(acked) > 20 and [a["i"] for a in acked] == list(range(len(acked))), "every push acknowledged, in order"
    assert out["attempts"] > len(acked), "the cuts made some pushes fail and retry"
    for user, (count, total) in out["expect"].items():
        row = out["served"][user]
        assert row is not None, f"final read of {user} failed"
        assert int(row["txn_stats.amount_count_1h"]) == count, (user, row, count)
        assert abs(float(row["txn_stats.amount_sum_1h"]) - total) < 1e-6, (user, row, total)
    if topology == "redis":
        # Reads fail while the one Redis is cut off, and recover within a few seconds of its link coming back.
        during = [ok for t, ok in out["reads"] if cut_start + 1.0 < t < cut_end]
        assert during and not any(during), "reads fail while Redis is cut off (else the cut did not happen)"
        after = [t for t, ok in out["reads"] if ok and t > cut_end]
        assert after and after[0] - cut_end < 5.0, (cut_start, cut_end, after[:3])
    else:
        # The replica took over: reads recover while the old master's host is still cut off.
        late = [t for t in fails if cut_start < t < cut_end]
        assert not late or late[-1] - cut_start < 9.0, f"reads failed until {late[-1] - cut_start:.1f} s after the cut"
        assert any(ok for t, ok in out["reads"] if cut_start + 9.0 < t < cut_end), "reads served during the cut"
        resumed = [a["t"] for a in acked if a["t"] > cut_end]
        assert resumed and resumed[0] - cut_end < 15.0, "pushes acknowledged again soon after the link is back"
