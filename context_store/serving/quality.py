"""Data quality verbs of ``ContextStore``: stored runs, ``validate`` (the CI gate), the drift report
and the numbers behind the quality metrics. The checks themselves are ``compute/quality.py``.

Drift is the population stability index (PSI) per feature between a reference (training data: the
view's ``fv__`` rows for a time range, or a ``get_training_data`` table) and what is served (the
statistics of the latest materialization, or the logged vectors ``log__{service}`` when feature
logging is on). PSI < 0.1: no drift; < 0.25: moderate; above: major.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..compute.quality import QualityRun, check_stored, runs_from_table, stats_columns
from ..errors import InvalidInputError, NotFoundError
from ..limits import QUALITY_RUNS, QUALITY_RUNS_DEFAULT
from ..vocab.tables import FEATURE_STATS_TABLE, QUALITY_TABLE, view_table

if TYPE_CHECKING:
    import pandas as pd

    from ..definitions import FeatureView
    from .store import ContextStore

__all__ = [
    "DriftReport",
    "FeatureDrift",
    "QualityMetrics",
    "ValidationReport",
    "drift_report",
    "psi",
    "quality_metrics",
    "quality_runs",
    "validate",
]

LOG_PREFIX = "log__"  # feature logging's table of a service's served vectors (columns ``{view}__{feature}``)
STAGES = ("backfill", "materialize", "stream")
_EPS = 1e-4  # floor of a bin's fraction: an empty bin must not make PSI infinite
_BINS = 10
_TOP = 20


# -- stored runs -------------------------------------------------------------------------------


def _stored_runs(store: ContextStore) -> list[QualityRun]:
    offline = store.offline
    if not offline.exists(QUALITY_TABLE):
        return []
    return runs_from_table(offline.read(QUALITY_TABLE))


def quality_runs(
    store: ContextStore, view: str | None = None, stage: str | None = None, limit: int = QUALITY_RUNS_DEFAULT
) -> list[QualityRun]:
    """Stored runs, newest first (``view``/``stage`` filter them)."""
    if stage is not None and stage not in STAGES:
        raise InvalidInputError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}", field="stage")
    if limit not in QUALITY_RUNS:
        raise InvalidInputError(f"limit must be an integer in {QUALITY_RUNS.lo}..{QUALITY_RUNS.hi}", field="limit")
    runs = [r for r in _stored_runs(store) if (view is None or r.view == view) and (stage is None or r.stage == stage)]
    return runs[:limit]


@dataclass
class QualityMetrics:
    """What ``/metrics`` exports: failed checks per (view, expectation label) and the last run's
    outcome per (view, stage)."""

    failures: dict[tuple[str, str], int] = field(default_factory=dict)
    last_passed: dict[tuple[str, str], bool] = field(default_factory=dict)


_METRICS_CACHE: dict[tuple[str, str], tuple[str | None, QualityMetrics]] = {}
_CACHE_LOCK = threading.Lock()


def quality_metrics(store: ContextStore) -> QualityMetrics:
    """From ``sys__quality`` (re-read only when it changed) plus this process's unflushed stream samples."""
    from ..compute.quality_stream import pending_failures

    key = (str(store.config.workspace_dir), store.workspace)
    token = store.offline.change_token(QUALITY_TABLE) if store.offline.exists(QUALITY_TABLE) else "none"
    with _CACHE_LOCK:
        hit = _METRICS_CACHE.get(key)
    if hit is not None and token is not None and hit[0] == token:
        base = hit[1]
    else:
        base = QualityMetrics()
        for run in reversed(_stored_runs(store)):  # oldest first: the last one written wins
            base.last_passed[(run.view, run.stage)] = run.passed
            for r in run.results:
                k = (run.view, r.expectation.label)
                base.failures[k] = base.failures.get(k, 0) + int(r.failures)
        with _CACHE_LOCK:
            _METRICS_CACHE[key] = (token, base)
    out = QualityMetrics(dict(base.failures), dict(base.last_passed))
    for k, n in pending_failures(store.config).items():
        out.failures[k] = out.failures.get(k, 0) + n
    return out


