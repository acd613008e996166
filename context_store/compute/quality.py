"""Data quality on Arrow tables: expectation checks, per-feature distribution statistics, run records.

Every check is vectorized (``pyarrow.compute``, an Arrow group-by for ``unique``): no Python loop
over rows. Runs are appended to the offline table ``sys__quality`` (one row per expectation
result) and statistics to ``sys__feature_stats`` (one row per feature and run); the sampled stream
checks live in ``quality_stream.py``. See docs/data-quality.md.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..definitions.expectations import Expectation
from ..vocab.tables import FEATURE_STATS_TABLE, QUALITY_TABLE
from ..vocab.time import format_iso_z, us_to_datetime

if TYPE_CHECKING:
    from ..definitions import FeatureView
    from ..stores.offline.base import OfflineStore

__all__ = [
    "QUALITY_SCHEMA",
    "STATS_SCHEMA",
    "CheckResult",
    "FeatureStats",
    "QualityRun",
    "check",
    "check_view",
    "feature_stats",
    "new_run_id",
    "record_run",
    "record_stats",
    "runs_from_table",
    "stats_columns",
    "view_columns",
]

log = logging.getLogger("context_store.quality")

KLL_K = 200  # sketch accuracy ~1.3% rank error; a serialized sketch is a few KB
TOP_K = 20  # most frequent values kept for a string feature
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)

QUALITY_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("view", pa.string()),
        ("stage", pa.string()),  # backfill | materialize | stream
        ("at", pa.timestamp("us", tz="UTC")),
        ("run_passed", pa.bool_()),
        ("expectation", pa.string()),  # kind: not_null | range | allowed | unique
        ("label", pa.string()),  # kind(feature): the metrics label
        ("feature", pa.string()),
        ("passed", pa.bool_()),
        ("failures", pa.int64()),  # failed checks this result stands for (stream: failed sampled batches)
        ("rows", pa.int64()),
        ("observed", pa.string()),  # JSON
    ]
)

STATS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("view", pa.string()),
        ("feature", pa.string()),
        ("at", pa.timestamp("us", tz="UTC")),
        ("dtype", pa.string()),
        ("count", pa.int64()),
        ("nulls", pa.int64()),
        ("min", pa.float64()),
        ("max", pa.float64()),
        ("mean", pa.float64()),
        ("std", pa.float64()),
        ("quantiles", pa.string()),  # JSON {"0.5": v, ...}
        ("kll", pa.binary()),  # serialized KLL doubles sketch (numbers): served-side bins for drift
        ("top", pa.string()),  # JSON [[value, count], ...] (strings, bools)
    ]
)


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class CheckResult:
    expectation: Expectation
    passed: bool
    observed: dict[str, Any]
    rows: int
    failures: int = 0  # 1 for a failed check; the stream sums its failed sampled batches

    def to_dict(self) -> dict[str, Any]:
        return {
            "expectation": self.expectation.kind,
            "feature": self.expectation.feature,
            "passed": self.passed,
            "observed": self.observed,
        }


@dataclass
class QualityRun:
    """One stage's checks of one view: the ``GET /v1/status/quality`` run shape."""

    run_id: str
    view: str
    stage: str
    at_us: int
    results: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "view": self.view,
            "stage": self.stage,
            "at": format_iso_z(us_to_datetime(self.at_us)),
            "passed": self.passed,
            "results": [r.to_dict() for r in self.results],
        }


# -- checks ------------------------------------------------------------------------------------


