"""The load host of tests/test_multihost.py (run as ``-m tests.support.multihost_loader``).

Arguments: SERVERS (comma-separated URLs) KEY WS SECONDS USERS OUT.

Pushes events for SECONDS, one per request, alternating servers; a failed push is retried (the other server first) with
its Idempotency-Key until acknowledged. A reader thread reads a user's features every 50 ms (users in turn)
(alternating servers) and logs (wall time, ok). Then it
waits until the served count/sum per user equal what it had acknowledged (or 60 s) and writes a JSON report.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

GET_FEATURES = "/api/v1/feature-service/get-features"


def _params(ws: str, user: str) -> dict[str, Any]:
    return {
        "workspace_name": ws,
        "feature_service_name": "user_features",
        "join_key_map": {"user_id": user},
        "metadataOptions": {"includeNames": True},
    }


def _read(client: httpx.Client, url: str, headers: dict[str, str], ws: str, user: str) -> dict[str, Any] | None:
    """name -> value of the user's features, None when the read fails."""
    try:
        r = client.post(url + GET_FEATURES, json={"params": _params(ws, user)}, headers=headers)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    body = r.json()
    names = [f["name"] for f in body["metadata"]["features"]]
    return dict(zip(names, body["result"]["features"], strict=True))


def main(servers: list[str], key: str, ws: str, seconds: float, users: int, out: str) -> None:
    headers = {"authorization": f"Bearer {key}"}
    client = httpx.Client(timeout=2.0)
    acked: list[dict[str, Any]] = []
    reads: list[tuple[float, bool]] = []
    attempts = 0
    failures: list[tuple[float, int, str]] = []  # why pushes failed (the first 200), for a failing test's message
    stop = threading.Event()

    def reader() -> None:
        rc = httpx.Client(timeout=1.0)
        n = 0
        while not stop.is_set():
            ok = _read(rc, servers[n % len(servers)], headers, ws, f"u{n % users}") is not None
            reads.append((time.time(), ok))
            n += 1
            time.sleep(0.05)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    ts = (datetime.now(UTC) - timedelta(minutes=2)).isoformat()
    i, end = 0, time.time() + seconds
    while time.time() < end:
        user, amount = f"u{i % users}", float(i % 7 + 1)
        body = {
            "workspace_name": ws,
            "records": {"transactions": [{"record": {"user_id": user, "amount": amount, "ts": ts}}]},
        }
        k = 0
        while True:
            attempts += 1
            try:
                r = client.post(
                    servers[(i + k) % len(servers)] + "/v1/ingest",
                    json=body,
                    headers={**headers, "Idempotency-Key": f"ev-{i}"},
                )
                if r.status_code == 200:
                    acked.append({"i": i, "user": user, "amount": amount, "t": time.time()})
                    break
                failures.append((time.time(), r.status_code, r.text[:300]))
            except httpx.HTTPError as e:
                failures.append((time.time(), 0, f"{type(e).__name__}: {e}"[:300]))
            k += 1
            time.sleep(0.05)
        i += 1
    stop.set()
    thread.join()
    expect: dict[str, list[float]] = {}
    for a in acked:
        c, s = expect.get(a["user"], [0, 0.0])
        expect[a["user"]] = [c + 1, s + a["amount"]]
    served: dict[str, dict[str, Any] | None] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        served = {u: _read(client, servers[-1], headers, ws, u) for u in expect}
        if all(_matches(served[u], c, s) for u, (c, s) in expect.items()):
            break
        time.sleep(0.5)
    report = {"acked": acked, "reads": reads, "attempts": attempts, "expect": expect, "served": served}
    report["failures"] = failures[:200]
    with open(out, "w") as f:
        json.dump(report, f)


def _matches(row: dict[str, Any] | None, count: float, total: float) -> bool:
    if row is None or row.get("txn_stats.amount_count_1h") is None:
        return False
    return int(row["txn_stats.amount_count_1h"]) == count and abs(float(row["txn_stats.amount_sum_1h"]) - total) < 1e-6


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0].split(","), a[1], a[2], float(a[3]), int(a[4]), a[5])
