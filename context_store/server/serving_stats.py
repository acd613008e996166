"""``GET /v1/status/serving``: QPS and p50/p99 latency over the last minutes, from the server's own metrics.

Nothing is added to the request path: requests already count into ``Metrics.request_latency`` (a cumulative
Histogram per route and service) and ``Metrics.requests`` (per route and status). ``ServingSeries.sample``,
run by a background task every ``interval`` seconds, reads those cumulative values (``collect()``, the
public prometheus_client API), keeps the difference to the previous reading as one point of a ring buffer
(``window / interval`` points) and keeps the raw readings for the per-route totals. A request to the
endpoint only formats what is there.

Per process: with several ``serve --workers`` the answer is the series of the worker that answered.
The console's own traffic (``/ui``, ``/v1/status/*``) and probes/scrapes are left out of the series, so
watching the chart does not move it; ``routes`` lists every route.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .metrics import Metrics

__all__ = ["ServingSeries", "quantile", "OPS_PREFIXES"]

# Routes that are not serving: the console and status endpoints, probes, scrapes, API docs.
OPS_PREFIXES = ("/ui", "/v1/status/", "/metrics", "/healthz", "/readyz", "/docs", "/openapi.json", "_unmatched")

# route -> (cumulative counts per bucket upper bound, ending with +Inf; cumulative count; cumulative sum)
_Reading = dict[str, tuple[list[float], float, float]]


def quantile(q: float, bounds: list[float], cumulative: list[float]) -> float | None:
    """Prometheus ``histogram_quantile``: linear interpolation inside the bucket that holds rank ``q * n``.

    ``bounds`` are the upper bounds (last one ``inf``), ``cumulative`` the counts at or below each."""
    n = cumulative[-1] if cumulative else 0.0
    if n <= 0:
        return None
    rank = q * n
    i = bisect.bisect_left(cumulative, rank)
    i = min(i, len(bounds) - 1)
    if math.isinf(bounds[i]):  # above the largest finite bound: report that bound (as Prometheus does)
        return bounds[i - 1] if i > 0 else None
    lo = bounds[i - 1] if i > 0 else 0.0
    below = cumulative[i - 1] if i > 0 else 0.0
    inside = cumulative[i] - below
    return lo + (bounds[i] - lo) * ((rank - below) / inside if inside > 0 else 1.0)


def _serving(route: str) -> bool:
    return not route.startswith(OPS_PREFIXES)


@dataclass
class ServingSeries:
    """A ring buffer of per-interval serving points, filled by ``run()`` (or ``sample()`` in tests)."""

    metrics: Metrics
    interval: float = 2.0
    window: float = 300.0
    points: deque[dict[str, float]] = field(init=False)
    _readings: deque[tuple[float, _Reading, dict[str, dict[str, float]]]] = field(init=False)
    _bounds: list[float] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        size = max(2, int(self.window / self.interval))
        self.points = deque(maxlen=size)
        self._readings = deque(maxlen=size + 1)

    def _read(self) -> tuple[_Reading, dict[str, dict[str, float]]]:
        """Cumulative buckets per route (summed over services), and requests per route and status."""
        fast = _read_children(self.metrics)
        buckets, sums, statuses = fast if fast is not None else _read_collected(self.metrics)
        hist: _Reading = {}
        for route, (bounds, counts) in buckets.items():
            self._bounds = bounds
            cum, acc = [], 0.0
            for c in counts:
                acc += c
                cum.append(acc)
            hist[route] = (cum, acc, sums.get(route, 0.0))
        return hist, statuses

    def sample(self, now: float | None = None) -> None:
        """Read the metrics once; append the point since the previous reading."""
        now = time.time() if now is None else now
        self.metrics.flush()  # this process's batched request metrics
        hist, statuses = self._read()
        if self._readings:
            t0, prev, _ = self._readings[-1]
            dt = max(now - t0, 1e-9)
            delta = _sum_delta((r for r in hist if _serving(r)), hist, prev, len(self._bounds))
            self.points.append(self._point(now, dt, delta))
        self._readings.append((now, hist, statuses))

    def _point(self, t: float, dt: float, delta: list[float]) -> dict[str, float]:
        n = delta[-1] if delta else 0.0
        p50 = quantile(0.5, self._bounds, delta) if n else None
        p99 = quantile(0.99, self._bounds, delta) if n else None
        return {
            "t": round(t, 3),
            "qps": round(n / dt, 3),
            "p50_ms": round((p50 or 0.0) * 1000, 3),
            "p99_ms": round((p99 or 0.0) * 1000, 3),
        }

    async def run(self) -> None:
        """Sample every ``interval`` seconds until cancelled (a failed reading is skipped, never fatal)."""
        while True:
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a metrics hiccup must not end the sampler
                pass
            await asyncio.sleep(self.interval)

    def snapshot(self) -> dict[str, Any]:
        """The endpoint's answer: the series and per-route totals over the buffered window."""
        routes: dict[str, Any] = {}
        if len(self._readings) >= 2:
            (t0, first, s0), (t1, last, s1) = self._readings[0], self._readings[-1]
            dt = max(t1 - t0, 1e-9)
            for route in sorted(last):
                delta = _sum_delta([route], last, first, len(self._bounds))
                n = delta[-1] if delta else 0.0
                if n <= 0:
                    continue
                st = {k: v - s0.get(route, {}).get(k, 0.0) for k, v in s1.get(route, {}).items()}
                p50, p99 = quantile(0.5, self._bounds, delta), quantile(0.99, self._bounds, delta)
                routes[route] = {
                    "requests": int(n),
                    "qps": round(n / dt, 3),
                    "p50_ms": round((p50 or 0.0) * 1000, 3),
                    "p99_ms": round((p99 or 0.0) * 1000, 3),
                    "errors": int(sum(v for k, v in st.items() if k[:1] in ("4", "5"))),
                    "serving": _serving(route),
                }
        return {
            "window_seconds": int(self.window),
            "interval_seconds": self.interval,
            "series": list(self.points),
            "routes": routes,
        }


