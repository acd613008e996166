"""Materialization: offline ``fv__{view}`` rows -> online rows/tiles, in bulk.

The writes are built by ``state.writes.bulk_writes`` (vectorised, chunks of entity hashes: one
Lua call per chunk on Redis, one transaction on SQLite). A watermark per view makes reruns incremental.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ..config import Config
from ..registry.repo import RepoDefinitions
from ..state.codec import LISTPACK_VALUE_MAX
from ..state.columns import ts_to_us
from ..state.tiles import ViewState
from ..state.writes import ROW_CHUNK_KEYS, RowChunk, bulk_row_chunks, bulk_writes
from ..vocab.tables import source_table, view_table
from . import tombstones
from .coverage import has_history, mark_view
from .quality import after_materialize

__all__ = [
    "HIST_MARK",
    "MaterializeReport",
    "ViewReport",
    "history_signature",
    "materialize",
    "materialize_recent",
    "materialize_table",
    "materialized_until",
]

log = logging.getLogger(__name__)


@dataclass
class ViewReport:
    view: str
    rows: int = 0
    entities: int = 0
    fields: int = 0
    seconds: float = 0.0
    mode: str = "full"  # full | incremental | skipped | empty (no history: marked complete)
    watermark_us: int | None = None
    note: str = ""


@dataclass
class MaterializeReport:
    views: list[ViewReport] = field(default_factory=list)
    seconds: float = 0.0
    recent: dict[str, int] = field(default_factory=dict)  # source -> entities whose recent list was filled
    quality: list[Any] = field(default_factory=list)  # QualityRun of each loaded view with expectations

    @property
    def rows(self) -> int:
        return sum(v.rows for v in self.views)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "seconds": round(self.seconds, 3),
            "rows_per_s": round(self.rows_per_s),
            "views": [asdict(v) for v in self.views],
            "quality": [r.to_dict() for r in self.quality],
        }

    def __str__(self) -> str:
        lines = [f"materialized {self.rows} rows in {self.seconds:.2f}s ({self.rows_per_s:,.0f} rows/s)"]
        for v in self.views:
            lines.append(f"  {v.view}: {v.mode}, {v.rows} rows, {v.entities} entities {v.note}".rstrip())
        lines += [f"  {r.view}: quality {'passed' if r.passed else 'FAILED'}" for r in self.quality]
        return "\n".join(lines)


def _wm_key(view: str) -> str:
    return f"wm:{view}"


def materialized_until(online: Any, view: str) -> int | None:
    """The newest event time (µs) ``materialize`` loaded into ``view``'s online state (its watermark)."""
    raw = online.get_meta(_wm_key(view))
    try:
        v = json.loads(raw).get("max_ts") if raw else None
    except (ValueError, AttributeError):
        return None
    return int(v) if isinstance(v, int) else None


_NOT_STREAM: Any = object()


def _stream_cut(config: Config, view: Any, online: Any) -> Any:
    """For a StreamSource view, the identity of its cut-over record (``[C, recorded_at]``, or
    None when never backfilled: the stream owns everything); ``_NOT_STREAM`` otherwise."""
    from ..definitions import StreamSource
    from .stream.cutover import load_cutovers

    if not isinstance(view.source, StreamSource):
        return _NOT_STREAM
    c = load_cutovers(config, online).get(view.name)
    return [c.ts_us, c.recorded_at_us] if c else None


