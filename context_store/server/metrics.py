"""Prometheus metrics, exposed as OpenMetrics at ``/metrics``.

With several worker processes set ``PROMETHEUS_MULTIPROC_DIR`` (``context-store serve`` does) so the
scrape aggregates every worker instead of sampling one.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import exposition as text_exposition
from prometheus_client.openmetrics import exposition as om_exposition

from .metrics_batch import BatchedCounter, BatchedHistogram, Batches

__all__ = ["Metrics", "QualityCollector", "ViewStatusCollector"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _StreamCounters:
    """The stream layer's process-wide counters (``ContextStore.stream_counters``) as Prometheus counters."""

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily

        from ..serving.store import ContextStore

        counters, snap = ContextStore.stream_counters()
        out = []
        for name, doc in counters.items():
            fam = CounterMetricFamily(f"cs_stream_{name}", doc, labels=["source"])
            for source, value in sorted(snap.get(name, {}).items()):
                fam.add_metric([source], value)
            out.append(fam)
        return out


class ViewStatusCollector:
    """Scrape-time gauges from ``ContextStore.view_status()`` of every opened store: per view its
    freshness, expected freshness and SLO breach; per stream partition its lag (entries, seconds)
    and late/rejected counts. Computed from Redis/SQLite at each scrape, so any server process
    (and any number of them) reports the same values (docs/observability.md)."""

    def __init__(self, stores: Callable[[], Iterable[Any]]) -> None:
        self.stores = stores

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        view, part = ["workspace", "view"], ["workspace", "source", "partition"]
        fresh = GaugeMetricFamily(
            "context_store_view_freshness_seconds",
            "Now minus the newest event time applied online (stream) or materialized (batch)",
            labels=view,
        )
        expected = GaugeMetricFamily(
            "context_store_view_expected_freshness_seconds", "The view's expected_freshness (its SLO)", labels=view
        )
        breached = GaugeMetricFamily(
            "context_store_view_freshness_slo_breached",
            "1 when the view is staler than its expected_freshness (or has nothing applied), else 0",
            labels=view,
        )
        lag_n = GaugeMetricFamily(
            "context_store_stream_lag_entries", "Stream entries not yet applied and acknowledged", labels=part
        )
        lag_s = GaugeMetricFamily(
            "context_store_stream_lag_seconds", "Age of the oldest stream entry no worker has read yet", labels=part
        )
        late = CounterMetricFamily(
            "context_store_stream_late_records", "Admitted records older than the watermark", labels=part
        )
        rejected = CounterMetricFamily(
            "context_store_stream_rejected_records", "Records refused as too late or before a cut-over", labels=part
        )
        for store in self.stores():
            ws = store.workspace
            try:
                rows = store.view_status()
            except Exception:  # noqa: BLE001 - a store that cannot answer must not break the scrape
                continue
            seen: set[tuple[str, int]] = set()
            for r in rows:
                if r.freshness_seconds is not None:
                    fresh.add_metric([ws, r.view], r.freshness_seconds)
                if r.expected_freshness_seconds is not None:
                    expected.add_metric([ws, r.view], r.expected_freshness_seconds)
                    breached.add_metric([ws, r.view], 1.0 if r.slo_breached else 0.0)
                for p in r.lag:
                    if (p.source, p.partition) in seen:
                        continue
                    seen.add((p.source, p.partition))
                    labels = [ws, p.source, str(p.partition)]
                    lag_n.add_metric(labels, p.entries)
                    if p.seconds is not None:
                        lag_s.add_metric(labels, p.seconds)
                    late.add_metric(labels, p.late)
                    rejected.add_metric(labels, p.rejected)
        return [fresh, expected, breached, lag_n, lag_s, late, rejected]


class QualityCollector:
    """Data quality of each open workspace (``ContextStore.quality_metrics``: stored runs, re-read only
    when they changed, plus this process's sampled stream checks)."""

    def __init__(self, stores: Callable[[], Iterable[Any]]) -> None:
        self.stores = stores

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        failures = CounterMetricFamily(
            "context_store_quality_failures",
            "Failed data quality checks (a stream failure is one failed sampled batch)",
            labels=["workspace", "view", "expectation"],
        )
        passed = GaugeMetricFamily(
            "context_store_quality_last_run_passed",
            "1 when the view's last quality run of the stage passed",
            labels=["workspace", "view", "stage"],
        )
        for store in self.stores():
            try:
                q = store.quality_metrics()
            except Exception:  # an unreadable offline store must not break the scrape
                continue
            for (view, label), n in sorted(q.failures.items()):
                failures.add_metric([store.workspace, view, label], n)
            for (view, stage), ok in sorted(q.last_passed.items()):
                passed.add_metric([store.workspace, view, stage], 1.0 if ok else 0.0)
        return [failures, passed]