def _sum_delta(routes: Iterable[str], now: _Reading, prev: _Reading, width: int) -> list[float]:
    """Cumulative bucket counts gained since ``prev``, summed over ``routes``."""
    out = [0.0] * width
    for r in routes:
        cum = now[r][0]
        before = prev.get(r, ([0.0] * len(cum), 0.0, 0.0))[0]
        for i in range(min(width, len(cum))):
            out[i] += cum[i] - (before[i] if i < len(before) else 0.0)
    return out


# route -> (upper bounds, per-bucket counts summed over services); route -> latency sum; route -> status -> count
_Raw = tuple[dict[str, tuple[list[float], list[float]]], dict[str, float], dict[str, dict[str, float]]]


def _read_children(metrics: Metrics) -> _Raw | None:
    """The labelled children's values, read directly: ~13x cheaper than ``collect()``, which builds a Sample
    per bucket (measured: 2.8 ms against 37 ms for 150 children on a loaded 2-core machine). Relies on
    prometheus_client internals (``_metrics``, ``_buckets``, ``_sum``, ``_value``, stable since 0.4); None when
    they are not there, and ``collect()`` is used instead."""
    try:
        buckets: dict[str, tuple[list[float], list[float]]] = {}
        sums: dict[str, float] = {}
        latency: Any = metrics.request_latency
        requests: Any = metrics.requests
        for labels, child in list(latency._metrics.items()):
            route = labels[0]
            bounds = [float(b) for b in child._upper_bounds]
            counts = [b.get() for b in child._buckets]
            acc = buckets.setdefault(route, (bounds, [0.0] * len(counts)))[1]
            for i, c in enumerate(counts):
                acc[i] += c
            sums[route] = sums.get(route, 0.0) + child._sum.get()
        statuses: dict[str, dict[str, float]] = {}
        for (route, status), child in list(requests._metrics.items()):
            st = statuses.setdefault(route, {})
            st[status] = st.get(status, 0.0) + child._value.get()
        return buckets, sums, statuses
    except AttributeError:
        return None


def _read_collected(metrics: Metrics) -> _Raw:
    """The same through the public ``collect()`` API (cumulative buckets turned back into per-bucket counts)."""
    cumulative: dict[str, dict[float, float]] = {}
    sums: dict[str, float] = {}
    for family in metrics.request_latency.collect():
        for smp in family.samples:
            route = smp.labels.get("route", "")
            if smp.name.endswith("_bucket"):
                b = cumulative.setdefault(route, {})
                le = float(smp.labels["le"])
                b[le] = b.get(le, 0.0) + smp.value
            elif smp.name.endswith("_sum"):
                sums[route] = sums.get(route, 0.0) + smp.value
    buckets: dict[str, tuple[list[float], list[float]]] = {}
    for route, b in cumulative.items():
        bounds = sorted(b)
        cum = [b[x] for x in bounds]
        buckets[route] = (bounds, [c - (cum[i - 1] if i else 0.0) for i, c in enumerate(cum)])
    statuses: dict[str, dict[str, float]] = {}
    for family in metrics.requests.collect():
        for smp in family.samples:
            if smp.name.endswith("_total"):
                st = statuses.setdefault(smp.labels.get("route", ""), {})
                st[smp.labels.get("status", "")] = st.get(smp.labels.get("status", ""), 0.0) + smp.value
    return buckets, sums, statuses