# -- validate ----------------------------------------------------------------------------------


def _observed_text(observed: dict[str, Any]) -> str:
    return " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in observed.items())


@dataclass
class ValidationReport:
    """``validate``: a run per view with expectations (read-only: not stored) and views not backfilled."""

    runs: list[QualityRun] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # views with history and expectations, not backfilled

    @property
    def passed(self) -> bool:
        return not self.missing and all(r.passed for r in self.runs)

    def lines(self) -> list[str]:
        """One line per failure: view, feature, expectation, observed value."""
        out = []
        for run in self.runs:
            for r in run.failures():
                e: Any = r.expectation
                what = e.describe() if hasattr(e, "describe") else e.label
                out.append(f"FAIL {run.view}.{e.feature} {what}: observed {_observed_text(r.observed)}")
        out += [f"FAIL {v}: no offline table {view_table(v)} (run backfill first)" for v in self.missing]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "runs": [{**r.to_dict(), "stage": "validate"} for r in self.runs],
            "missing": self.missing,
            "failures": self.lines(),
        }


def validate(store: ContextStore, views: Sequence[str] | None = None) -> ValidationReport:
    """Every expectation (of ``views``, default all) against the whole offline table ``fv__{view}``.
    A view with input history but no table fails (not backfilled); one with no input yet (a stream
    nobody pushed to) has nothing to check."""
    from ..compute.coverage import has_history

    defs = store.definitions
    if isinstance(views, str):
        views = [views]
    selected = [defs.feature_view(v) for v in views] if views else list(defs.feature_views.values())
    report = ValidationReport()
    for view in selected:
        if not view.expectations or not view.offline:
            continue
        run = check_stored(store.offline, view, "validate")
        if run is None and has_history(view, store.config, store.offline):
            report.missing.append(view.name)
        elif run is None:
            continue
        else:
            report.runs.append(run)
    return report


# -- drift -------------------------------------------------------------------------------------


def psi(reference: np.ndarray, served: np.ndarray) -> float:
    """Population stability index of two bin-fraction vectors (same bins)."""
    r = np.clip(np.asarray(reference, dtype=np.float64), _EPS, None)
    s = np.clip(np.asarray(served, dtype=np.float64), _EPS, None)
    return float(np.sum((s - r) * np.log(s / r)))


def _level(value: float | None) -> str:
    if value is None:
        return "unknown"
    return "none" if value < 0.1 else "moderate" if value < 0.25 else "major"


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    psi: float | None
    level: str  # none | moderate | major | unknown
    reference_rows: int
    served_rows: int
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        psi_v = None if self.psi is None else round(self.psi, 6)
        return {
            "feature": self.feature,
            "psi": psi_v,
            "level": self.level,
            "reference_rows": self.reference_rows,
            "served_rows": self.served_rows,
            "note": self.note,
        }


@dataclass
class DriftReport:
    name: str
    kind: str  # feature_view | feature_service
    reference: str  # where the training distribution came from
    served: str  # where the served distribution came from
    features: list[FeatureDrift] = field(default_factory=list)

    @property
    def max_psi(self) -> float | None:
        vals = [f.psi for f in self.features if f.psi is not None]
        return max(vals) if vals else None

    def to_dict(self) -> dict[str, Any]:
        m = self.max_psi
        return {
            "name": self.name,
            "kind": self.kind,
            "reference": self.reference,
            "served": self.served,
            "max_psi": None if m is None else round(m, 6),
            "level": _level(m),
            "features": [f.to_dict() for f in self.features],
        }


