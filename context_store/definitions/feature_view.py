"""Feature views: batch features and window aggregations over a source."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, NoReturn

from .base import Definition
from .dtypes import Array, DType, Embedding, Float64, Int64
from .entity import Entity, Field
from .expectations import Expectation, check_expectations
from .slo import freshness_slo, freshness_spec
from .sources import FileSource, Source, StreamSource
from .windows import Lifetime, Window, format_duration, parse_duration, parse_window

__all__ = ["Aggregate", "FeatureView", "FeatureSelection", "AGGREGATION_FUNCTIONS", "aggregate_dtype"]

# name -> (needs numeric input, needs n, needs percentile)
AGGREGATION_FUNCTIONS: dict[str, tuple[bool, bool, bool]] = {
    "count": (False, False, False),
    "sum": (True, False, False),
    "mean": (True, False, False),
    "min": (True, False, False),
    "max": (True, False, False),
    "last": (False, False, False),
    "last_distinct_n": (False, True, False),
    "first_distinct_n": (False, True, False),
    "stddev_samp": (True, False, False),
    "stddev_pop": (True, False, False),
    "var_samp": (True, False, False),
    "var_pop": (True, False, False),
    "approx_count_distinct": (False, False, False),
    "approx_percentile": (True, False, True),
}


def aggregate_dtype(function: str, input_dtype: DType) -> DType:
    """Output type of an aggregation over a column of ``input_dtype``."""
    if function in ("count", "approx_count_distinct"):
        return Int64
    if function in ("last_distinct_n", "first_distinct_n"):
        return Array(input_dtype)
    if function in ("sum", "min", "max", "last"):
        return input_dtype
    if function == "mean" and isinstance(input_dtype, Embedding):
        return input_dtype
    return Float64


@dataclass(frozen=True)
class Aggregate:
    """``cs.Aggregate("amount", "sum", "7d")`` -> feature ``amount_sum_7d``.

    ``n`` is required by ``last_distinct_n``/``first_distinct_n``; ``percentile`` (0..1,
    default 0.5) by ``approx_percentile``. ``mean`` over a ``cs.Embedding`` column gives
    a windowed mean vector (user interest vectors).
    """

    column: str
    function: str
    window: Window | str
    name: str | None = None
    n: int | None = None
    percentile: float | None = None
    location: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        from ..errors import DefinitionError
        from .base import caller_location

        loc = caller_location()
        object.__setattr__(self, "location", loc)
        what = f"aggregate {self.column!r}/{self.function!r}"

        def fail(msg: str) -> NoReturn:
            raise DefinitionError(msg, location=loc, obj=what)

        if not isinstance(self.column, str) or not self.column:
            fail("column must be a column name")
        if self.function not in AGGREGATION_FUNCTIONS:
            fail(f"unknown function {self.function!r}; expected one of {', '.join(AGGREGATION_FUNCTIONS)}")
        try:
            object.__setattr__(self, "window", parse_window(self.window))
        except ValueError as e:
            fail(str(e))
        _, needs_n, needs_p = AGGREGATION_FUNCTIONS[self.function]
        if needs_n:
            if not isinstance(self.n, int) or isinstance(self.n, bool) or not 1 <= self.n <= 1000:
                fail(f"{self.function} needs n, an int in 1..1000 (got {self.n!r})")
        elif self.n is not None:
            fail(f"n is only for last_distinct_n/first_distinct_n, not {self.function}")
        if needs_p:
            p = 0.5 if self.percentile is None else self.percentile
            if not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
                fail(f"percentile must be in [0, 1], got {self.percentile!r}")
            object.__setattr__(self, "percentile", float(p))
        elif self.percentile is not None:
            fail("percentile is only for approx_percentile")
        if self.name is not None:
            from .base import check_name

            check_name(self.name, "aggregate", loc)

    @property
    def output_name(self) -> str:
        if self.name:
            return self.name
        fn = self.function
        if fn in ("last_distinct_n", "first_distinct_n"):
            fn = fn.replace("_n", f"_{self.n}")
        elif fn == "approx_percentile":
            fn = f"p{round(float(self.percentile or 0.5) * 100, 4):g}".replace(".", "_")
        return f"{self.column}_{fn}_{format_duration(self.window)}"  # type: ignore[arg-type]

    @property
    def window_td(self) -> timedelta | None:
        """The window as a timedelta, or None for a lifetime window."""
        return None if isinstance(self.window, Lifetime) else self.window  # type: ignore[return-value]

    def spec(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "function": self.function,
            "window": format_duration(self.window),  # type: ignore[arg-type]
            "name": self.output_name,
            "n": self.n,
            "percentile": self.percentile,
        }


@dataclass(frozen=True)
class FeatureSelection:
    """``view[["a", "b"]]``: a subset of a view's features, for a FeatureService."""

    view: Any
    features: tuple[str, ...]


def _transform_spec(transform: str | Callable[..., Any] | None) -> dict[str, Any] | None:
    if transform is None:
        return None
    if isinstance(transform, str):
        return {"sql": transform}
    try:
        src = inspect.getsource(transform)
    except (OSError, TypeError):
        src = repr(transform)
    return {"python": getattr(transform, "__name__", "fn"), "sha": hashlib.sha256(src.encode()).hexdigest()[:16]}


