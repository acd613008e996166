"""compose.yaml and the Dockerfile cannot run here (no Docker): check them against the real CLI.

Every ``context-store`` command a service runs must parse with the installed CLI, ports and health
checks must agree, and every path the Dockerfile copies must exist.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def _cli_parse(args: list[str]) -> click.Context:
    """Parse ``context-store ARGS`` with the real click commands, without running them."""
    from context_store.cli.main import cli

    assert args[0] == "context-store", args
    ctx = cli.make_context("context-store", list(args[1:]), resilient_parsing=False)
    cmd: click.Command = cli
    rest = list(args[1:])
    while isinstance(cmd, click.Group):
        name, sub, rest = cmd.resolve_command(ctx, rest)
        assert sub is not None, f"unknown command {name!r} in {args}"
        ctx = sub.make_context(name or "", rest, parent=ctx)
        cmd = sub
        rest = ctx.protected_args + ctx.args if isinstance(sub, click.Group) else []
    return ctx


def test_services_and_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "api", "worker"} <= set(services)
    for name in ("api", "worker", "apply"):
        assert services[name]["build"]["dockerfile"] == "Dockerfile"
        assert (ROOT / services[name]["build"]["context"] / "Dockerfile").exists()
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"


def test_service_commands_parse_with_the_cli(compose: dict[str, Any]) -> None:
    seen = set()
    for _name, svc in compose["services"].items():
        cmd = svc.get("command")
        if not cmd or cmd[0] != "context-store":
            continue
        ctx = _cli_parse(cmd)
        seen.add(ctx.command.name)
        # --repo points at the mounted feature repo.
        assert "/repo" in cmd and any(v.endswith(":/repo:ro") for v in svc["volumes"])
    assert {"serve", "worker", "apply"} <= seen
    dockerfile_cmd = re.search(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.M)
    assert dockerfile_cmd
    _cli_parse(yaml.safe_load(dockerfile_cmd.group(1)))


def test_ports_health_and_auth(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    ctx = _cli_parse(api["command"])
    port = ctx.params["port"]
    assert ctx.params["host"] == "0.0.0.0" and not ctx.params["no_auth"]  # public bind => keys required
    assert ctx.params["no_stream_workers"]  # the worker service runs them
    assert any(str(p).split(":")[-1] == str(port) for p in api["ports"])
    assert f":{port}/readyz" in " ".join(api["healthcheck"]["test"])
    assert f"EXPOSE {port}" in (ROOT / "Dockerfile").read_text()
    assert compose["services"]["redis"]["healthcheck"]["test"][-1] == "ping"
    # Every app service points the online store at the redis service and shares the data volume.
    for name in ("api", "worker", "apply"):
        svc = compose["services"][name]
        assert svc["environment"]["CONTEXT_STORE_ONLINE_STORE"].startswith("redis://redis:")
        assert f"cs-data:{svc['environment']['CONTEXT_STORE_DATA_DIR']}" in svc["volumes"]
    assert "cs-data" in compose["volumes"] and "redis-data" in compose["volumes"]
    assert "--appendonly" in compose["services"]["redis"]["command"]


def test_dockerfile_copies_existing_paths_and_extras() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for part in src.split():
            assert (ROOT / part).exists(), f"Dockerfile copies missing {part}"
    extras = re.search(r"ARG EXTRAS=(\S+)", text).group(1).split(",")  # type: ignore[union-attr]
    pyproject = (ROOT / "pyproject.toml").read_text()
    for e in extras:
        assert re.search(rf"^{e} = \[", pyproject, re.M), f"extra {e!r} not in pyproject"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored


@pytest.mark.redis
def test_worker_healthcheck_reads_real_heartbeats(compose: dict[str, Any], redis_url: str) -> None:
    """Run the worker service's health check here against real Redis: unhealthy, then healthy after a beat."""
    from context_store.compute.stream.redis_streams import RedisStreamLog

    test = compose["services"]["worker"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    ws = "h" + uuid.uuid4().hex[:10]
    env = {**os.environ, "CONTEXT_STORE_ONLINE_STORE": redis_url, "CONTEXT_STORE_WORKSPACE": ws}
    run = lambda: subprocess.run([sys.executable, "-c", test[3]], env=env, timeout=60).returncode  # noqa: E731
    assert run() != 0
    log = RedisStreamLog(redis_url, ws)
    log.heartbeat("test-worker")
    try:
        assert run() == 0
    finally:
        log.leave("test-worker")
        log.r.delete(log.workers_key)
