"""Backfill: each offline feature view's history -> its transform -> ``fv__{view}`` in the offline store.

Idempotent: a view's ``[start, end)`` range is replaced, never appended twice. Rows are written
sorted by (join keys, timestamp) so point-in-time joins need no sort. Stream views follow the
cut-over protocol of ``compute.stream.cutover`` (batch owns ``ts < C``, the stream ``ts >= C``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..definitions import FeatureView, FileSource, StreamSource
from ..errors import InvalidInputError
from ..vocab.time import check_us, checked_us, parse_iso
from . import tombstones
from .transform import apply_transform, read_source

if TYPE_CHECKING:
    from ..config import Config
    from ..registry.repo import RepoDefinitions
    from ..stores.offline.base import OfflineStore
    from ..stores.online import OnlineStore

__all__ = ["BackfillReport", "backfill", "to_us", "sort_for_pit", "write_view"]


@dataclass
class BackfillReport:
    rows: dict[str, int] = field(default_factory=dict)  # rows written per view
    events: int = 0  # source rows read (each source once)
    seconds: float = 0.0
    skipped: dict[str, str] = field(default_factory=dict)  # view -> why
    quality: list[Any] = field(default_factory=list)  # QualityRun of each view with expectations

    def wrote(self, view: str, n: int, bar: Any = None) -> None:
        """Record ``n`` rows written for ``view`` (and advance the progress bar, if any)."""
        self.rows[view] = n
        if bar is not None:
            bar.set_postfix_str(f"{view}: {n:,} rows")
            bar.update(1)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        lines = [f"{v}: {n} rows" for v, n in self.rows.items()]
        lines += [f"{v}: skipped ({why})" for v, why in self.skipped.items()]
        lines += [f"{r.view}: quality {'passed' if r.passed else 'FAILED'}" for r in self.quality]
        lines.append(f"{self.events} events in {self.seconds:.2f}s ({self.events_per_s:,.0f} events/s)")
        return "\n".join(lines)


def to_us(value: datetime | str | int | None, field_name: str) -> int | None:
    """A bound as int microseconds (naive datetimes and strings are UTC)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidInputError(f"{field_name} must be a datetime or ISO-8601 string", field=field_name)
    if isinstance(value, int):
        return check_us(value, field_name)
    if isinstance(value, str):
        try:
            value = parse_iso(value)
        except ValueError:
            raise InvalidInputError(
                f"{field_name} {value!r} is not an ISO-8601 date/time such as 2024-01-31 or 2024-01-31T12:00:00Z",
                field=field_name,
            ) from None
    if not isinstance(value, datetime):
        raise InvalidInputError(f"{field_name} must be a datetime or ISO-8601 string", field=field_name)
    return checked_us(value, field_name)


def sort_for_pit(table: pa.Table, keys: list[str], ts: str, stable: bool = True) -> pa.Table:
    """Sort by (join keys, ts) so point-in-time joins need no sort; each entity becomes contiguous.

    ``stable`` keeps the file order of equal (key, ts) rows (batch views: "the last row wins").
    """
    n = table.num_rows
    if n < 2:
        return table
    code = np.zeros(n, dtype=np.int64)
    radix = 1
    encoded: dict[str, tuple[np.ndarray, pa.Array]] = {}
    for k in keys:
        enc = pc.dictionary_encode(table.column(k).combine_chunks())
        c = enc.indices.fill_null(-1).to_numpy().astype(np.int64)
        if enc.indices.null_count == 0:
            encoded[k] = (c, enc.dictionary)
        r = len(enc.dictionary) + 1
        code = code * r + (c + 1)
        radix *= r
    tsv = table.column(ts).cast(pa.int64()).fill_null(0).to_numpy()
    lo, hi = int(tsv.min()), int(tsv.max())
    span = hi - lo + 1
    if radix * span < (1 << 62):
        key = code * span + (tsv - lo)
        if bool(np.all(key[1:] >= key[:-1])):
            return table
        order = np.argsort(key, kind="stable" if stable else "quicksort")
    else:  # huge key space x time range: two-key sort
        order = np.lexsort((tsv, code))
        if bool(np.all(order[1:] > order[:-1])):
            return table
    idx = pa.array(order)
    cols = []
    for name in table.column_names:
        if name in encoded:  # rebuild keys from their small dictionary: cheaper than gathering strings
            c, d = encoded[name]
            cols.append(d.take(pa.array(c[order])))
        else:
            cols.append(table.column(name).take(idx))
    return pa.Table.from_arrays(cols, schema=table.schema)


def _views_to_run(defs: RepoDefinitions, views: Sequence[str] | None, report: BackfillReport) -> list[FeatureView]:
    if views is None:
        selected = list(defs.feature_views.values())
    else:
        if isinstance(views, str):
            views = [views]
        selected = [defs.feature_view(v) for v in views]  # NotFoundError names an unknown view
    out = []
    for v in selected:
        if not v.offline:
            report.skipped[v.name] = "offline=False"
            continue
        out.append(v)
    return out