@dataclass(frozen=True)
class _Served:
    """A served distribution: the values themselves (a log) or a stored statistics row."""

    values: pa.ChunkedArray | None = None
    stats: dict[str, Any] | None = None

    @property
    def rows(self) -> int:
        if self.values is not None:
            return len(self.values)
        return int(self.stats["count"]) if self.stats else 0


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _numeric_psi(ref: pa.ChunkedArray, served: _Served) -> float:
    ref_f = ref.cast(pa.float64())
    miss = pc.is_null(ref_f, nan_is_null=True)
    vals = ref_f.filter(pc.invert(miss)).to_numpy()
    n = len(ref)
    if not len(vals):
        raise ValueError("the reference has no values")
    edges = np.unique(np.quantile(vals, np.linspace(0, 1, _BINS + 1)[1:-1]))
    ref_frac = np.append(np.bincount(np.searchsorted(edges, vals), minlength=len(edges) + 1) / n, (n - len(vals)) / n)
    if served.values is not None:
        sv = served.values.cast(pa.float64())
        smiss = pc.is_null(sv, nan_is_null=True)
        svals = sv.filter(pc.invert(smiss)).to_numpy()
        m = max(len(sv), 1)
        counts = np.bincount(np.searchsorted(edges, svals), minlength=len(edges) + 1)
        srv_frac = np.append(counts / m, (len(sv) - len(svals)) / m)
    else:
        from datasketches import kll_doubles_sketch

        st = served.stats or {}
        count, nulls = int(st["count"]), int(st["nulls"])
        valid = (count - nulls) / count if count else 0.0
        if st.get("kll") is None:
            body = np.zeros(len(edges) + 1)
        else:
            sk = kll_doubles_sketch.deserialize(st["kll"])
            cdf = np.asarray(sk.get_cdf(list(map(float, edges))) if len(edges) else [1.0])
            body = np.diff(np.concatenate([[0.0], cdf[:-1] if len(edges) else [], [1.0]])) * valid
        srv_frac = np.append(body, nulls / count if count else 0.0)
    return psi(ref_frac, srv_frac)


def _categorical_psi(ref: pa.ChunkedArray, served: _Served) -> float:
    n = len(ref)
    vc = pc.value_counts(ref.filter(pc.is_valid(ref)))
    ref_counts = dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()))
    if served.values is not None:
        svc = pc.value_counts(served.values.filter(pc.is_valid(served.values)))
        srv_counts = dict(zip(svc.field("values").to_pylist(), svc.field("counts").to_pylist()))
        m, s_nulls = len(served.values), served.values.null_count
    else:
        st = served.stats or {}
        srv_counts = {v: c for v, c in json.loads(st.get("top") or "[]")}
        m, s_nulls = int(st["count"]), int(st["nulls"])
    top = sorted(ref_counts, key=lambda v: -ref_counts[v])[:_TOP]
    cats = list(dict.fromkeys([*top, *list(srv_counts)[:_TOP]]))
    ref_frac = [ref_counts.get(c, 0) / n for c in cats]
    srv_frac = [srv_counts.get(c, 0) / max(m, 1) for c in cats]
    ref_frac += [max(0.0, 1 - sum(ref_frac) - ref.null_count / n), ref.null_count / n]  # other, null
    srv_frac += [max(0.0, 1 - sum(srv_frac) - s_nulls / max(m, 1)), s_nulls / max(m, 1)]
    return psi(np.asarray(ref_frac), np.asarray(srv_frac))


def _feature_drift(label: str, ref: pa.ChunkedArray | None, served: _Served | None) -> FeatureDrift:
    if ref is None:
        return FeatureDrift(label, None, "unknown", 0, served.rows if served else 0, "no training data for it")
    if served is None or served.rows == 0:
        return FeatureDrift(label, None, "unknown", len(ref), 0, "nothing served yet")
    if len(ref) == 0:
        return FeatureDrift(label, None, "unknown", 0, served.rows, "the reference has no rows")
    try:
        if _is_number(ref.type):
            value = _numeric_psi(ref, served)
        elif pa.types.is_string(ref.type) or pa.types.is_large_string(ref.type) or pa.types.is_boolean(ref.type):
            value = _categorical_psi(ref, served)
        else:
            return FeatureDrift(label, None, "unknown", len(ref), served.rows, f"no PSI for {ref.type}")
    except (ValueError, KeyError, pa.ArrowInvalid) as e:
        return FeatureDrift(label, None, "unknown", len(ref), served.rows, str(e))
    return FeatureDrift(label, value, _level(value), len(ref), served.rows)


