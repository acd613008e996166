"""Batched request metrics (``server/metrics_batch.py``): the same Prometheus values as direct updates,
exact as soon as no request is in flight, and flushed by a scrape while requests are in flight."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Histogram

from context_store.server.metrics import Metrics
from context_store.server.metrics_batch import BatchedCounter, BatchedHistogram, Batches

BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.1, 1.0)
VALUES = [0.0, 0.0001, 0.0005, 0.0005000001, 0.001, 0.0015, 0.002, 0.005, 0.05, 0.1, 0.99, 1.0, 1.5, 1e9, 0.0003]


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in registry.collect()
        for s in fam.samples
        if not s.name.endswith("_created")
    }


def test_batched_histogram_and_counter_equal_direct_updates() -> None:
    direct, batched = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("lat", "x", ["route"], buckets=BUCKETS, registry=direct).labels("r")
    h2 = Histogram("lat", "x", ["route"], buckets=BUCKETS, registry=batched).labels("r")
    c1 = Counter("req", "x", ["route"], registry=direct).labels("r")
    c2 = Counter("req", "x", ["route"], registry=batched).labels("r")
    batches = Batches()
    bh, bc = BatchedHistogram(h2, batches), BatchedCounter(c2, batches)
    for v in VALUES * 3:
        h1.observe(v)
        c1.inc()
        bh.observe(v)
        bc.inc()
    assert _samples(batched) != _samples(direct)  # nothing reached Prometheus yet
    batches.flush()
    assert _samples(batched) == _samples(direct)
    batches.flush()  # nothing new: unchanged
    bh.observe(0.003)
    h1.observe(0.003)
    batches.flush()
    assert _samples(batched) == _samples(direct)


def test_metrics_exact_when_idle_and_on_scrape_under_load() -> None:
    m = Metrics()
    m.observe_request("/r", "svc", 0.001, 200)  # nothing in flight: flushed at once
    text = m.render("text/plain")[0].decode()
    assert 'cs_http_requests_total{route="/r",status="200"} 1.0' in text
    assert m.requests.labels("/r", "200")._value.get() == 1.0
    m.active = 1  # another request still in flight: tallied, not yet in Prometheus
    m.observe_request("/r", "svc", 0.002, 200)
    m.observe_online("ws", 0.001)
    assert m.requests.labels("/r", "200")._value.get() == 1.0
    text = m.render("text/plain")[0].decode()  # a scrape flushes first
    assert 'cs_http_requests_total{route="/r",status="200"} 2.0' in text
    assert 'cs_online_store_read_duration_seconds_count{workspace="ws"} 1.0' in text
    m.active = 0


def test_concurrent_observations_and_flushes_lose_nothing() -> None:
    registry = CollectorRegistry()
    child = Counter("req", "x", registry=registry)
    batches = Batches()
    c = BatchedCounter(child, batches)
    stop = threading.Event()

    def flusher() -> None:
        while not stop.is_set():
            batches.flush()

    t = threading.Thread(target=flusher)
    t.start()
    for _ in range(50_000):
        c.inc()
    stop.set()
    t.join()
    batches.flush()
    assert child._value.get() == 50_000
