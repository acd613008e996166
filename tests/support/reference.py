"""A brute-force, pure-Python reference of the feature semantics (SPEC §3), for property tests.

Deliberately naive: every window is found by scanning every event; sums use ``math.fsum`` and
variances exact ``Fraction`` arithmetic. Importable by any test::

    from tests.support.reference import expected_value, expected_view_row, values_match

Semantics:
- window aggregate at ``t``: events with ``end - W <= ts < end`` where ``end = t``, or
  ``floor(t, I)`` with an aggregation interval ``I``; ``W = None`` is a lifetime window;
- empty window: count/sum 0, last/first_distinct_n ``[]``, everything else None;
- count counts rows; every other function ignores None values;
- last / last_distinct_n / first_distinct_n order events by (ts, value ascending);
- approx_count_distinct is exact here, approx_percentile the nearest-rank percentile
  (``sorted(v)[max(ceil(p*n) - 1, 0)]``); compare approx results with ``values_match(..., approx=...)``;
- batch (row) features: the latest row with ``ts <= t`` (ties: the last in log order), None
  when ``t - ts > ttl``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from fractions import Fraction
from typing import Any

__all__ = [
    "window_bounds",
    "aggregate",
    "expected_value",
    "expected_view_row",
    "latest_row",
    "values_match",
    "HLL_TOLERANCE",
]

# DataSketches HLL lg_k=12: relative standard error 1.6%; 4 sigma, plus 1 for rounding.
HLL_TOLERANCE = 0.066


def window_bounds(t_us: int, window_us: int | None, interval_us: int | None = None) -> tuple[float, int]:
    """``(start, end)``: the window is ``start <= ts < end`` (start ``-inf`` for lifetime)."""
    end = t_us if interval_us is None else (t_us // interval_us) * interval_us
    start: float = -math.inf if window_us is None else end - window_us
    return start, end


def _ordered(pairs: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    def key(p: tuple[int, Any]) -> tuple[int, Any]:
        v = p[1]
        return (p[0], tuple(v) if isinstance(v, list) else v)

    return sorted(pairs, key=key)


def aggregate(
    function: str, pairs: Sequence[tuple[int, Any]], n: int | None = None, percentile: float | None = None
) -> Any:
    """The value of ``function`` over the events ``(ts, value)`` of one window (None = null value)."""
    if function == "count":
        return len(pairs)
    nn = [(ts, v) for ts, v in pairs if v is not None]
    vals = [v for _, v in nn]
    if function == "sum":
        if not vals:
            return 0
        if all(isinstance(v, int) for v in vals):
            return sum(vals)
        return math.fsum(vals)
    if function in ("last_distinct_n", "first_distinct_n"):
        seq = [v for _, v in _ordered(nn)]
        if function == "last_distinct_n":
            seq = seq[::-1]
        out: list[Any] = []
        seen: set[Any] = set()
        for v in seq:
            h = tuple(v) if isinstance(v, list) else v
            if h not in seen:
                seen.add(h)
                out.append(v)
            if len(out) == n:
                break
        return out[::-1] if function == "last_distinct_n" else out
    if not vals:
        return None
    if function == "mean":
        if isinstance(vals[0], (list, tuple)):  # embedding: elementwise mean vector
            dim = len(vals[0])
            return [math.fsum(float(v[i]) for v in vals) / len(vals) for i in range(dim)]
        return math.fsum(vals) / len(vals)
    if function == "min":
        return min(vals)
    if function == "max":
        return max(vals)
    if function == "last":
        return _ordered(nn)[-1][1]
    if function in ("var_samp", "var_pop", "stddev_samp", "stddev_pop"):
        k = len(vals)
        if function.endswith("samp") and k < 2:
            return None
        fr = [Fraction(v) for v in vals]
        mean = sum(fr) / k
        m2 = sum((x - mean) ** 2 for x in fr)
        var = float(m2 / (k - 1 if function.endswith("samp") else k))
        return math.sqrt(var) if function.startswith("stddev") else var
    if function == "approx_count_distinct":
        return len({tuple(v) if isinstance(v, list) else v for v in vals})
    if function == "approx_percentile":
        s = sorted(vals)
        p = 0.5 if percentile is None else percentile
        return float(s[max(math.ceil(p * len(s)) - 1, 0)])
    raise ValueError(f"unknown function {function!r}")


def _key_of(row: Mapping[str, Any], keys: Sequence[str]) -> tuple[Any, ...]:
    return tuple(row.get(k) for k in keys)


def expected_value(
    events: Iterable[Mapping[str, Any]],
    keys: Sequence[str],
    ts_field: str,
    spine_key: Sequence[Any],
    t_us: int,
    column: str,
    function: str,
    window_us: int | None,
    interval_us: int | None = None,
    n: int | None = None,
    percentile: float | None = None,
) -> Any:
    """One window aggregate for one spine row (events: dicts with int-us ``ts_field``)."""
    start, end = window_bounds(t_us, window_us, interval_us)
    want = tuple(spine_key)
    pairs = [
        (e[ts_field], e.get(column))
        for e in events
        if None not in want and _key_of(e, keys) == want and start <= e[ts_field] < end
    ]
    return aggregate(function, pairs, n=n, percentile=percentile)


def latest_row(
    events: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    ts_field: str,
    spine_key: Sequence[Any],
    t_us: int,
    ttl_us: int | None,
) -> Mapping[str, Any] | None:
    """Batch features: the latest row with ts <= t (ties: last in log order), None past ttl."""
    want = tuple(spine_key)
    best: Mapping[str, Any] | None = None
    for e in events:
        if None in want or _key_of(e, keys) != want or e[ts_field] > t_us:
            continue
        if best is None or e[ts_field] >= best[ts_field]:
            best = e
    if best is None or (ttl_us is not None and t_us - best[ts_field] > ttl_us):
        return None
    return best


def expected_view_row(
    view: Any, events: Sequence[Mapping[str, Any]], spine_row: Mapping[str, Any], t_us: int
) -> dict[str, Any]:
    """Every feature of a (non-realtime) ``cs.FeatureView`` for one spine row."""
    keys = view.join_keys
    ts = view.timestamp_field
    sk = _key_of(spine_row, keys)
    if view.is_aggregate:
        interval = None if view.aggregation_interval is None else _us(view.aggregation_interval)
        out = {}
        for a in view.aggregations:
            w = a.window_td
            out[a.output_name] = expected_value(
                events,
                keys,
                ts,
                sk,
                t_us,
                a.column,
                a.function,
                _us(w),
                interval,
                n=a.n,
                percentile=a.percentile,
            )
        return out
    ttl = _us(view.ttl)
    row = latest_row(events, keys, ts, sk, t_us, ttl)
    return {f.name: (None if row is None else row.get(f.name)) for f in view.features_in}


def values_match(got: Any, want: Any, rel: float = 1e-9, scale: float = 0.0, approx: str | None = None) -> bool:
    """Equality with float tolerance ``rel`` (relative) or ``rel * scale`` (absolute: pass the
    magnitude of the inputs, squared for variances, so results that cancel to ~0 compare sanely).
    ``approx='hll'`` accepts the HLL error bound."""
    if approx == "hll" and isinstance(want, int):
        return got is not None and abs(got - want) <= max(1, HLL_TOLERANCE * want)
    if isinstance(want, (list, tuple)) and isinstance(got, (list, tuple)):
        return len(got) == len(want) and all(values_match(g, w, rel, scale) for g, w in zip(got, want))
    if isinstance(want, float) or isinstance(got, float):
        if got is None or want is None:
            return got is None and want is None
        if math.isnan(want) or math.isnan(got):
            return math.isnan(want) and math.isnan(got)
        return math.isclose(got, want, rel_tol=rel, abs_tol=rel * scale)
    return bool(got == want)


def _us(td: timedelta | None) -> int | None:
    return None if td is None else td // timedelta(microseconds=1)
