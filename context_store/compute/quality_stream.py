"""Sampled data quality checks on the stream path: cheap enough to leave on.

A view's expectations run on the transformed rows of one micro-batch in ``every`` (default 20,
``CONTEXT_STORE_QUALITY_SAMPLE_EVERY``; the first batch of each view is always checked). An
unsampled batch costs one dict lookup and an integer increment. Failed sampled batches are counted
in-process (the ``context_store_quality_failures_total`` metric reads them) and, at most once per
``CONTEXT_STORE_QUALITY_FLUSH_S`` seconds (default 60), summed into one ``stream`` run per view and
appended to ``sys__quality`` on a background thread: the applying thread never writes it.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from .quality import CheckResult, QualityRun, check, new_run_id, record_run, safely

if TYPE_CHECKING:
    from ..definitions import FeatureView
    from ..stores.offline.base import OfflineStore

__all__ = ["StreamQuality", "stream_quality", "pending_failures"]


def _env_int(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


@dataclass
class _Pending:
    """Sampled results of one view since the last flush."""

    batches: int = 0
    rows: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # expectation label -> failed sampled batches
    last: dict[str, CheckResult] = field(default_factory=dict)  # label -> latest result (failed ones win)


class StreamQuality:
    """The sampler of one workspace's stream path in this process (``stream_quality``)."""

    def __init__(self, workspace: str, offline: OfflineStore, every: int | None = None, flush_s: float | None = None):
        self.workspace = workspace
        self.offline = offline
        self.every = every or _env_int("CONTEXT_STORE_QUALITY_SAMPLE_EVERY", 20)
        self.flush_s = flush_s if flush_s is not None else float(_env_int("CONTEXT_STORE_QUALITY_FLUSH_S", 60))
        self._seen: dict[str, int] = {}
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._flushing: threading.Thread | None = None

    def observe(self, view: FeatureView, rows: pa.Table) -> None:
        """Called with each batch's transformed rows of ``view``; checks one batch in ``every``."""
        if not view.expectations:
            return
        n = self._seen.get(view.name, 0)
        self._seen[view.name] = n + 1
        if n % self.every:
            return
        results = check(view.expectations, rows, view.join_keys, view.timestamp_field)
        with self._lock:
            p = self._pending.setdefault(view.name, _Pending())
            p.batches += 1
            p.rows += rows.num_rows
            for r in results:
                label = r.expectation.label
                if not r.passed:
                    p.failed[label] = p.failed.get(label, 0) + 1
                if not r.passed or label not in p.last or p.last[label].passed:
                    p.last[label] = r
        if time.monotonic() - self._last_flush >= self.flush_s:
            self.flush(background=True)

    def unflushed_failures(self) -> dict[tuple[str, str], int]:
        """(view, expectation label) -> failed sampled batches not yet in ``sys__quality``."""
        with self._lock:
            return {(v, lb): n for v, p in self._pending.items() for lb, n in p.failed.items()}

    def flush(self, background: bool = False) -> list[QualityRun]:
        """Sum the pending samples into one ``stream`` run per view and append them."""
        with self._lock:
            if self._flushing is not None and self._flushing.is_alive():
                return []
            pending, self._pending = self._pending, {}
            self._last_flush = time.monotonic()
        now = time.time_ns() // 1000
        runs = []
        for view, p in pending.items():
            results = []
            for label, last in p.last.items():
                failed = p.failed.get(label, 0)
                observed: dict[str, Any] = {
                    "sampled_batches": p.batches,
                    "sampled_rows": p.rows,
                    "failed_batches": failed,
                }
                observed["last"] = last.observed
                results.append(CheckResult(last.expectation, failed == 0, observed, p.rows, failed))
            runs.append(QualityRun(new_run_id(), view, "stream", now, results))

        def write() -> None:
            for run in runs:
                safely("recording a stream run", record_run, self.offline, run)

        if background and runs:
            t = threading.Thread(target=write, name="cs-quality-flush", daemon=True)
            self._flushing = t
            t.start()
        else:
            write()
        return runs


_SAMPLERS: dict[tuple[str, str], StreamQuality] = {}
_SAMPLERS_LOCK = threading.Lock()


def stream_quality(config: Any, offline: OfflineStore) -> StreamQuality:
    """This process's sampler of ``config``'s workspace (shared by its pushers and workers)."""
    key = (str(config.workspace_dir), config.workspace)
    with _SAMPLERS_LOCK:
        s = _SAMPLERS.get(key)
        if s is None or s.offline is not offline:
            old = s
            s = _SAMPLERS[key] = StreamQuality(config.workspace, offline)
            if old is not None:  # a reopened store: carry the unflushed samples over
                s._pending = old._pending
        return s


def pending_failures(config: Any) -> dict[tuple[str, str], int]:
    """The unflushed failed sampled batches of ``config``'s workspace in this process."""
    s = _SAMPLERS.get((str(config.workspace_dir), config.workspace))
    return s.unflushed_failures() if s is not None else {}