def materialize(
    defs: RepoDefinitions,
    config: Config,
    offline: Any,
    online: Any,
    views: Sequence[str] | None = None,
    progress: bool = False,
    full: bool = False,
    now_us: int | None = None,
) -> MaterializeReport:
    """Load online state of ``views`` (default: every online feature view) from the offline store."""
    from ..errors import NotFoundError

    t0 = time.perf_counter()
    report = MaterializeReport()
    names = list(views) if views else [n for n, v in defs.feature_views.items() if v.online]
    for n in names:
        if n not in defs.feature_views:
            known = ", ".join(sorted(defs.feature_views)) or "none"
            raise NotFoundError(f"unknown feature view {n!r}; known: {known}", field="views")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=0, unit="rows", unit_scale=True, desc="materialize")
    now = now_us if now_us is not None else time.time_ns() // 1000
    for name in names:
        view = defs.feature_views[name]
        state = ViewState(view, defs.input_schemas.get(name, {}))
        table_name = view_table(name)
        vr = ViewReport(name)
        t1 = time.perf_counter()
        if not offline.exists(table_name):
            if has_history(view, config, offline):
                vr.mode, vr.note = "skipped", f"(no offline table {table_name}: run backfill first)"
            else:  # nothing to load: complete as it is (the stream fills it)
                vr.mode, vr.note = "empty", "(no history: nothing to load)"
                mark_view(online, state)
            report.views.append(vr)
            continue
        # Read before any row: a commit after this changes it, so a stored token never covers unread rows.
        token = _change_token(offline, table_name)
        wm_raw = online.get_meta(_wm_key(name))
        wm = json.loads(wm_raw) if wm_raw else None
        cut = _stream_cut(config, view, online)
        if (
            cut is not _NOT_STREAM
            and not full
            and wm
            and wm.get("vid") == state.vid
            and wm.get("cut", _NOT_STREAM) == cut
        ):
            # The stream owns this view's online state since the cut-over (batch history < C is
            # loaded and does not change until the next backfill records a new cut-over): a
            # rewrite from fv__ would drop stream events not yet appended offline.
            vr.mode, vr.watermark_us = "incremental", wm.get("max_ts")
            vr.note = "(stream-owned since the cut-over: nothing to reload)"
            vr.seconds = time.perf_counter() - t1
            mark_view(online, state)
            report.views.append(vr)
            continue
        if cut is not _NOT_STREAM and config.is_redis:
            # First load since a backfill: fv__ must hold what the stream workers applied.
            _wait_offline_log(offline, online, view)
        start: int | None = None
        if (
            not full
            and wm
            and wm.get("vid") == state.vid
            and wm.get("max_ts") is not None
            and not (state.is_aggregate and state.has_lifetime)
        ):
            if state.is_aggregate and state.events_mode:
                start = None  # from the horizon: an events-mode entity is rewritten from all its events
            elif state.is_aggregate:
                # Reload from the start of the top-level block holding the watermark: blocks are
                # recomputed whole, so none is rewritten from a part of its rows.
                span = 4**state.levels
                start = ((wm["max_ts"] // state.g) // span) * span * state.g
            else:
                start = wm["max_ts"]
            vr.mode = "incremental"
        if state.is_aggregate and not state.has_lifetime:
            h_start = state.horizon(now) * state.g  # older tiles are unreachable
            start = h_start if start is None else max(start, h_start)
        if vr.mode == "incremental":
            assert wm is not None  # incremental mode is only chosen with a watermark
            # Nothing newer than the watermark: nothing to reload. The table unchanged since the
            # watermark was written says so without opening it; else a cheap filtered probe.
            unchanged = token is not None and wm.get("ot") == token
            probe_rows = (
                0
                if unchanged
                else offline.read(
                    table_name,
                    columns=[view.timestamp_field],
                    ts_column=view.timestamp_field,
                    start_us=wm["max_ts"] + 1,
                ).num_rows
            )
            if probe_rows == 0:
                if not unchanged and token is not None:  # the next rerun needs no probe
                    online.set_meta(_wm_key(name), json.dumps({**wm, "ot": token}).encode())
                vr.watermark_us = wm["max_ts"]
                vr.seconds = time.perf_counter() - t1
                mark_view(online, state)
                report.views.append(vr)
                continue
        cols = list(
            dict.fromkeys(
                view.join_keys
                + [view.timestamp_field]
                + (state.plan.columns if state.plan else [f.name for f in view.features_in])
            )
        )
        table = offline.read(table_name, columns=cols, ts_column=view.timestamp_field, start_us=start)
        table = tombstones.load(offline).filter(table, view.timestamp_field)  # rows a racing writer left
        if bar is not None:
            bar.total += table.num_rows
            bar.refresh()
        vr.rows = table.num_rows
        if table.num_rows:
            try:
                vr.entities, vr.fields = materialize_table(state, table, online, now, bar)
            finally:  # while Redis still writes the last chunks (it never raises: compute/quality.py)
                run = after_materialize(offline, view, table, now)  # checks and statistics
                if run is not None:
                    report.quality.append(run)
            online.flush()  # the watermark below must only cover written data
            max_ts = int(ts_to_us(table[view.timestamp_field]).max())
            prev = wm.get("max_ts") if wm and wm.get("vid") == state.vid else None
            vr.watermark_us = max(max_ts, prev) if prev is not None else max_ts
        else:
            vr.watermark_us = wm.get("max_ts") if wm else None
        meta: dict[str, Any] = {"vid": state.vid, "max_ts": vr.watermark_us, "at": now}
        if token is not None:
            meta["ot"] = token  # the offline table as it was read up to this watermark
        if cut is not _NOT_STREAM:
            meta["cut"] = cut
        online.set_meta(_wm_key(name), json.dumps(meta).encode())
        mark_view(online, state)  # serving may now answer this view's features (state.markers)
        vr.seconds = time.perf_counter() - t1
        report.views.append(vr)
    if bar is not None:
        bar.close()
    report.recent = materialize_recent(defs, config, online, offline, full=full)
    report.seconds = time.perf_counter() - t0
    return report


def _change_token(offline: Any, table_name: str) -> str | None:
    fn = getattr(offline, "change_token", None)  # optional: a store without it is always probed
    return fn(table_name) if fn is not None else None


def _wait_offline_log(offline: Any, online: Any, view: Any, timeout: float = 5.0) -> bool:
    """Wait (bounded) until the offline log holds every event the stream workers applied to
    ``view`` online (they append it about once a second). Workers append ``fv__`` before
    ``src__``, so ``src__`` reaching the applied offset of each partition is enough."""
    from ..errors import NotFoundError

    table = source_table(view.source.name)
    deadline = time.monotonic() + timeout
    for p in range(int(getattr(view.source, "partitions", 1) or 1)):
        applied = online.applied_offset(view.name, str(p))
        if applied is None:
            continue
        while True:
            try:
                if (
                    offline.exists(table)
                    and offline.read(
                        table, columns=["_offset"], filter=f"_partition = {p} AND _offset >= {int(applied)}"
                    ).num_rows
                ):
                    break
            except (NotFoundError, ValueError, OSError):
                return False  # not a tagged stream log: nothing to wait for
            if time.monotonic() >= deadline:
                log.warning(
                    "materialize %s: offline log of partition %d is behind the stream; "
                    "unflushed stream events may be overwritten",
                    view.name,
                    p,
                )
                return False
            time.sleep(0.05)
    return True


HIST_MARK = "_hist"  # key on recent-list rows filled from batch history: the history's signature


def history_signature(source: Any, repo: Any) -> str | None:
    """A short id of the source's batch history files (paths, mtimes, sizes); None without history."""
    import hashlib
    import os

    from .transform import batch_source_of, source_files

    fs = batch_source_of(source)
    if fs is None:
        return None
    try:
        sig = [(f, os.stat(f).st_mtime_ns, os.stat(f).st_size) for f in source_files(fs, repo)]
    except OSError:
        return None
    return hashlib.sha1(repr(sig).encode()).hexdigest()[:16] if sig else None


def materialize_recent(
    defs: RepoDefinitions, config: Config, online: Any, offline: Any = None, full: bool = False
) -> dict[str, int]:
    """Build the per-entity recent-events lists (``get_user_context`` serves them as they are) of
    each source named by a ContextService's ``recent_events``: the newest ``n`` rows of the batch
    history and of the offline event log (pushed events an empty list lacks, e.g. a new online store).

    Only entities whose list is empty are filled (a list is append-only with a trim, so rows can
    not be merged into one that already holds stream events without breaking its order): a rerun
    appends nothing twice. Filled history rows carry ``HIST_MARK`` = the history's signature, so a
    reader knows whether they still stand for the current history files.

    A rerun with the same history files and an unchanged offline log reads neither (a stamp in the
    online meta); ``full`` always reads them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from ..state.codec import entity_key

    if getattr(online, "append_recent", None) is None or getattr(online, "read_recent", None) is None:
        return {}
    wanted: dict[tuple[str, tuple[str, ...]], tuple[Any, int]] = {}
    for svc in defs.context_services.values():
        if svc.recent_events is None:
            continue
        src, n = svc.recent_events
        k = (src.name, tuple(svc.entity.join_keys))
        wanted[k] = (src, max(int(n), wanted.get(k, (src, 0))[1]))
    out: dict[str, int] = {}
    for (name, keys), (src, n) in wanted.items():
        ts = src.timestamp_field
        cols = [f.name for f in src.schema or ()]
        sig = history_signature(src, config.repo)
        # Taken before the log is read (a later append changes it); None when it cannot be told.
        stamp = _recent_stamp(offline, name, sig, n)
        stamp_key = f"{_RECENT_PREFIX}{name}:{','.join(keys)}"
        if stamp is not None and not full and online.get_meta(stamp_key) == stamp:
            out.setdefault(name, 0)  # filled from these same inputs already: nothing new to fill
            continue
        parts = [t for t in (_recent_history(src, config, sig), _recent_log(src, offline)) if t is not None]
        if n <= 0 or not parts:
            continue
        need = [*keys, ts]
        parts = [t for t in parts if set(need) <= set(t.column_names) and t.num_rows]
        if not parts:
            continue
        keep = cols or [c for c in parts[0].column_names if c != HIST_MARK]
        table = pa.concat_tables(
            [t.select([c for c in keep if c in t.column_names] + [HIST_MARK]) for t in parts],
            promote_options="permissive",
        )
        valid = None
        for col in keys:
            v = pc.is_valid(table[col])
            valid = v if valid is None else pc.and_(valid, v)
        table = table.filter(valid).sort_by([(ts, "ascending")])
        if offline is not None:  # forgotten entities: the history files still hold them
            table = tombstones.load(offline).filter(table, ts)
        ekeys = list(zip(*(table[k].to_pylist() for k in keys)))
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, kv in enumerate(ekeys):
            groups.setdefault(kv, []).append(i)
        filled = 0
        for kv, idx in groups.items():
            key = entity_key(list(keys), list(kv))
            if online.read_recent(name, key, 1):
                continue  # already holds events (stream or an earlier fill): never duplicate
            rows = table.take(idx[-n:]).to_pylist()
            for r in rows:
                if r[HIST_MARK] is None:  # a pushed event: no history signature
                    del r[HIST_MARK]
            online.append_recent(name, key, rows, n)
            filled += 1
        out[name] = out.get(name, 0) + filled
        if stamp is not None:
            online.set_meta(stamp_key, stamp)
    return out


_RECENT_PREFIX = "recent_fill:"  # online meta: the inputs the recent lists of a source were last filled from


def _recent_stamp(offline: Any, source: str, sig: str | None, n: int) -> bytes | None:
    """The inputs of one recent-list fill: history signature, offline log version and list size."""
    from ..vocab.tables import source_table

    if offline is None or getattr(offline, "change_token", None) is None:
        return None  # the log's version cannot be told: always read
    log_token = offline.change_token(source_table(source))
    return json.dumps({"sig": sig, "log": log_token, "n": n}).encode()


def _recent_history(src: Any, config: Config, sig: str | None) -> pa.Table | None:
    """The source's batch history, each row marked with the history's signature; None without one."""
    from ..errors import DefinitionError
    from .transform import read_source

    if sig is None:
        return None
    try:
        hist = read_source(src, config.repo)
    except DefinitionError:
        return None  # history unreadable: get_user_context falls back to its history index
    return hist.append_column(HIST_MARK, pa.array([sig] * hist.num_rows, pa.string()))


def _recent_log(src: Any, offline: Any) -> pa.Table | None:
    """The source's offline event log (pushed events), unmarked; None when there is none."""
    from ..errors import NotFoundError
    from ..vocab.tables import source_table

    name = source_table(src.name)
    if offline is None or not offline.exists(name):
        return None
    try:
        log = offline.read(name)
    except NotFoundError:
        return None
    return log.append_column(HIST_MARK, pa.nulls(log.num_rows, pa.string()))


def _row_fields(chunk: RowChunk) -> int:
    """``chunk.fields()`` without a Python step per row (it cost ~0.35 µs/row of materialize)."""
    k = len(chunk.names)
    if k == 1:
        return len(chunk.values)
    n = np.fromiter(map(len, chunk.values), np.int64, len(chunk.values))
    return int(np.minimum(k, np.maximum(1, -(-n // LISTPACK_VALUE_MAX))).sum())


def materialize_table(state: ViewState, table: pa.Table, online: Any, now_us: int, bar: Any = None) -> tuple[int, int]:
    """Write the online state of ``table`` (rows of one view); returns (entities, fields written).
    Writes may still be in flight on return: call ``online.flush()`` before relying on them."""
    entities = fields = 0
    if not state.is_aggregate and getattr(online, "write_rows", None) is not None:
        for chunk, rows in bulk_row_chunks(state, table, now_us, ROW_CHUNK_KEYS):
            entities += len(chunk.keys)
            fields += _row_fields(chunk)
            online.write_rows(chunk, wait=False)
            if bar is not None and rows:
                bar.update(rows)
        return entities, fields
    for ops, rows in bulk_writes(state, table, now_us):
        entities += len(ops.sets)
        fields += len(ops)
        online.write_ops(ops, wait=False)  # overlap Redis work with building the next chunk
        if bar is not None and rows:
            bar.update(rows)
    return entities, fields