def _missing(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Null, or NaN for floats: both are a missing value to a model."""
    if pa.types.is_floating(col.type):
        return pc.is_null(col, nan_is_null=True)
    return pc.is_null(col)


def _count(mask: Any) -> int:
    return int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)


def _ratio(good: int, n: int) -> float:
    return 1.0 if n == 0 else good / n


def _scalar(v: Any) -> Any:
    """An observed value as JSON (timestamps as ISO text, NaN as None)."""
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return v


def _not_null(e: Expectation, col: pa.ChunkedArray, n: int) -> tuple[bool, dict[str, Any]]:
    nulls = _count(_missing(col))
    r = _ratio(n - nulls, n)
    return r >= e.ratio, {"ratio": round(r, 6), "nulls": nulls, "rows": n}


def _range(e: Expectation, col: pa.ChunkedArray, n: int) -> tuple[bool, dict[str, Any]]:
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        return False, {"error": f"column is {col.type}, range needs a number", "rows": n}
    vals = col.filter(pc.invert(_missing(col)))
    valid = len(vals)
    below = _count(pc.less(vals, e.min)) if e.min is not None else 0
    above = _count(pc.greater(vals, e.max)) if e.max is not None else 0
    r = _ratio(valid - below - above, valid)
    mm = pc.min_max(vals)
    obs = {"ratio": round(r, 6), "below": below, "above": above, "rows": valid}
    obs.update(min=_scalar(mm["min"].as_py()), max=_scalar(mm["max"].as_py()))
    return r >= e.ratio, obs


def _allowed(e: Expectation, col: pa.ChunkedArray, n: int) -> tuple[bool, dict[str, Any]]:
    vals = col.filter(pc.is_valid(col))
    valid = len(vals)
    try:
        value_set = pa.array(list(e.values), type=col.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return False, {"error": f"column is {col.type}, not the type of the allowed values", "rows": n}
    bad = vals.filter(pc.invert(pc.is_in(vals, value_set=value_set)))
    r = _ratio(valid - len(bad), valid)
    obs: dict[str, Any] = {"ratio": round(r, 6), "not_allowed": len(bad), "rows": valid}
    if len(bad):
        vc = pc.value_counts(bad)
        idx = pc.array_sort_indices(vc.field("counts"), order="descending")[:5]
        obs["examples"] = [_scalar(v) for v in vc.field("values").take(idx).to_pylist()]
    return r >= e.ratio, obs


def _unique(e: Expectation, table: pa.Table, keys: list[str], n: int) -> tuple[bool, dict[str, Any]]:
    valid = pc.is_valid(table.column(keys[0]))
    for k in keys[1:]:
        valid = pc.and_(valid, pc.is_valid(table.column(k)))
    sub = table.select(keys).filter(valid)
    groups = sub.group_by(keys).aggregate([([], "count_all")])
    dupes = sub.num_rows - groups.num_rows
    obs: dict[str, Any] = {"duplicates": dupes, "rows": sub.num_rows}
    if len(keys) > 1:
        obs["per"] = keys[1:]
    if dupes:
        first = groups.filter(pc.greater(groups.column("count_all"), 1)).slice(0, 1).to_pylist()[0]
        obs["example"] = _scalar(first[keys[0]])
    return dupes == 0, obs


def check(
    expectations: Sequence[Expectation], table: pa.Table, join_keys: Sequence[str] = (), ts_column: str | None = None
) -> list[CheckResult]:
    """Each expectation on ``table``. A missing column fails its expectation (it says so)."""
    out = []
    n = table.num_rows
    for e in expectations:
        if e.feature not in table.column_names:
            out.append(CheckResult(e, False, {"error": f"no column {e.feature!r}", "rows": n}, n, 1))
            continue
        col = table.column(e.feature)
        if e.kind == "not_null":
            ok, obs = _not_null(e, col, n)
        elif e.kind == "range":
            ok, obs = _range(e, col, n)
        elif e.kind == "allowed":
            ok, obs = _allowed(e, col, n)
        else:
            keys = [e.feature]
            if e.feature in join_keys:  # an entity repeats over time: unique per (join keys, event time)
                keys = list(dict.fromkeys([e.feature, *join_keys, *([ts_column] if ts_column else [])]))
                keys = [k for k in keys if k in table.column_names]
            ok, obs = _unique(e, table, keys, n)
        out.append(CheckResult(e, ok, obs, n, 0 if ok else 1))
    return out


def view_columns(view: FeatureView) -> list[str]:
    """Columns of ``fv__{view}`` the view's expectations read (with join keys and time for ``unique``)."""
    cols = [e.feature for e in view.expectations]
    if any(e.kind == "unique" for e in view.expectations):
        cols += [*view.join_keys, view.timestamp_field]
    return list(dict.fromkeys(cols))


def check_view(view: FeatureView, table: pa.Table, stage: str, at_us: int | None = None) -> QualityRun | None:
    """The view's expectations on ``table`` as a run (None: the view has none)."""
    if not view.expectations:
        return None
    at = at_us if at_us is not None else time.time_ns() // 1000
    results = check(view.expectations, table, view.join_keys, view.timestamp_field)
    return QualityRun(new_run_id(), view.name, stage, at, results)


# -- statistics --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureStats:
    feature: str
    dtype: str
    count: int
    nulls: int
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    quantiles: dict[str, float] = field(default_factory=dict)
    kll: bytes | None = None
    top: list[tuple[Any, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "dtype": self.dtype,
            "count": self.count,
            "nulls": self.nulls,
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "std": self.std,
            "quantiles": self.quantiles,
            "top": [list(t) for t in self.top],
        }


def stats_columns(view: FeatureView, available: Sequence[str]) -> list[str]:
    """The columns statistics are kept for: a row view's features, an aggregate view's input columns."""
    cols = [a.column for a in view.aggregations] if view.is_aggregate else view.feature_names
    return [c for c in dict.fromkeys(cols) if c in available]


def _f(v: Any) -> float | None:
    return None if v is None or not np.isfinite(float(v)) else float(v)


def feature_stats(table: pa.Table, columns: Sequence[str]) -> list[FeatureStats]:
    """Count, nulls, min/max/mean/std, quantiles and a KLL sketch for numbers; top-k for strings and bools."""
    from datasketches import kll_doubles_sketch

    out = []
    for name in columns:
        col = table.column(name)
        t = col.type
        n = len(col)
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
            miss = _missing(col)
            vals = col.filter(pc.invert(miss)).cast(pa.float64())
            sk = kll_doubles_sketch(KLL_K)
            arr = vals.to_numpy() if len(vals) else np.zeros(0)
            if len(arr):
                sk.update(np.array(arr, dtype=np.float64))  # a writable copy: the binding refuses read-only views
            qs = dict(zip((f"{q:g}" for q in QUANTILES), sk.get_quantiles(list(QUANTILES)))) if len(arr) else {}
            mm = pc.min_max(vals)
            out.append(
                FeatureStats(
                    name,
                    str(t),
                    n,
                    _count(miss),
                    _f(mm["min"].as_py()),
                    _f(mm["max"].as_py()),
                    _f(pc.mean(vals).as_py()),
                    _f(pc.stddev(vals, ddof=0).as_py()),
                    {k: float(v) for k, v in qs.items()},
                    sk.serialize() if len(arr) else None,
                )
            )
        elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_boolean(t):
            vc = pc.value_counts(col.filter(pc.is_valid(col)))
            counts = vc.field("counts")
            idx = pc.array_sort_indices(counts, order="descending")[:TOP_K]
            top = list(zip(vc.field("values").take(idx).to_pylist(), counts.take(idx).to_pylist()))
            out.append(FeatureStats(name, str(t), n, col.null_count, top=top))
        else:  # lists, embeddings, timestamps: counts only
            out.append(FeatureStats(name, str(t), n, col.null_count))
    return out


# -- records -----------------------------------------------------------------------------------


def record_run(offline: OfflineStore, run: QualityRun) -> None:
    """Append one run to ``sys__quality`` (one row per result)."""
    rs = run.results
    data = pa.table(
        {
            "run_id": [run.run_id] * len(rs),
            "view": [run.view] * len(rs),
            "stage": [run.stage] * len(rs),
            "at": pa.array([run.at_us] * len(rs), pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "run_passed": [run.passed] * len(rs),
            "expectation": [r.expectation.kind for r in rs],
            "label": [r.expectation.label for r in rs],
            "feature": [r.expectation.feature for r in rs],
            "passed": [r.passed for r in rs],
            "failures": pa.array([r.failures for r in rs], pa.int64()),
            "rows": pa.array([r.rows for r in rs], pa.int64()),
            "observed": [json.dumps(r.observed, default=str) for r in rs],
        },
        schema=QUALITY_SCHEMA,
    )
    if data.num_rows:
        offline.append(QUALITY_TABLE, data)


def record_stats(offline: OfflineStore, run_id: str, view: str, at_us: int, stats: Sequence[FeatureStats]) -> None:
    """Append one materialization's statistics to ``sys__feature_stats``."""
    if not stats:
        return
    data = pa.table(
        {
            "run_id": [run_id] * len(stats),
            "view": [view] * len(stats),
            "feature": [s.feature for s in stats],
            "at": pa.array([at_us] * len(stats), pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "dtype": [s.dtype for s in stats],
            "count": pa.array([s.count for s in stats], pa.int64()),
            "nulls": pa.array([s.nulls for s in stats], pa.int64()),
            "min": pa.array([s.min for s in stats], pa.float64()),
            "max": pa.array([s.max for s in stats], pa.float64()),
            "mean": pa.array([s.mean for s in stats], pa.float64()),
            "std": pa.array([s.std for s in stats], pa.float64()),
            "quantiles": [json.dumps(s.quantiles) for s in stats],
            "kll": pa.array([s.kll for s in stats], pa.binary()),
            "top": [json.dumps([list(t) for t in s.top], default=str) for s in stats],
        },
        schema=STATS_SCHEMA,
    )
    offline.append(FEATURE_STATS_TABLE, data)


@dataclass(frozen=True)
class _Stored:
    """An expectation as read back from ``sys__quality`` (its kind and feature only)."""

    kind: str
    feature: str
    label: str


def runs_from_table(table: pa.Table) -> list[QualityRun]:
    """``sys__quality`` rows -> runs, newest first."""
    runs: dict[str, QualityRun] = {}
    at = table.column("at").cast(pa.int64()).to_pylist()
    cols = {c: table.column(c).to_pylist() for c in ("run_id", "view", "stage", "expectation", "label", "feature")}
    passed, failures = table.column("passed").to_pylist(), table.column("failures").to_pylist()
    rows, observed = table.column("rows").to_pylist(), table.column("observed").to_pylist()
    for i in range(table.num_rows):  # one row per stored result (few per run): not per data row
        rid = cols["run_id"][i]
        run = runs.get(rid)
        if run is None:
            run = runs[rid] = QualityRun(rid, cols["view"][i], cols["stage"][i], int(at[i]))
        e: Any = _Stored(cols["expectation"][i], cols["feature"][i], cols["label"][i])
        run.results.append(CheckResult(e, bool(passed[i]), json.loads(observed[i] or "{}"), rows[i], failures[i]))
    return sorted(runs.values(), key=lambda r: (r.at_us, r.run_id), reverse=True)


def safely(what: str, fn: Any, *args: Any) -> Any:
    """Quality bookkeeping never fails the backfill or materialization it watches (logged instead)."""
    try:
        return fn(*args)
    except Exception:
        log.warning("data quality: %s failed", what, exc_info=True)
        return None


# -- the stage hooks (batch.py, materialize.py) --------------------------------------------------


def check_stored(
    offline: OfflineStore, view: FeatureView, stage: str, start_us: int | None = None, end_us: int | None = None
) -> QualityRun | None:
    """The view's expectations on its offline rows ``fv__{view}`` (optionally ``[start, end)``);
    None when it has none or no table. Reads only the columns the expectations need."""
    from ..vocab.tables import view_table

    name = view_table(view.name)
    if not view.expectations or not offline.exists(name):
        return None
    have = set(offline.schema(name).names)
    cols = [c for c in view_columns(view) if c in have] or [view.timestamp_field]
    table = offline.read(name, columns=cols, ts_column=view.timestamp_field, start_us=start_us, end_us=end_us)
    return check_view(view, table, stage)


def after_backfill(
    offline: OfflineStore, views: Sequence[FeatureView], start_us: int | None, end_us: int | None
) -> list[QualityRun]:
    """Check what each view's backfill wrote (its ``[start, end)`` rows as stored, whatever the engine)
    and record the runs. Failures are recorded and logged, never raised: ``validate`` is the gate."""
    runs = []
    for view in views:
        run = safely(f"checking {view.name}", check_stored, offline, view, "backfill", start_us, end_us)
        if run is not None:
            safely("recording a run", record_run, offline, run)
            _log_failures(run)
            runs.append(run)
    return runs


def after_materialize(offline: OfflineStore, view: FeatureView, table: pa.Table, now_us: int) -> QualityRun | None:
    """On the rows one materialization loads: the expectations (a run) and the distribution
    statistics (kept under the same run id, for ``drift_report``)."""
    run = safely(f"checking {view.name}", check_view, view, table, "materialize", now_us)
    run_id = run.run_id if run is not None else new_run_id()
    stats = safely(f"statistics of {view.name}", feature_stats, table, stats_columns(view, table.column_names))
    if stats:
        safely("recording statistics", record_stats, offline, run_id, view.name, now_us, stats)
    if run is not None:
        safely("recording a run", record_run, offline, run)
        _log_failures(run)
    return run


def _log_failures(run: QualityRun) -> None:
    for r in run.failures():
        log.warning(
            "data quality %s: view %s: %s failed, observed %s", run.stage, run.view, r.expectation.label, r.observed
        )
