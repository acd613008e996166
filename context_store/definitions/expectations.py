"""Data quality expectations: ``cs.Expect.not_null("amount", ratio=0.99)`` on a feature view.

An expectation names one column of the view's offline rows (``fv__{view}``): a feature of a row
view, an aggregated input column of an aggregate view (``cs.Aggregate("amount", ...)`` -> ``amount``;
aggregate outputs are computed online and have no rows to check) or a join key. ``ratio`` is the
least fraction of rows that must satisfy it (1.0: every row). Checked at backfill, materialize and
on a sample of stream batches (``compute/quality.py``); ``context-store validate`` is the CI gate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from ..errors import DefinitionError
from .base import caller_location

if TYPE_CHECKING:
    from .feature_view import FeatureView

__all__ = ["EXPECTATION_KINDS", "Expect", "Expectation", "check_expectations"]

EXPECTATION_KINDS = ("not_null", "range", "allowed", "unique")
_MAX_ALLOWED = 10_000  # values of one allowed(...) set: it is stored in the spec


@dataclass(frozen=True)
class Expectation:
    """One expectation on one column; build it with ``cs.Expect``."""

    kind: str
    feature: str
    ratio: float = 1.0
    min: float | None = None
    max: float | None = None
    values: tuple[Any, ...] = ()
    location: str = field(default="", compare=False)

    @property
    def name(self) -> str:
        """Short label: ``not_null``, ``range``, ``allowed``, ``unique`` (results and metrics)."""
        return self.kind

    @property
    def label(self) -> str:
        """``kind(feature)``: the ``expectation`` label of the quality metrics."""
        return f"{self.kind}({self.feature})"

    def describe(self) -> str:
        """Human form, e.g. ``range(amount, 0..10000, ratio=0.99)``."""
        args = [self.feature]
        if self.kind == "range":
            args.append(f"{'' if self.min is None else f'{self.min:g}'}..{'' if self.max is None else f'{self.max:g}'}")
        elif self.kind == "allowed":
            shown = ", ".join(repr(v) for v in self.values[:5]) + (", ..." if len(self.values) > 5 else "")
            args.append(f"{{{shown}}}")
        if self.ratio < 1.0:
            args.append(f"ratio={self.ratio:g}")
        return f"{self.kind}({', '.join(args)})"

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "feature": self.feature, "ratio": self.ratio}
        if self.kind == "range":
            out["min"], out["max"] = self.min, self.max
        if self.kind == "allowed":
            out["values"] = list(self.values)
        return out


def _fail(msg: str, loc: str, what: str) -> NoReturn:
    raise DefinitionError(msg, location=loc, obj=what)


def _ratio(ratio: Any, loc: str, what: str) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) <= 1.0:
        _fail(f"ratio must be a number in (0, 1], got {ratio!r}", loc, what)
    return float(ratio)


def _feature(feature: Any, kind: str, loc: str) -> str:
    if not isinstance(feature, str) or not feature:
        _fail(f"the feature must be a column name, got {feature!r}", loc, f"expectation {kind}")
    return feature


class Expect:
    """Constructors of expectations (``cs.Expect.not_null("amount", ratio=0.99)``)."""

    @staticmethod
    def not_null(feature: str, ratio: float = 1.0) -> Expectation:
        """At least ``ratio`` of the rows have a value (null and NaN count as missing)."""
        loc = caller_location()
        f = _feature(feature, "not_null", loc)
        return Expectation("not_null", f, _ratio(ratio, loc, f"expectation not_null({f})"), location=loc)

    @staticmethod
    def range(feature: str, min: float | None = None, max: float | None = None, ratio: float = 1.0) -> Expectation:
        """At least ``ratio`` of the non-null values lie in ``[min, max]`` (either bound may be None)."""
        loc = caller_location()
        f = _feature(feature, "range", loc)
        what = f"expectation range({f})"
        for bound, v in (("min", min), ("max", max)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v)):
                _fail(f"{bound} must be a number or None, got {v!r}", loc, what)
        if min is None and max is None:
            _fail("give min, max or both", loc, what)
        if min is not None and max is not None and min > max:
            _fail(f"min {min!r} is greater than max {max!r}", loc, what)
        lo = None if min is None else float(min)
        hi = None if max is None else float(max)
        return Expectation("range", f, _ratio(ratio, loc, what), min=lo, max=hi, location=loc)

    @staticmethod
    def allowed(feature: str, values: list[Any] | tuple[Any, ...] | set[Any], ratio: float = 1.0) -> Expectation:
        """At least ``ratio`` of the non-null values are in ``values`` (strings, ints or bools)."""
        loc = caller_location()
        f = _feature(feature, "allowed", loc)
        what = f"expectation allowed({f})"
        if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple, set, frozenset)) or not values:
            _fail("values must be a non-empty list", loc, what)
        if len(values) > _MAX_ALLOWED:
            _fail(f"at most {_MAX_ALLOWED} values, got {len(values)}", loc, what)
        kinds = {type(v) for v in values}
        if not kinds <= {str, int, bool} or len(kinds - {bool}) > 1:
            _fail("values must all be strings or all ints", loc, what)
        vals = tuple(sorted(values, key=repr)) if isinstance(values, (set, frozenset)) else tuple(values)
        return Expectation("allowed", f, _ratio(ratio, loc, what), values=vals, location=loc)

    @staticmethod
    def unique(feature: str) -> Expectation:
        """No two rows share a value. On a join key: no two rows of one entity at the same event time
        (join keys repeat over time; duplicates at one time make point-in-time joins ambiguous)."""
        loc = caller_location()
        return Expectation("unique", _feature(feature, "unique", loc), location=loc)


def check_expectations(view: FeatureView, expectations: Any) -> tuple[Expectation, ...]:
    """The view's expectations, each naming a column the view has (an error names the feature)."""
    if expectations is None:
        return ()
    if not isinstance(expectations, (list, tuple)) or not all(isinstance(e, Expectation) for e in expectations):
        view.fail("expectations must be a list of cs.Expect.* (e.g. cs.Expect.not_null('amount'))")
    types = {f.name: f.dtype for f in view.features_in}
    inputs = sorted({a.column for a in view.aggregations})
    known = set(types) | set(inputs) | set(view.join_keys)
    for e in expectations:
        if e.feature not in known:
            hint = ""
            outputs = {a.output_name: a.column for a in view.aggregations}
            if e.feature in outputs:
                hint = f" (aggregate outputs are computed online; expect on its input column {outputs[e.feature]!r})"
            view.fail(
                f"expectation {e.describe()}: no feature {e.feature!r}{hint}; it can check {sorted(known)}"
                f" (expectation written at {e.location})"
            )
        dtype = types.get(e.feature)
        if dtype is not None and e.kind == "range" and not dtype.is_numeric:
            view.fail(f"expectation {e.describe()}: feature {e.feature!r} is {dtype!r}, range needs a number")
    seen: set[tuple[str, str]] = set()
    for e in expectations:
        if (e.kind, e.feature) in seen:
            view.fail(f"two {e.kind} expectations on feature {e.feature!r}")
        seen.add((e.kind, e.feature))
    return tuple(expectations)
