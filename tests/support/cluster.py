"""A real Redis Cluster of a test's own: ``redis-server --cluster-enabled yes`` processes on free ports,
joined by ``redis-cli --cluster create`` (3 masters + 3 replicas by default).

``RedisClusterProcs(tmp).start()`` / ``.url`` (``redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...``) /
``.kill(port)`` / ``.restart(port)`` / ``.stop()``. Only a test's own cluster may be killed or flushed.
The ``redis_cluster`` fixture shares one cluster per test session (keys of tests are kept apart by workspace).
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["RedisClusterProcs", "redis_cluster"]


def _free_cluster_port() -> int:
    """A free port p <= 55535 whose bus port p + 10000 is free too (redis-server refuses higher ports)."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} binary not found (apt-get install redis-server redis-tools)")
    return path


class RedisClusterProcs:
    """``masters`` masters, each with ``replicas`` replicas, on 127.0.0.1."""

    def __init__(self, tmp: Path, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 2000) -> None:
        self.dir = tmp
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.ports = [_free_cluster_port() for _ in range(masters * (1 + replicas))]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", p) for p in self.ports]

    def _spawn(self, port: int) -> None:
        node_dir = self.dir / f"node-{port}"
        node_dir.mkdir(parents=True, exist_ok=True)
        args = [
            "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
            "--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", str(self.node_timeout_ms),
            # a replica always stands for election, however long since it heard from its master
            # (the default refuses after 10 node timeouts: a busy CI box could leave a slot unserved)
            "--cluster-replica-validity-factor", "0",
            "--appendonly", "no", "--save", "", "--dir", str(node_dir),
        ]  # fmt: skip
        self.procs[port] = subprocess.Popen(
            [_binary("redis-server"), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def _wait_ping(self, port: int, timeout: float = 10.0) -> None:
        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5).ping():
                    return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {port} did not start")

    def start(self, timeout: float = 60.0) -> RedisClusterProcs:
        for port in self.ports:
            self._spawn(port)
        for port in self.ports:
            self._wait_ping(port)
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        create = [_binary("redis-cli"), "--cluster", "create", *nodes, "--cluster-replicas", str(self.replicas)]
        done = subprocess.run([*create, "--cluster-yes"], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout[-800:]} {done.stderr[-800:]}")
        self.wait_ok(timeout)
        return self

    def wait_ok(self, timeout: float = 60.0) -> None:
        """Until every live node reports ``cluster_state:ok`` and every replica is in sync."""
        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = []
            for port in self.procs:
                try:
                    info = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5).cluster("info")
                    states.append(info.get("cluster_state") == "ok")
                except Exception:  # noqa: BLE001 - a node still starting
                    states.append(False)
            if states and all(states) and self._replicas_synced():
                return
            time.sleep(0.2)
        raise RuntimeError("redis cluster did not reach cluster_state:ok")

    def _replicas_synced(self) -> bool:
        """Every live replica's link to its master is up (initial sync done): WAIT can be met."""
        import redis

        for port in self.procs:
            try:
                info = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5).info("replication")
            except Exception:  # noqa: BLE001 - a node still starting
                return False
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                return False
        return True

    def master_ports(self) -> list[int]:
        """Ports of the nodes that are masters now (after a failover this changes)."""
        import redis

        for port in self.procs:
            try:
                nodes = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5).cluster("nodes")
            except Exception:  # noqa: BLE001 - this node is down; ask another
                continue
            # redis-py parses CLUSTER NODES into {"host:port": {"flags": "myself,master", ...}}
            return sorted(
                int(addr.split("@")[0].rsplit(":", 1)[1])
                for addr, node in nodes.items()
                if "master" in node["flags"] and "fail" not in node["flags"]
            )
        raise RuntimeError("no cluster node answers")

    def master_of(self, key: bytes | str) -> int:
        """The port of the master serving ``key``'s slot now."""
        import redis
        from redis.crc import key_slot

        slot = key_slot(key.encode() if isinstance(key, str) else key)
        for port in self.procs:
            try:
                slots = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5).execute_command("CLUSTER SLOTS")
            except Exception:  # noqa: BLE001 - this node is down; ask another
                continue
            for lo, hi, master, *_ in slots:
                if int(lo) <= slot <= int(hi):
                    return int(master[1])
        raise RuntimeError("no cluster node answers")

    def kill(self, port: int) -> None:
        """SIGKILL one node (no save): a crash, for failover tests."""
        proc = self.procs.pop(port, None)
        if proc is not None:
            proc.kill()
            proc.wait(10)

    def restart(self, port: int) -> None:
        """Start a killed node again with its cluster config (it rejoins, as a replica if it was failed over)."""
        self._spawn(port)
        self._wait_ping(port)

    def stop(self) -> None:
        for port in list(self.procs):
            self.kill(port)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcs]:
    """One 3-master + 3-replica cluster for the test session (tests keep apart by workspace)."""
    cluster = RedisClusterProcs(tmp_path_factory.mktemp("redis-cluster")).start()
    try:
        yield cluster
    finally:
        cluster.stop()
