"""Several hosts: Redis, two API servers, two stream workers and a load generator, each in its own network
namespace on one bridge. Mid-load one API server's link is cut (the loader fails over to the other server and
retries with the same Idempotency-Key), then Redis's link is cut (writes and reads fail with 503 until it is
back). Afterwards every acknowledged event counts exactly once: the served count and sum per user equal a
recomputation from the loader's acknowledged events, and reads recovered within seconds of each restore.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
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


@pytest.mark.skipif(netns_available() is not None, reason=str(netns_available()))
def test_cut_links_mid_load_lose_no_acknowledged_event(tmp_path: Path) -> None:
    net = Network()
    try:
        db, api1, api2, w1, w2, load = (net.add_host(n) for n in ("redis", "api1", "api2", "w1", "w2", "load"))
        db.popen(
            [
                "redis-server",
                "--port",
                "6379",
                "--bind",
                db.ip,
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ],
            stdout=open(os.devnull, "wb"),  # noqa: SIM115 - the process owns it
        )
        ws = "mh" + uuid.uuid4().hex[:8]
        config = {
            "online_store": f"redis://{db.ip}:6379/0",
            "workspace": ws,
            "redis_read_timeout_ms": 1000,
            "allowed_hosts": [f"{api1.ip}:{PORT}", f"{api2.ip}:{PORT}"],
        }
        repo = make_repo(tmp_path / "repo", SERVER_DEFINITIONS, config=config)
        done = load.run([sys.executable, "-m", "context_store.cli", "apply", "--repo", str(repo)], timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        from context_store.server.keys import KeyStore, key_store_path

        key = KeyStore(key_store_path(repo / ".context_store")).create(ws, "ingest")[0]
        for api in (api1, api2):
            _cli(api, repo, "serve", "--host", api.ip, "--port", str(PORT), "--no-mcp")
        for w in (w1, w2):
            w.popen(
                [sys.executable, "-c", "from context_store.cli.stream import worker; worker()", "--repo", str(repo)],
                env=_env(),
            )
        urls = [f"http://{api1.ip}:{PORT}", f"http://{api2.ip}:{PORT}"]
        for url in urls:
            _wait_http(load, url)
        report = tmp_path / "report.json"
        loader = load.popen(
            [sys.executable, "-m", "tests.support.multihost_loader", ",".join(urls), key, ws, "14", "20", str(report)],
            env=_env(),
        )
        time.sleep(3)
        net.cut(api1)
        cut_api = (time.time(), 0.0)
        time.sleep(4)
        net.restore(api1)
        cut_api = (cut_api[0], time.time())
        time.sleep(2)
        net.cut(db)
        cut_db_start = time.time()
        time.sleep(3)
        net.restore(db)
        cut_db_end = time.time()
        assert loader.wait(240) == 0
        out = json.loads(report.read_text())
    finally:
        net.close()
    acked = out["acked"]
    fails = [t for t, ok in out["reads"] if not ok]
    print(
        f"attempts {out['attempts']}, failed reads {len(fails)}, api cut {cut_api}, db cut {cut_db_start}-{cut_db_end}"
    )
    assert len(acked) > 100 and [a["i"] for a in acked] == list(range(len(acked))), "every push acknowledged, in order"
    assert out["attempts"] > len(acked), "the cuts made some pushes fail and retry"
    for user, (count, total) in out["expect"].items():
        row = out["served"][user]
        assert row is not None, f"final read of {user} failed"
        assert int(row["txn_stats.amount_count_1h"]) == count, (user, row, count)
        assert abs(float(row["txn_stats.amount_sum_1h"]) - total) < 1e-6, (user, row, total)
    # Reads recover within a few seconds of the Redis link coming back.
    during = [ok for t, ok in out["reads"] if cut_db_start + 1.0 < t < cut_db_end]
    assert during and not any(during), "reads fail while Redis is cut off (else the cut did not happen)"
    after = [t for t, ok in out["reads"] if ok and t > cut_db_end]
    assert after and after[0] - cut_db_end < 5.0, (cut_db_start, cut_db_end, after[:3])
