"""Data of the streaming tests: a repo with one stream source and aggregate views, events near ``T0``."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

import context_store as cs

# Online state keeps tiles relative to the wall clock (retention = windows + lateness + 1 day),
# so test events live in the recent past.
_NOW = datetime.now(UTC)
T0 = _NOW.replace(minute=0, second=0, microsecond=0) - timedelta(hours=12)

REPO = """
import context_store as cs

user = cs.Entity("user", join_keys=["user_id"])
history = cs.FileSource("data/txns.parquet", timestamp_field="ts")
txns = cs.StreamSource(
    "transactions",
    schema=[
        cs.Field("user_id", cs.String),
        cs.Field("ts", cs.Timestamp),
        cs.Field("amount", cs.Float64),
        cs.Field("merchant", cs.String),
    ],
    timestamp_field="ts",
    batch_source=history,
    allowed_lateness="{lateness}",
    partitions={partitions},
)
txn_stats = cs.FeatureView(
    "txn_stats",
    entities=[user],
    source=txns,
    aggregations=[
        cs.Aggregate("amount", "count", "1d"),
        cs.Aggregate("amount", "sum", "1h"),
        cs.Aggregate("amount", "sum", cs.Lifetime()),
        cs.Aggregate("amount", "mean", "1d"),
        cs.Aggregate("amount", "max", "1d"),
        cs.Aggregate("amount", "stddev_samp", "1d"),
        cs.Aggregate("merchant", "last_distinct_n", "1d", n=3),
        cs.Aggregate("merchant", "last", "1d"),
    ],
    {interval}
)
big_spend = cs.FeatureView(
    "big_spend",
    entities=[user],
    source=txns,
    transform="SELECT user_id, ts, amount * 2 AS doubled FROM source WHERE amount >= 0",
    aggregations=[cs.Aggregate("doubled", "sum", "2h")],
)
fraud = cs.FeatureService("fraud", [txn_stats, big_spend])
"""

SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("amount", pa.float64()),
        ("merchant", pa.string()),
    ]
)


def events_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMA)


class StoreFactory(Protocol):
    """The ``make_store`` fixture (tests/compute/conftest.py): REPO applied under ``root``, closed at teardown."""

    def __call__(
        self,
        root: Path,
        online_store: str = "sqlite",
        workspace: str = "default",
        history: list[dict[str, Any]] | None = None,
        partitions: int = 4,
        lateness: str = "1h",
        interval: str | None = None,
    ) -> cs.ContextStore: ...


def event(user: str, minutes: float, amount: float | None, merchant: str | None = "m0") -> dict[str, Any]:
    return {"user_id": user, "ts": T0 + timedelta(minutes=minutes), "amount": amount, "merchant": merchant}


def start_worker(store: Any, redis_url: str, *extra: str) -> subprocess.Popen[bytes]:
    """A real ``context-store worker`` process on ``store``'s repo and workspace (``extra``: more CLI
    options, e.g. ``--batch 8``); this checkout first on its path, no CONTEXT_STORE_* from the caller."""
    cmd = [
        sys.executable,
        "-c",
        "from context_store.cli.stream import worker; worker()",
        "--repo",
        str(store.config.repo),
        "--workspace",
        store.workspace,
        "--online-store",
        redis_url,
        *extra,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTEXT_STORE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
