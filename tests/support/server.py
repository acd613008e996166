"""Helpers for server tests: a small feature repo and a real uvicorn server on a free port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from tests.support.repo import make_repo

__all__ = ["SERVER_DEFINITIONS", "SERVING_MODES", "make_server_repo", "free_port", "running_server", "FEATURES_10"]

# The Tecton routes are served two ways: the ASGI fast path (default) and, with create_app(fast_path=False),
# the FastAPI routes it skips. Tests of those routes run through both (``fast_path`` param), same assertions.
SERVING_MODES = [pytest.param(True, id="fastpath"), pytest.param(False, id="fastapi")]

SERVER_DEFINITIONS = """
import context_store as cs

user = cs.Entity("user", join_keys=["user_id"])
transactions = cs.StreamSource(
    "transactions",
    schema=[cs.Field("user_id", cs.String), cs.Field("amount", cs.Float64), cs.Field("ts", cs.Timestamp)],
    timestamp_field="ts",
)
txn_stats = cs.FeatureView(
    "txn_stats",
    entities=[user],
    source=transactions,
    aggregations=[
        cs.Aggregate("amount", f, w) for w in ("1h", "1d") for f in ("count", "sum", "mean", "min", "max")
    ],
)
request = cs.RequestSource(schema=[cs.Field("amount", cs.Float64)])


@cs.realtime_feature_view(sources=[request, txn_stats], output=[cs.Field("amount_over_max", cs.Bool)])
def amount_check(req, stats):
    mx = stats["amount_max_1d"]
    return {"amount_over_max": mx is not None and req["amount"] > mx}


@cs.realtime_feature_view(sources=[request], output=[cs.Field("echo", cs.Float64)])
def slow_echo(req):
    import time

    if req["amount"] < 0:  # lets tests exceed a latency budget on purpose
        time.sleep(0.5)
    return {"echo": req["amount"]}


user_features = cs.FeatureService("user_features", [txn_stats])
fraud = cs.FeatureService("fraud", [txn_stats[["amount_count_1h", "amount_sum_1d"]], amount_check])
slow = cs.FeatureService("slow", [txn_stats[["amount_count_1h"]], slow_echo])
"""

FEATURES_10 = [f"txn_stats.amount_{f}_{w}" for w in ("1h", "1d") for f in ("count", "sum", "mean", "min", "max")]


def make_server_repo(root: Path, online_store: str, workspace: str) -> Path:
    # A 1 s read bound instead of the 100 ms default: on a busy 2-core CI box a Redis read can take longer than
    # 100 ms and answer 503 by design (tests/compute/stream/test_idempotency.py checks the default bounds).
    config = {"online_store": online_store, "workspace": workspace, "redis_read_timeout_ms": 1000}
    return make_repo(root, SERVER_DEFINITIONS, config=config)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(app: Any, port: int | None = None) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on 127.0.0.1; yields the base URL."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