class Metrics:
    """All server metrics in one registry (one per app, so tests can build several apps)."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # In multiprocess mode values live in files; the default registry must be used for writing.
        self.registry: CollectorRegistry | None = None if self.multiprocess else CollectorRegistry()
        kw: dict[str, Any] = {} if self.multiprocess else {"registry": self.registry}
        self.request_latency = Histogram(
            "cs_http_request_duration_seconds",
            "HTTP request latency by route and feature service",
            ["route", "service"],
            buckets=_LATENCY_BUCKETS,
            **kw,
        )
        self.requests = Counter("cs_http_requests", "HTTP requests by route and status", ["route", "status"], **kw)
        self.shed = Counter("cs_http_shed", "Requests refused with 503: the process was at its in-flight limit", **kw)
        self.online_latency = Histogram(
            "cs_online_store_read_duration_seconds",
            "Online feature read latency (store round trip + compute)",
            ["workspace"],
            buckets=_LATENCY_BUCKETS,
            **kw,
        )
        self.ingest_records = Counter(
            "cs_ingest_records", "Records accepted by the ingest API", ["workspace", "source", "dry_run"], **kw
        )
        gauge_kw = dict(kw, multiprocess_mode="mostrecent") if self.multiprocess else kw
        # Served value age, NOT data freshness: the effective time of a sampled response (for aggregates
        # the request time, so ~0 even with every worker stopped). Freshness: context_store_view_freshness_seconds.
        self.freshness = Gauge(
            "cs_feature_freshness_age_seconds",
            "Served value age: now minus the effective time of 1 sampled response in N per view "
            "(not data freshness: see context_store_view_freshness_seconds)",
            ["workspace", "view"],
            **gauge_kw,
        )
        self.stream_lag = Gauge(
            "cs_stream_lag_entries",
            "Stream entries not yet applied by the workers (pending + undelivered)",
            ["workspace", "source"],
            **gauge_kw,
        )
        self.feature_log = Gauge(
            "cs_feature_log_rows",
            "Served vectors of logged feature services: logged, dropped (queue full), failed, queued",
            ["workspace", "state"],
            **gauge_kw,
        )
        self.online_up = Gauge("cs_online_store_up", "1 when the online store answered the last ping", **gauge_kw)
        if self.registry is not None:
            self.registry.register(_StreamCounters())
        self._children: dict[tuple[str, str], BatchedHistogram] = {}
        self._counters: dict[tuple[str, int], BatchedCounter] = {}
        self._online: dict[str, BatchedHistogram] = {}
        self._batches = Batches()
        self.active = 0  # requests in flight in this process (event loop only): flush when it drops to 0
        self._collect_hooks: list[Callable[[Metrics], None]] = []
        self._collectors: list[Any] = []  # read at scrape time; also in multiprocess mode (render)

    def observe_request(self, route: str, service: str, seconds: float, status: int | None = None) -> None:
        """One served request: its latency (per route and service) and its status (per route; None: not
        counted here). Call with ``active`` already decremented: tallies are flushed when nothing is in flight."""
        child = self._children.get((route, service))
        if child is None:
            # Bound label cardinality: unknown service names from bad requests share one label.
            if len(self._children) > 2000:
                service = "_other"
            child = self._children.get((route, service))
            if child is None:
                child = BatchedHistogram(self.request_latency.labels(route, service), self._batches)
                self._children[(route, service)] = child
        child.observe(seconds)
        if status is not None:
            counter = self._counters.get((route, status))
            if counter is None:
                counter = BatchedCounter(self.requests.labels(route, str(status)), self._batches)
                self._counters[(route, status)] = counter
            counter.inc()
        if not self.active:
            self._batches.flush()

    def observe_online(self, workspace: str, seconds: float) -> None:
        """One online feature read (store round trip + compute) of ``workspace``."""
        child = self._online.get(workspace)
        if child is None:
            child = self._online[workspace] = BatchedHistogram(self.online_latency.labels(workspace), self._batches)
        child.observe(seconds)

    def flush(self) -> None:
        """Move the batched request metrics into Prometheus (``metrics_batch.py``)."""
        self._batches.flush()

    async def flush_every(self, seconds: float = 1.0) -> None:
        """Flush until cancelled (the server's lifespan runs it): under constant load nothing is idle."""
        while True:
            await asyncio.sleep(seconds)
            self.flush()

    def observe_freshness(self, workspace: str, metadata: Iterable[Any], now: float | None = None) -> None:
        """Record the age of the newest value per view from a FeatureVector's metadata."""
        now = now or time.time()
        newest: dict[str, float] = {}
        for m in metadata:
            et: datetime | None = m.effective_time
            if et is not None:
                ts = et.timestamp() if et.tzinfo else et.replace(tzinfo=UTC).timestamp()
                if ts > newest.get(m.view, 0.0):
                    newest[m.view] = ts
        for view, ts in newest.items():
            self.freshness.labels(workspace, view).set(max(0.0, now - ts))

    def add_collector(self, collector: Any) -> None:
        """A custom collector (``collect()`` yields metric families) of this app's metrics."""
        self._collectors.append(collector)
        if self.registry is not None:
            self.registry.register(collector)

    def on_collect(self, hook: Callable[[Metrics], None]) -> None:
        """Run ``hook(metrics)`` before every scrape (e.g. to read stream lag)."""
        self._collect_hooks.append(hook)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        self.flush()
        for hook in self._collect_hooks:
            try:
                hook(self)
            except Exception:  # a failing probe must not break the scrape
                pass
        registry: Any = self.registry
        if registry is None:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # unannotated upstream
            for c in self._collectors:
                registry.register(c)
        # OpenMetrics unless the scraper asks for the classic text format only.
        if accept and "text/plain" in accept and "openmetrics" not in accept:
            return text_exposition.generate_latest(registry), text_exposition.CONTENT_TYPE_LATEST
        body = om_exposition.generate_latest(registry)  # type: ignore[no-untyped-call]  # unannotated upstream
        return body, om_exposition.CONTENT_TYPE_LATEST
