"""Vector-store vocabulary: the index protocol, attribute filters and attribute columns.

A filter is a mapping ``{column: value}`` (equality), ``{column: [v1, v2]}`` (membership) or
``{column: {"$op": value}}`` with ops ``$eq $ne $gt $gte $lt $lte $in $nin`` (the ``$`` is
optional). All conditions must hold (AND). A null attribute matches only ``{column: None}``,
``$ne`` and ``$nin`` (never an ordering op).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ...errors import InvalidInputError

__all__ = ["VectorIndex", "Condition", "compile_filter", "AttributeColumns", "FILTER_OPS"]

FILTER_OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin")


class VectorIndex(Protocol):
    """An in-memory ANN index over unit vectors, keyed by string id, with stored attributes."""

    dim: int

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, attributes: Sequence[Mapping[str, Any]] | None = None) -> None: ...

    def delete(self, ids: Sequence[str]) -> int: ...

    def search(
        self, query: np.ndarray, k: int, filter: Mapping[str, Any] | None = None, exclude: Sequence[str] = ()
    ) -> list[tuple[str, float]]: ...

    def get_vector(self, id: str) -> np.ndarray | None: ...

    def get_attributes(self, id: str) -> dict[str, Any]: ...

    def __len__(self) -> int: ...

    def __contains__(self, id: object) -> bool: ...


@dataclass(frozen=True, slots=True)
class Condition:
    column: str
    op: str
    value: Any


def _scalar(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (str, bool, numbers.Number)):
        return value
    raise InvalidInputError(f"{where}: filter values must be strings, numbers, booleans or null", field=where)


def compile_filter(filter: Mapping[str, Any] | None, columns: Sequence[str] | None = None) -> list[Condition]:
    """Validate a filter; ``columns`` (when given) are the only attributes that may be named."""
    if filter is None:
        return []
    if not isinstance(filter, Mapping):
        raise InvalidInputError("filter must be an object of {attribute: value | {op: value}}", field="filter")
    out: list[Condition] = []
    for col, spec in filter.items():
        where = f"filter.{col}"
        if not isinstance(col, str) or not col:
            raise InvalidInputError("filter keys must be attribute names", field="filter")
        if columns is not None and col not in columns:
            known = ", ".join(sorted(columns)) or "none"
            raise InvalidInputError(f"unknown attribute {col!r} in filter; known: {known}", field=where)
        if isinstance(spec, Mapping):
            if not spec:
                raise InvalidInputError(f"{where}: empty condition", field=where)
            for raw_op, value in spec.items():
                op = str(raw_op).lstrip("$")
                if op not in FILTER_OPS:
                    raise InvalidInputError(
                        f"{where}: unknown operator {raw_op!r}; use one of " + ", ".join("$" + o for o in FILTER_OPS),
                        field=where,
                    )
                if op in ("in", "nin"):
                    if not isinstance(value, (list, tuple, set)):
                        raise InvalidInputError(f"{where}: ${op} needs a list", field=where)
                    value = tuple(_scalar(v, where) for v in value)
                else:
                    value = _scalar(value, where)
                    if op in ("gt", "gte", "lt", "lte") and (value is None or isinstance(value, bool)):
                        raise InvalidInputError(f"{where}: ${op} needs a number or string", field=where)
                out.append(Condition(col, op, value))
        elif isinstance(spec, (list, tuple)):
            out.append(Condition(col, "in", tuple(_scalar(v, where) for v in spec)))
        else:
            out.append(Condition(col, "eq", _scalar(spec, where)))
    return out


def _is_num(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


class AttributeColumns:
    """Per-position attribute storage: float64 arrays (NaN = null) for numeric columns,
    object arrays otherwise, grown by doubling. Filters evaluate vectorised over positions."""

    def __init__(self) -> None:
        self._cols: dict[str, np.ndarray] = {}
        self._size = 0  # number of positions in use
        self._cap = 0

    @property
    def columns(self) -> list[str]:
        return list(self._cols)

    def _grow(self, need: int) -> None:
        if need <= self._cap:
            return
        cap = max(need, self._cap * 2, 1024)
        for name, arr in self._cols.items():
            new = np.full(cap, np.nan) if arr.dtype == np.float64 else np.full(cap, None, dtype=object)
            new[: self._size] = arr[: self._size]
            self._cols[name] = new
        self._cap = cap

    def _new_column(self, name: str, numeric: bool) -> None:
        self._cols[name] = np.full(self._cap, np.nan) if numeric else np.full(self._cap, None, dtype=object)

    def append(self, rows: Sequence[Mapping[str, Any]] | None, count: int) -> None:
        """Add ``count`` positions; ``rows`` (same length) holds their attributes, or None."""
        start = self._size
        self._grow(start + count)
        self._size = start + count
        if not rows:
            return
        names = list(dict.fromkeys(k for r in rows for k in r))
        for name in names:
            values = [r.get(name) for r in rows]
            numeric = all(v is None or _is_num(v) for v in values)
            if name not in self._cols:
                self._new_column(name, numeric)
            arr = self._cols[name]
            if arr.dtype == np.float64 and not numeric:
                # A non-number arrived in a numeric column: keep every value as an object.
                obj = np.full(self._cap, None, dtype=object)
                old = arr[:start]
                obj[:start] = [None if np.isnan(x) else _num_out(x) for x in old]
                self._cols[name] = arr = obj
            if arr.dtype == np.float64:
                arr[start : start + count] = [np.nan if v is None else float(v) for v in values]
            else:
                for i, v in enumerate(values):
                    arr[start + i] = v

    def get(self, pos: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, arr in self._cols.items():
            v = arr[pos]
            if arr.dtype == np.float64:
                out[name] = None if np.isnan(v) else _num_out(v)
            else:
                out[name] = v
        return out

    def take(self, positions: np.ndarray) -> AttributeColumns:
        """A compacted copy holding only ``positions`` (in that order)."""
        new = AttributeColumns()
        new._size = new._cap = len(positions)
        new._cols = {name: arr[positions].copy() for name, arr in self._cols.items()}
        return new

    def mask(self, conditions: Sequence[Condition]) -> np.ndarray:
        """Bool array over positions ``[0, size)`` where every condition holds."""
        n = self._size
        out = np.ones(n, dtype=bool)
        for c in conditions:
            arr = self._cols.get(c.column)
            if arr is None:
                # The column was never set: every row is null there.
                out &= c.op in ("ne", "nin")
                continue
            out &= _eval(arr[:n], c)
        return out


def _num_out(x: float) -> int | float:
    # Integers round-trip through float64 (exact below 2**53) back to int for display.
    return int(x) if float(x).is_integer() and abs(x) < 2**53 else float(x)


def _same(x: Any, v: Any) -> bool:
    # True must not equal 1 here, and unhashable/odd values never raise.
    if isinstance(x, bool) != isinstance(v, bool):
        return False
    try:
        return bool(x == v)
    except Exception:
        return False


def _eval(arr: np.ndarray, c: Condition) -> np.ndarray:
    op, v = c.op, c.value
    if arr.dtype == np.float64:
        if op in ("in", "nin"):
            nums = [float(x) for x in v if _is_num(x)]
            hit = np.isin(arr, nums)
            if None in v:
                hit |= np.isnan(arr)
            return hit if op == "in" else ~hit
        if op in ("eq", "ne"):
            if v is None:
                hit = np.isnan(arr)
            else:
                hit = arr == float(v) if _is_num(v) else np.zeros(len(arr), dtype=bool)
            return hit if op == "eq" else ~hit
        if not _is_num(v):
            return np.zeros(len(arr), dtype=bool)
        with np.errstate(invalid="ignore"):
            return {"gt": arr > v, "gte": arr >= v, "lt": arr < v, "lte": arr <= v}[op]
    if op in ("in", "nin"):
        hit = np.frompyfunc(lambda x: any(_same(x, y) for y in v), 1, 1)(arr).astype(bool)
        return hit if op == "in" else ~hit
    if op in ("eq", "ne"):
        hit = np.frompyfunc(lambda x: _same(x, v), 1, 1)(arr).astype(bool)
        return hit if op == "eq" else ~hit

    def cmp(x: Any) -> bool:
        if x is None or isinstance(x, bool) or (type(x) is str) != (type(v) is str):
            return False
        try:
            return {"gt": x > v, "gte": x >= v, "lt": x < v, "lte": x <= v}[op]
        except TypeError:
            return False

    return np.frompyfunc(cmp, 1, 1)(arr).astype(bool)