class FeatureView(Definition):
    """Features of one or more entities computed from one source.

    Either ``features`` (row features, served as the latest value per entity, null after
    ``ttl``) or ``aggregations`` (window aggregates, ``t - W <= ts < t``). ``transform`` is a
    DuckDB SQL string reading the table ``source`` or a Python function over an Arrow table or
    pandas DataFrame; it maps source rows to rows (no cross-row state), so batch and stream
    run it identically.
    """

    kind = "feature_view"

    def __init__(
        self,
        name: str,
        entities: list[Entity],
        source: Source,
        features: list[Field] | None = None,
        aggregations: list[Aggregate] | None = None,
        ttl: str | timedelta | None = None,
        transform: str | Callable[..., Any] | None = None,
        aggregation_interval: str | timedelta | None = None,
        online: bool = True,
        offline: bool = True,
        timestamp_field: str | None = None,
        description: str | None = None,
        tags: dict[str, str] | None = None,
        owner: str | None = None,
        expectations: list[Expectation] | None = None,
        expected_freshness: str | timedelta | None = None,
    ) -> None:
        self._init_common(name, description, tags, owner)
        self.expected_freshness = freshness_slo(self, expected_freshness)
        if not isinstance(entities, (list, tuple)) or not entities or not all(isinstance(e, Entity) for e in entities):
            self.fail("entities must be a non-empty list of cs.Entity")
        self.entities: tuple[Entity, ...] = tuple(entities)
        keys = self.join_keys
        if len(set(keys)) != len(keys):
            self.fail(f"entities share a join key: {keys}")
        if not isinstance(source, (FileSource, StreamSource)):
            self.fail(f"source must be a cs.FileSource or cs.StreamSource, got {type(source).__name__}")
        self.source = source
        if (features is None) == (aggregations is None):
            self.fail("give exactly one of features=[...] or aggregations=[...]")
        if features is not None:
            if (
                not isinstance(features, (list, tuple))
                or not features
                or not all(isinstance(f, Field) for f in features)
            ):
                self.fail("features must be a non-empty list of cs.Field")
        if aggregations is not None:
            if (
                not isinstance(aggregations, (list, tuple))
                or not aggregations
                or not all(isinstance(a, Aggregate) for a in aggregations)
            ):
                self.fail("aggregations must be a non-empty list of cs.Aggregate")
        self.features_in: tuple[Field, ...] = tuple(features or ())
        self.aggregations: tuple[Aggregate, ...] = tuple(aggregations or ())
        names = self.feature_names
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            self.fail(f"duplicate feature name {dup[0]!r}")
        clash = set(names) & set(keys)
        if clash:
            self.fail(f"feature {sorted(clash)[0]!r} has the name of a join key")
        self.ttl: timedelta | None = None
        if ttl is not None:
            try:
                self.ttl = parse_duration(ttl, "ttl")
            except ValueError as e:
                self.fail(str(e))
        if transform is not None and not (isinstance(transform, str) or callable(transform)):
            self.fail("transform must be a SQL string or a Python function")
        if isinstance(transform, str) and not transform.strip():
            self.fail("transform SQL is empty")
        self.transform = transform
        self.aggregation_interval: timedelta | None = None
        if aggregation_interval is not None:
            if not self.aggregations:
                self.fail("aggregation_interval needs aggregations")
            try:
                self.aggregation_interval = parse_duration(aggregation_interval, "aggregation_interval")
            except ValueError as e:
                self.fail(str(e))
            for a in self.aggregations:
                w = a.window_td
                if w is not None and w % self.aggregation_interval:
                    self.fail(
                        f"window {format_duration(w)} of {a.output_name!r} is not a multiple of "
                        f"aggregation_interval {format_duration(self.aggregation_interval)}"
                    )
        self.online = bool(online)
        self.offline = bool(offline)
        self.timestamp_field = timestamp_field or source.timestamp_field
        self.expectations = check_expectations(self, expectations)  # data quality (docs/data-quality.md)

    @property
    def join_keys(self) -> list[str]:
        return [k for e in self.entities for k in e.join_keys]

    @property
    def join_key_fields(self) -> list[Field]:
        return [k for e in self.entities for k in e.join_key_fields]

    @property
    def is_aggregate(self) -> bool:
        return bool(self.aggregations)

    @property
    def feature_names(self) -> list[str]:
        if self.aggregations:
            return [a.output_name for a in self.aggregations]
        return [f.name for f in self.features_in]

    @property
    def max_window(self) -> timedelta | None:
        """The longest finite window, or None when any window is a lifetime one."""
        ws = [a.window_td for a in self.aggregations]
        if not ws or any(w is None for w in ws):
            return None
        return max(ws)  # type: ignore[type-var]

    def __getitem__(self, names: list[str]) -> FeatureSelection:
        return FeatureSelection(self, self.select(names, self.feature_names))

    def spec(self) -> dict[str, Any]:
        return {
            **super().spec(),
            "entities": [e.name for e in self.entities],
            "source": self.source.name,
            "features": [f.spec() for f in self.features_in],
            "aggregations": [a.spec() for a in self.aggregations],
            "ttl_s": self.ttl.total_seconds() if self.ttl else None,
            "transform": _transform_spec(self.transform),
            "aggregation_interval_s": self.aggregation_interval.total_seconds() if self.aggregation_interval else None,
            "online": self.online,
            "offline": self.offline,
            "timestamp_field": self.timestamp_field,
            **freshness_spec(self.expected_freshness),
            # only when set: specs applied before expectations existed stay unchanged (no plan noise)
            **({"expectations": [e.spec() for e in self.expectations]} if self.expectations else {}),
        }