def _latest_stats(store: ContextStore, view: str) -> tuple[str, dict[str, dict[str, Any]]]:
    """The statistics of ``view``'s latest materialization: (run id, feature -> row)."""
    offline = store.offline
    if not offline.exists(FEATURE_STATS_TABLE):
        return "", {}
    t = offline.read(FEATURE_STATS_TABLE, filter=pc.field("view") == view)
    if not t.num_rows:
        return "", {}
    at = t.column("at").cast(pa.int64())
    last = t.filter(pc.equal(at, pc.max(at)))
    run_id = last.column("run_id")[0].as_py()
    return run_id, {r["feature"]: r for r in last.filter(pc.equal(last.column("run_id"), run_id)).to_pylist()}


def _reference_table(ref: pa.Table | pd.DataFrame | None) -> pa.Table | None:
    if ref is None or isinstance(ref, pa.Table):
        return ref
    try:
        return pa.Table.from_pandas(ref, preserve_index=False)
    except (TypeError, ValueError, AttributeError) as e:
        msg = f"reference must be a pyarrow.Table or pandas.DataFrame ({e})"
        raise InvalidInputError(msg, field="reference") from None


def _fv_columns(
    store: ContextStore, view: FeatureView, columns: list[str], start_us: int | None, end_us: int | None
) -> pa.Table | None:
    name = view_table(view.name)
    if not store.offline.exists(name):
        return None
    have = set(store.offline.schema(name).names)
    cols = [c for c in columns if c in have]
    if not cols:
        return None
    return store.offline.read(name, columns=cols, ts_column=view.timestamp_field, start_us=start_us, end_us=end_us)


def drift_report(
    store: ContextStore,
    name: str,
    reference: pa.Table | pd.DataFrame | None = None,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
) -> DriftReport:
    """PSI per feature of a feature view or a feature service (see the module doc)."""
    from ..compute.batch import to_us

    defs = store.definitions
    start_us, end_us = to_us(start, "start"), to_us(end, "end")
    ref_table = _reference_table(reference)
    span = f"[{start or '-inf'}, {end or 'now'})"
    if name in defs.feature_views:
        view = defs.feature_views[name]
        run_id, stats = _latest_stats(store, name)
        cols = stats_columns(view, list(stats) or [a.column for a in view.aggregations] + view.feature_names)
        fv = ref_table if ref_table is not None else _fv_columns(store, view, cols, start_us, end_us)
        ref_from = "reference table" if ref_table is not None else f"{view_table(name)} {span}"
        out = DriftReport(name, "feature_view", ref_from, f"materialization {run_id or '(none yet)'}")
        for c in cols:
            ref = fv.column(c) if fv is not None and c in fv.column_names else None
            out.features.append(_feature_drift(c, ref, _Served(stats=stats[c]) if c in stats else None))
        return out
    if name not in defs.feature_services:
        known = sorted([*defs.feature_views, *defs.feature_services])
        raise NotFoundError(f"no feature view or feature service {name!r}; known: {', '.join(known)}", field="name")
    service = defs.feature_services[name]
    log_name = LOG_PREFIX + name
    log = store.offline.read(log_name) if store.offline.exists(log_name) else None
    ref_from = "reference table" if ref_table is not None else f"fv__ tables {span}"
    out = DriftReport(name, "feature_service", ref_from, log_name if log is not None else "latest materializations")
    for sel in service.selections:
        view = sel.view
        if not hasattr(view, "timestamp_field") or view.kind != "feature_view":
            continue  # realtime views have no offline rows
        run_id, stats = _latest_stats(store, view.name)
        fv = None if ref_table is not None else _fv_columns(store, view, list(sel.features), start_us, end_us)
        features = list(sel.features) if log is not None else stats_columns(view, list(stats))
        for f in features:
            label = f"{view.name}__{f}"
            if ref_table is not None:
                ref = ref_table.column(label) if label in ref_table.column_names else None
            else:
                ref = fv.column(f) if fv is not None and f in fv.column_names else None
            if log is not None:
                served = _Served(values=log.column(label)) if label in log.column_names else None
            else:
                served = _Served(stats=stats[f]) if f in stats else None
            out.features.append(_feature_drift(label, ref, served))
    return out
