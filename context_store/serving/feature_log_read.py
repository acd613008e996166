"""Reading the feature log back: ``get_logged_features`` (train on what was served) and
``logged_feature_skew`` (served values against a point-in-time recomputation of the same keys at the
same request times: training/serving skew)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InvalidInputError
from ..vocab.tables import LOG_COLUMNS, log_table
from .features import to_us

if TYPE_CHECKING:
    from ..definitions import FeatureService
    from .store import ContextStore

__all__ = ["FeatureSkew", "SkewReport", "get_logged_features", "logged_feature_skew"]


@dataclass
class FeatureSkew:
    """One feature: ``compared`` logged rows, ``matches`` of them equal to the recomputation (numbers:
    within 1e-6 relative), ``mean_abs_diff`` over rows where both are numbers (None: not numeric)."""

    feature: str
    compared: int
    matches: int
    match_rate: float
    mean_abs_diff: float | None = None


@dataclass
class SkewReport:
    feature_service: str
    rows: int
    features: list[FeatureSkew] = field(default_factory=list)

    @property
    def match_rate(self) -> float:
        """Over every compared value of every feature (1.0 when nothing was logged)."""
        n = sum(f.compared for f in self.features)
        return sum(f.matches for f in self.features) / n if n else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "match_rate": self.match_rate}


def _service(store: ContextStore, name: str) -> FeatureService:
    svc = store.definitions.feature_service(name)  # NotFoundError naming the known services
    if svc.logging is None:
        raise InvalidInputError(
            f"feature service {name!r} does not log its served vectors; "
            "declare it with logging=cs.LoggingConfig(...) and apply",
            field="feature_service",
        )
    return svc


def _bound(t: datetime | str | None, name: str) -> int | None:
    if t is None:
        return None
    try:
        return to_us(t)
    except InvalidInputError as e:
        raise InvalidInputError(e.message.replace("request_time", name), field=name) from None


def get_logged_features(
    store: ContextStore,
    feature_service: str,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    join_keys: Mapping[str, Any] | None = None,
) -> pa.Table:
    """Logged rows with ``start <= request_time < end``, optionally of one entity (``join_keys``), by
    request time. Flushes this process's queue first, so a caller reads what it just served."""
    svc = _service(store, feature_service)
    lo, hi = _bound(start, "start"), _bound(end, "end")
    keys = [k for v in svc.views for k in getattr(v, "join_keys", ())]
    flt: pc.Expression | None = None
    if join_keys is not None:
        if not isinstance(join_keys, Mapping):
            raise InvalidInputError("join_keys must be an object of join key -> value", field="join_keys")
        for k, v in join_keys.items():
            if k not in keys:
                raise InvalidInputError(
                    f"{k!r} is not a join key of feature service {feature_service!r} (it has {', '.join(keys)})",
                    field=f"join_keys.{k}",
                )
            e = pc.field(k) == v
            flt = e if flt is None else flt & e
    store.flush_feature_log()
    table = log_table(feature_service)
    offline = store.offline
    if not offline.exists(table):
        return pa.table({c: pa.array([], pa.string()) for c in [*dict.fromkeys(keys), *LOG_COLUMNS]})
    rows = offline.read(table, ts_column="request_time", start_us=lo, end_us=hi, filter=flt)
    return rows.sort_by([("request_time", "ascending"), ("request_id", "ascending")])


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def logged_feature_skew(
    store: ContextStore,
    feature_service: str,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
) -> SkewReport:
    """Recompute every logged row point-in-time (``get_training_data`` with the logged join keys and
    request times as the spine, request context fields as its request columns) and compare per feature."""
    svc = _service(store, feature_service)
    logged = get_logged_features(store, feature_service, start=start, end=end)
    report = SkewReport(feature_service, logged.num_rows)
    if not logged.num_rows:
        report.features = [FeatureSkew(c, 0, 0, 1.0) for c in svc.column_names]
        return report
    keys = list(dict.fromkeys(k for v in svc.views for k in getattr(v, "join_keys", ())))
    spine = logged.select([*keys, "request_time"])
    request_fields = store.definitions.request_fields(svc)
    if request_fields:
        ctxs = [json.loads(c) if c else {} for c in logged.column("request_context").to_pylist()]
        for name, dt in request_fields.items():
            spine = spine.append_column(name, pa.array([c.get(name) for c in ctxs], dt.to_arrow()))
    recomputed = store.get_training_data(spine, feature_service, timestamp_field="request_time")
    assert isinstance(recomputed, pa.Table)
    for col in svc.column_names:
        served = logged.column(col).to_pylist() if col in logged.column_names else [None] * logged.num_rows
        again = recomputed.column(col).to_pylist()
        matches, diffs = 0, []
        for a, b in zip(served, again):
            matches += _same(a, b)
            if _number(a) and _number(b):
                diffs.append(abs(float(a) - float(b)))
        n = len(served)
        report.features.append(
            FeatureSkew(col, n, matches, matches / n if n else 1.0, sum(diffs) / len(diffs) if diffs else None)
        )
    return report
