"""Backfill on Ray, scaled out: work split by file and by row groups (pruned by time), output written
by the tasks as Lance fragments, one commit per view at the driver.

Two stages, no rows through the driver:

1. **read** -- one task per work unit (a file, or a run of a parquet file's row groups: one big file
   becomes many tasks; row groups whose timestamp statistics fall outside ``[start, end)`` are never
   read). It runs ``prepare_rows`` + the views' transforms and splits each view's rows by a hash of
   the join keys into P partitions (kept in Ray's object store).
2. **write** -- one task per (view, partition): its units' rows in unit order (file order, then row
   order: the local engine's read order, so "the last row wins" still holds for equal (key, ts)),
   tombstones dropped, sorted by (join keys, ts) and written as data files of ``fv__{view}``.

The driver then commits each view's fragments once (``commit_fragments``: the same ``[start, end)``
replace as ``batch.write_view``). Every entity lands in one partition, so the table keeps the local
engine's property that each entity's events are contiguous and time-sorted (readers take the fast
path); only the order *between* entities differs. Transforms are row-wise (SPEC): a row's output
depends on that row only, so a unit needs no events before its slice -- windows are computed at
read time (training data, materialize) over the whole written log.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa

from ..definitions import FeatureView, FileSource, StreamSource
from ..errors import ContextStoreError, InvalidInputError
from ..stores.offline.base import FragmentSink
from ..vocab.tables import view_table
from .transform import apply_transform, batch_source_of, duckdb_connect, prepare_rows, read_source, source_files

if TYPE_CHECKING:
    from ..config import Config
    from ..stores.offline.base import OfflineStore
    from ..stores.offline.fragments import FragmentTarget
    from .batch import BackfillReport
    from .tombstones import Tombstones

__all__ = ["RAY_ADDRESS_ENV", "WorkUnit", "plan_units", "ray_backfill"]

RAY_ADDRESS_ENV = "CONTEXT_STORE_RAY_ADDRESS"
_INSTALL_HINT = "the ray engine needs Ray: pip install 'context-store[ray]'"
# A unit is at least this many rows (a task's overhead is ~10 ms) ...
MIN_UNIT_ROWS = 200_000
# ... and otherwise a source is cut into about this many units per cluster CPU (load balance).
UNITS_PER_CPU = 4
PARTITIONS_PER_CPU = 2  # write tasks per view and CPU


class WorkUnit(NamedTuple):
    path: str
    row_groups: tuple[int, ...] | None  # None: the whole file (CSV, or a parquet file read at once)
    rows: int  # from the parquet metadata (0: unknown)


class UnitResult(NamedTuple):
    """A read task's small first result (its partitions follow as separate objects)."""

    events: int  # source rows in range (tombstoned ones dropped), as the local engine counts them
    schemas: list[pa.Schema]  # each view's rows' schema


class Written(NamedTuple):
    """A write task's result: its fragments (JSON metadata) and the time range of its rows."""

    fragments: list[str]
    rows: int
    ts_min: int | None
    ts_max: int | None


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InvalidInputError(_INSTALL_HINT, field="engine") from None
    return ray


def _one_file(source: FileSource | StreamSource, path: str) -> FileSource | StreamSource:
    """A copy of ``source`` whose (batch) files are just ``path`` (schema and casts unchanged)."""
    fs = copy.copy(batch_source_of(source))
    assert fs is not None
    fs.path = path  # absolute, so the repo root no longer matters
    if isinstance(source, StreamSource):
        out = copy.copy(source)
        out.batch_source = fs
        return out
    return fs


# -- planning (driver) ----------------------------------------------------------------------
def _row_group_us(stats: Any, arrow_type: pa.DataType) -> tuple[int, int] | None:
    """(min, max) µs of a timestamp column's row-group statistics; None when they cannot prune."""
    if stats is None or not stats.has_min_max or not pa.types.is_timestamp(arrow_type):
        return None
    try:
        lo = pa.scalar(stats.min, arrow_type).cast(pa.int64()).as_py()
        hi = pa.scalar(stats.max, arrow_type).cast(pa.int64()).as_py()
    except (pa.ArrowInvalid, TypeError, ValueError):
        return None
    per_us = {"s": 1e-6, "ms": 1e-3, "us": 1.0, "ns": 1e3}[arrow_type.unit]
    # floor to µs as normalize_timestamp truncates (naive and zoned times both count as UTC instants)
    return math.floor(lo / per_us), math.floor(hi / per_us)