def backfill(
    defs: RepoDefinitions,
    config: Config,
    offline: OfflineStore,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    views: Sequence[str] | None = None,
    progress: bool = False,
    engine: str = "local",
    ray_address: str | None = None,
    online: Callable[[], OnlineStore] | None = None,
) -> BackfillReport:
    """Compute every (or the named) offline feature view's input rows for ``[start, end)``.

    ``engine="ray"`` reads, transforms and writes the sources' rows as Ray tasks (same definitions,
    same rows; ``compute/ray_backfill.py``), on the cluster at ``ray_address`` (default:
    ``CONTEXT_STORE_RAY_ADDRESS`` / ``ray_address:``, else a local Ray). ``online``: opens the online
    store where a stream view's cut-over is recorded on Redis (``compute.stream.cutover``; default:
    one opened from ``config`` for each record).
    """
    if engine not in ("local", "ray"):
        raise InvalidInputError(f"engine must be 'local' or 'ray', got {engine!r}", field="engine")
    t0 = time.perf_counter()
    start_us, end_us = to_us(start, "start"), to_us(end, "end")
    if start_us is not None and end_us is not None and start_us >= end_us:
        raise InvalidInputError("start must be before end", field="start")
    report = BackfillReport()
    todo = _views_to_run(defs, views, report)
    selected = list(todo)
    if engine == "ray":
        from .ray_backfill import ray_backfill

        # Stream views also read the stream's offline log: they run locally below.
        ray_backfill(
            [v for v in todo if not isinstance(v.source, StreamSource)],
            config,
            offline,
            start_us,
            end_us,
            report,
            progress=progress,
            address=ray_address,
        )
        todo = [v for v in todo if isinstance(v.source, StreamSource)]
    cache: dict[str, pa.Table] = {}  # one read per source, shared by its views
    shared = None  # the online store holding the cut-overs (Redis), opened once a stream view needs it
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="backfill", unit="view")
    try:
        logged: set[str] = set()
        forgotten = tombstones.load(offline)  # entities forgotten: their history is never written again
        for view in todo:
            src = view.source
            key = f"{src.kind}:{src.name}"
            if key not in cache and (isinstance(src, FileSource) or src.batch_source is not None):
                cache[key] = forgotten.filter(read_source(src, config.repo, start_us, end_us), src.timestamp_field)
                report.events += cache[key].num_rows
            if isinstance(src, StreamSource):
                from .backfill_log import write_stream_view

                if shared is None and online is not None and config.is_redis:
                    shared = online()
                n, n_log = write_stream_view(config, offline, view, cache.get(key), start_us, end_us, shared)
                if src.name not in logged:  # each source's log counted once, like its history
                    logged.add(src.name)
                    report.events += n_log
                report.wrote(view.name, n, bar)
                continue
            report.wrote(
                view.name, write_view(config, offline, view, apply_transform(view, cache[key]), start_us, end_us), bar
            )
    finally:
        if bar is not None:
            bar.close()
    from .quality import after_backfill

    report.quality = after_backfill(offline, [v for v in selected if v.name in report.rows], start_us, end_us)
    report.seconds = time.perf_counter() - t0
    return report


def write_view(
    config: Config,
    offline: OfflineStore,
    view: FeatureView,
    rows: pa.Table,
    start_us: int | None,
    end_us: int | None,
    online: OnlineStore | None = None,
) -> int:
    """Replace the view's ``[start, end)`` rows in ``fv__{view}`` with ``rows`` (its transformed input).

    Shared by every engine so they write the same layout; returns the rows written.
    """
    from ..vocab.tables import view_table

    ts = view.timestamp_field
    hi = end_us
    if isinstance(view.source, StreamSource):
        hi = _stream_cutover(config, view, rows, end_us, online)
        if hi is None:
            # no history in range and no end: nothing to replace -- the stream's rows stay;
            # an empty append only creates the table (so the view counts as backfilled)
            offline.append(view_table(view.name), rows)
            return 0
        if end_us is None:
            rows = rows.filter(pc.less(rows.column(ts).cast(pa.int64()), hi))
    rows = tombstones.load(offline).filter(rows, ts)  # every engine's rows (Ray's too)
    rows = sort_for_pit(rows, view.join_keys, ts, stable=not view.is_aggregate)
    offline.overwrite_range(view_table(view.name), rows, ts, start_us, hi)
    return rows.num_rows


def _stream_cutover(
    config: Config, view: FeatureView, rows: pa.Table, end_us: int | None, online: OnlineStore | None
) -> int | None:
    """Record the batch/stream hand-over C before writing (the stream then skips ts < C)."""
    from .stream.cutover import choose_cutover, record_cutover

    ts = rows.column(view.timestamp_field).cast(pa.int64())
    newest = pc.max(ts).as_py() if rows.num_rows else None
    c = choose_cutover(newest, end_us)
    if c is not None:
        record_cutover(config, view.name, c, online=online)
    return c
