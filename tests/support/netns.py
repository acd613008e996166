"""Hosts of a test's own: Linux network namespaces joined by veth pairs to one bridge (``ip netns`` + veth, root).

``Network()`` makes a switch namespace holding a bridge; ``add_host("redis1")`` makes a namespace with
``eth0`` at ``10.<a>.<b>.<n>/24`` wired to the bridge; ``host.popen([...])`` runs a process in it;
``cut(host)`` / ``restore(host)`` take its link down and up (a partition: packets are dropped, sockets stay
open, as when a cable or a switch port fails); ``close()`` kills every process and deletes the namespaces.
Nothing is created in the caller's own namespace except transient veth ends, which move out at once.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

__all__ = ["Host", "Network", "netns_available"]


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def netns_available() -> str | None:
    """None when namespaces can be made here, else why not (not root, no iproute2)."""
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return None


@dataclass
class Host:
    name: str
    ns: str
    ip: str
    switch_end: str  # the veth end on the bridge (in the switch namespace)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def popen(self, cmd: Sequence[str], env: dict[str, str] | None = None, **kw: object) -> subprocess.Popen[bytes]:
        """Start ``cmd`` inside this host's namespace (killed by ``Network.close``)."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(["ip", "netns", "exec", self.ns, *cmd], env=env, **kw)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def run(self, cmd: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.ns, *cmd], capture_output=True, text=True, timeout=timeout)


class Network:
    """One /24 on one bridge; each host a namespace."""

    def __init__(self) -> None:
        why = netns_available()
        if why is not None:
            pytest.fail(f"multi-host test cannot run: {why}")
        self.tag = f"{random.randrange(16**4):04x}"
        self.subnet = f"10.{random.randrange(64, 250)}.{random.randrange(1, 250)}"
        self.switch = f"cs{self.tag}sw"
        self.hosts: dict[str, Host] = {}
        _ip("netns", "add", self.switch)
        self._in_switch("link", "add", "br0", "type", "bridge")
        self._in_switch("link", "set", "br0", "up")

    def _in_switch(self, *args: str) -> None:
        _ip("netns", "exec", self.switch, "ip", *args)

    def add_host(self, name: str) -> Host:
        n = len(self.hosts) + 1
        ns = f"cs{self.tag}h{n}"
        inner, outer = f"cs{self.tag}i{n}", f"cs{self.tag}o{n}"
        _ip("netns", "add", ns)
        _ip("link", "add", inner, "type", "veth", "peer", "name", outer)
        _ip("link", "set", inner, "netns", ns)
        _ip("link", "set", outer, "netns", self.switch)
        ip = f"{self.subnet}.{n + 1}"
        for args in (
            ("link", "set", "lo", "up"),
            ("link", "set", inner, "name", "eth0"),
            ("addr", "add", f"{ip}/24", "dev", "eth0"),
            ("link", "set", "eth0", "up"),
        ):
            _ip("netns", "exec", ns, "ip", *args)
        self._in_switch("link", "set", outer, "master", "br0")
        self._in_switch("link", "set", outer, "up")
        host = self.hosts[name] = Host(name, ns, ip, outer)
        return host

    def cut(self, host: Host) -> None:
        """Drop the host's link on the bridge side: in-flight packets are lost, its sockets stay open."""
        self._in_switch("link", "set", host.switch_end, "down")

    def restore(self, host: Host) -> None:
        self._in_switch("link", "set", host.switch_end, "up")

    def close(self) -> None:
        for host in self.hosts.values():
            for proc in host.procs:
                if proc.poll() is None:
                    proc.kill()
            for proc in host.procs:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
            subprocess.run(["ip", "netns", "delete", host.ns], capture_output=True, timeout=20)
        subprocess.run(["ip", "netns", "delete", self.switch], capture_output=True, timeout=20)
        self.hosts.clear()