def plan_units(fs: FileSource, files: list[str], start_us: int | None, end_us: int | None, cpus: int) -> list[WorkUnit]:
    """Cut a source's files into work units: runs of consecutive row groups of about
    ``max(MIN_UNIT_ROWS, total / (cpus * UNITS_PER_CPU))`` rows, skipping row groups entirely
    outside ``[start, end)`` (time-ordered files then read only the asked range)."""
    if fs.file_format != "parquet":
        return [WorkUnit(f, None, 0) for f in files]
    import pyarrow.parquet as pq

    kept: list[tuple[str, list[tuple[int, int]]]] = []  # file -> [(row group, rows)]
    for f in files:
        md = pq.read_metadata(f)
        arrow = md.schema.to_arrow_schema()
        ts_type = arrow.field(fs.timestamp_field).type if fs.timestamp_field in arrow.names else None
        groups = []
        for r in range(md.num_row_groups):
            rg = md.row_group(r)
            span = None
            if ts_type is not None:
                col = next(
                    (rg.column(j) for j in range(rg.num_columns) if rg.column(j).path_in_schema == fs.timestamp_field),
                    None,
                )
                span = _row_group_us(col.statistics if col is not None else None, ts_type)
            if span is not None and (
                (start_us is not None and span[1] < start_us) or (end_us is not None and span[0] >= end_us)
            ):
                continue
            groups.append((r, rg.num_rows))
        kept.append((f, groups))
    total = sum(n for _, gs in kept for _, n in gs)
    target = max(MIN_UNIT_ROWS, math.ceil(total / max(1, cpus * UNITS_PER_CPU)))
    units: list[WorkUnit] = []
    for f, groups in kept:
        run: list[int] = []
        rows = 0
        for r, n in groups:
            run.append(r)
            rows += n
            if rows >= target:
                units.append(WorkUnit(f, tuple(run), rows))
                run, rows = [], 0
        if run:
            units.append(WorkUnit(f, tuple(run), rows))
    if not units:  # everything pruned: one empty read still gives each view its schema
        units.append(WorkUnit(files[0], (), 0))
    return units


# -- tasks (Ray workers) ----------------------------------------------------------------------
def _partition(table: pa.Table, keys: list[str], parts: int) -> list[pa.Table]:
    """``table`` split by a hash of the join keys (same entity -> same part, in every task);
    rows keep their order inside a part."""
    if parts == 1 or table.num_rows == 0:
        return [table] + [table.slice(0, 0)] * (parts - 1)
    con = duckdb_connect()
    con.register("_keys", table.select(keys))
    try:
        # DuckDB's hash is deterministic across processes; integers hash as BIGINT and everything
        # else as text, so a key typed int32 in one file and int64 in another still agrees
        cols = ", ".join(
            f'CAST("{k}" AS {"BIGINT" if pa.types.is_integer(table.schema.field(k).type) else "VARCHAR"})' for k in keys
        )
        p = con.sql(f"SELECT (hash({cols}) % {parts})::BIGINT FROM _keys").to_arrow_table().column(0).to_numpy()
    finally:
        con.unregister("_keys")
    order = np.argsort(p, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(p, minlength=parts))]
    ordered = table.take(pa.array(order))
    return [ordered.slice(int(bounds[i]), int(bounds[i + 1] - bounds[i])) for i in range(parts)]


def _read_unit(
    source: FileSource | StreamSource,
    views: list[FeatureView],
    unit: WorkUnit,
    start_us: int | None,
    end_us: int | None,
    parts: int,
    forgotten: Tombstones,
) -> list[Any]:
    """Stage 1: one unit's rows -> each view's transform -> P partitions: ``[UnitResult, *tables]``
    (view-major: view ``i``'s part ``p`` is at ``1 + i * P + p``)."""
    src = _one_file(source, unit.path)
    if unit.row_groups is None:
        table = read_source(src, Path("/"), start_us, end_us)
    else:
        import pyarrow.parquet as pq

        table = prepare_rows(src, pq.ParquetFile(unit.path).read_row_groups(list(unit.row_groups)), start_us, end_us)
    fs = batch_source_of(src)
    assert fs is not None
    table = forgotten.filter(table, fs.timestamp_field)
    outs = [apply_transform(v, table) for v in views]
    tables: list[pa.Table] = []
    for view, out in zip(views, outs):
        tables += _partition(out, view.join_keys, parts)
    return [UnitResult(table.num_rows, [o.schema for o in outs]), *tables]


def _write_part(
    target: FragmentTarget, keys: list[str], ts: str, stable: bool, forgotten: Tombstones, *parts: pa.Table
) -> Written:
    """Stage 2: one partition of a view, its units' rows in unit order -> sorted -> data files."""
    from ..stores.offline.fragments import write_fragments
    from ..stores.offline.lance import conform
    from .batch import sort_for_pit

    tables = [conform(target.schema, p, target.table_name) for p in parts if p.num_rows]
    rows = forgotten.filter(pa.concat_tables(tables), ts) if tables else target.schema.empty_table()
    if rows.num_rows == 0:
        return Written([], 0, None, None)
    rows = sort_for_pit(rows, keys, ts, stable=stable)
    tsi = rows.column(ts).cast(pa.int64())
    import pyarrow.compute as pc

    mm = pc.min_max(tsi)
    return Written(write_fragments(target, rows), rows.num_rows, mm["min"].as_py(), mm["max"].as_py())


# -- driver -----------------------------------------------------------------------------------
def _connect(ray: Any, config: Config, address: str | None) -> bool:
    """Join the given/configured cluster, or start a small local one; True when we started it."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get(RAY_ADDRESS_ENV) or config.extra.get("ray_address")
    with warnings.catch_warnings():
        # Ray starts its processes with fork+exec (preexec_fn), which fires lance's/lancedb's at-fork
        # warnings; nothing of their state survives the exec, so the warnings do not apply
        warnings.filterwarnings("ignore", message="lance is not fork-safe")
        warnings.filterwarnings("ignore", message="lancedb fork support is experimental")
        if address:
            ray.init(address=str(address), log_to_driver=False)
        else:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    return True


def _get(ray: Any, refs: Any) -> Any:
    """``ray.get`` that re-raises a task's own error (a bad definition, a column mismatch) as is."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, ContextStoreError):
            raise cause from None
        raise


def _unify(schemas: list[pa.Schema], view: FeatureView) -> pa.Schema:
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        view.fail(f"the rows after the transform have different columns in different files: {e}")
        raise AssertionError from None  # unreachable: fail raises


def ray_backfill(
    todo: list[FeatureView],
    config: Config,
    offline: OfflineStore,
    start_us: int | None,
    end_us: int | None,
    report: BackfillReport,
    progress: bool = False,
    address: str | None = None,
) -> None:
    """Backfill the (already selected) views on Ray; fills ``report.rows`` / ``report.events``."""
    from . import tombstones

    ray = _import_ray()
    if not todo:
        return
    if not isinstance(offline, FragmentSink):
        raise InvalidInputError("the ray engine needs an offline store that takes fragments (Lance)", field="engine")
    # group views by source: each file is read once for all the views that share it
    groups: dict[str, tuple[FileSource | StreamSource, list[FeatureView]]] = {}
    for view in todo:
        src = view.source
        groups.setdefault(f"{src.kind}:{src.name}", (src, []))[1].append(view)
    # resolve files on the driver: a missing file is a DefinitionError before any cluster work
    files = {key: source_files(batch_source_of(src), config.repo) for key, (src, _) in groups.items()}  # type: ignore[arg-type]
    forgotten = tombstones.load(offline)
    whole = start_us is None and end_us is None
    started = _connect(ray, config, address)
    bar: Any = None
    reads: dict[str, list[list[Any]]] = {}
    writes: dict[str, tuple[FragmentTarget, list[Any]]] = {}
    try:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        parts = cpus * PARTITIONS_PER_CPU
        read = ray.remote(_read_unit)
        write = ray.remote(_write_part)
        tombs = ray.put(forgotten)  # shipped once, not pickled into every task
        for key, (src, views) in groups.items():
            fs = batch_source_of(src)
            assert fs is not None
            units = plan_units(fs, files[key], start_us, end_us, cpus)
            n_out = 1 + len(views) * parts
            reads[key] = [
                read.options(num_returns=n_out).remote(src, views, u, start_us, end_us, parts, tombs) for u in units
            ]
        # stage 2 for every view before waiting on any: the cluster never idles between views
        for key, (_, views) in groups.items():
            metas: list[UnitResult] = _get(ray, [refs[0] for refs in reads[key]])
            report.events += sum(m.events for m in metas)
            for i, view in enumerate(views):
                schema = _unify([m.schemas[i] for m in metas], view)
                target = offline.fragment_target(view_table(view.name), schema, whole_table=whole)
                stable = not view.is_aggregate
                writes[view.name] = (
                    target,
                    [
                        write.remote(
                            target,
                            view.join_keys,
                            view.timestamp_field,
                            stable,
                            tombs,
                            *[refs[1 + i * parts + p] for refs in reads[key]],
                        )
                        for p in range(parts)
                    ],
                )
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc="backfill (ray)", unit="view")
        for view in todo:  # the local engine's order, so reports match
            target, refs = writes[view.name]
            done: list[Written] = _get(ray, refs)
            lo = min((w.ts_min for w in done if w.ts_min is not None), default=None)
            hi = max((w.ts_max for w in done if w.ts_max is not None), default=None)
            if (start_us is not None and lo is not None and lo < start_us) or (
                end_us is not None and hi is not None and hi >= end_us
            ):
                raise InvalidInputError(
                    f"rows outside [{start_us}, {end_us}) given to overwrite_range", field=view.timestamp_field
                )
            fragments = [f for w in done for f in w.fragments]
            offline.commit_fragments(target, fragments, view.timestamp_field, start_us, end_us)
            report.wrote(view.name, sum(w.rows for w in done), bar)
    except BaseException:
        # a failed view (or ^C) stops the rest: on a shared cluster they would run on, writing files for nothing
        for ref in [r[0] for rs in reads.values() for r in rs] + [r for _, rs in writes.values() for r in rs]:
            try:
                ray.cancel(ref)
            except Exception:  # noqa: BLE001 - best effort: finished or already gone
                pass
        raise
    finally:
        if bar is not None:
            bar.close()
        if started:
            ray.shutdown()
