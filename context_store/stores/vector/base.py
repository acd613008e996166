"""Vector-store vocabulary: the index protocol, attribute filters and attribute columns.

A filter is a mapping ``{column: value}`` (equality), ``{column: [v1, v2]}`` (membership) or
``{column: {"$op": value}}`` with ops ``$eq $ne $gt $gte $lt $lte $in $nin`` (the ``$`` is
optional). All conditions must hold (AND). A null attribute matches only ``{column: None}``,
``$ne`` and ``$nin`` (never an ordering op).

The id of an entry can be filtered too, by the collection's key name (``{"item_id": {"$nin": [...]}}``,
``split_id`` separates those conditions): equality and membership only (``$eq $ne $in $nin``).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ...errors import InvalidInputError

__all__ = [
    "VectorIndex",
    "Condition",
    "compile_filter",
    "split_id",
    "AttributeColumns",
    "EncodedColumn",
    "FILTER_OPS",
    "ID_OPS",
]

FILTER_OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin")
ID_OPS = ("eq", "ne", "in", "nin")  # an id has no order worth filtering on


class VectorIndex(Protocol):
    """An in-memory ANN index over unit vectors, keyed by string id, with stored attributes."""

    dim: int

    def upsert(
        self, ids: Sequence[str], vectors: np.ndarray, attributes: Sequence[Mapping[str, Any]] | None = None
    ) -> None: ...

    def delete(self, ids: Sequence[str]) -> int: ...

    def search(
        self,
        query: np.ndarray,
        k: int,
        filter: Mapping[str, Any] | None = None,
        exclude: Sequence[str] = (),
        ids: Sequence[Condition] = (),
    ) -> list[tuple[str, float]]: ...

    def get_vector(self, id: str) -> np.ndarray | None: ...

    def get_vectors(self, ids: Sequence[str]) -> list[tuple[str, np.ndarray]]: ...

    def get_attributes(self, id: str) -> dict[str, Any]: ...

    def __len__(self) -> int: ...

    def __contains__(self, id: object) -> bool: ...


@dataclass(frozen=True, slots=True)
class EncodedColumn:
    """A dictionary-encoded column: ``codes`` (int32, -1 = null) index into ``values``."""

    codes: np.ndarray
    values: list[Any]

    def __len__(self) -> int:
        return len(self.codes)


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
                    # the common case (thousands of ids: a seen list) in one pass, then the checked one
                    value = tuple(value)
                    if not all(type(v) is str for v in value):
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


def split_id(conditions: Sequence[Condition], id_column: str) -> tuple[list[Condition], list[Condition]]:
    """(attribute conditions, id conditions) of a compiled filter; an ordering op on the id is a 400."""
    ids = [c for c in conditions if c.column == id_column]
    for c in ids:
        if c.op not in ID_OPS:
            raise InvalidInputError(
                f"filter.{id_column}: the id takes " + ", ".join("$" + o for o in ID_OPS) + f", not ${c.op}",
                field=f"filter.{id_column}",
            )
    return [c for c in conditions if c.column != id_column], ids


def _is_num(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _key(v: Any) -> Any:
    """Dictionary key of a value: True and 1 must stay distinct; unhashable values go by repr."""
    try:
        hash(v)
    except TypeError:
        return ("repr", repr(v))
    return (type(v) is bool, v)


class _Coded:
    """A dictionary-encoded column: int32 codes per position (-1 = null) + the distinct values.

    Equality and membership filters compare int codes (vectorised); ordering filters evaluate
    each *distinct* value once in Python and broadcast through the codes.
    """

    __slots__ = ("codes", "values", "lookup")

    def __init__(self, cap: int) -> None:
        self.codes = np.full(cap, -1, dtype=np.int32)
        self.values: list[Any] = []
        self.lookup: dict[Any, int] = {}

    def code(self, v: Any) -> int:
        if v is None:
            return -1
        k = _key(v)
        c = self.lookup.get(k)
        if c is None:
            c = self.lookup[k] = len(self.values)
            self.values.append(v)
        return c

    def find(self, v: Any) -> int | None:
        return -1 if v is None else self.lookup.get(_key(v))


class AttributeColumns:
    """Per-position attribute storage, grown by doubling: float64 arrays (NaN = null) for
    numeric columns, dictionary-coded columns otherwise. Filters evaluate vectorised."""

    def __init__(self) -> None:
        self._cols: dict[str, np.ndarray | _Coded] = {}
        self._size = 0  # number of positions in use
        self._cap = 0

    @property
    def columns(self) -> list[str]:
        return list(self._cols)

    def _grow(self, need: int) -> None:
        if need <= self._cap:
            return
        cap = max(need, self._cap * 2, 1024)
        for name, col in self._cols.items():
            if isinstance(col, _Coded):
                codes = np.full(cap, -1, dtype=np.int32)
                codes[: self._size] = col.codes[: self._size]
                col.codes = codes
            else:
                new = np.full(cap, np.nan)
                new[: self._size] = col[: self._size]
                self._cols[name] = new
        self._cap = cap

    def append(self, rows: Sequence[Mapping[str, Any]] | None, count: int) -> None:
        """Add ``count`` positions; ``rows`` (same length) holds their attributes, or None."""
        start = self._size
        self._grow(start + count)
        self._size = start + count
        if not rows:
            return
        names = list(dict.fromkeys(k for r in rows for k in r))
        self._fill(start, count, {name: [r.get(name) for r in rows] for name in names})

    def append_columns(self, columns: Mapping[str, Sequence[Any]], count: int) -> None:
        """Add ``count`` positions whose attributes are given column-wise (same lengths)."""
        start = self._size
        self._grow(start + count)
        self._size = start + count
        self._fill(start, count, columns)

    def _fill(self, start: int, count: int, columns: Mapping[str, Any]) -> None:
        for name, values in columns.items():
            # Column-wise fast paths (a snapshot load of 1M rows): float64 arrays (NaN = null) and
            # dictionary-encoded strings skip the per-value checks.
            if isinstance(values, EncodedColumn):
                col = self._cols.get(name)
                if col is None or isinstance(col, _Coded):
                    col = self._cols.setdefault(name, _Coded(self._cap))
                    assert isinstance(col, _Coded)
                    remap = np.array([col.code(v) for v in values.values] + [-1], dtype=np.int32)
                    col.codes[start : start + count] = remap[values.codes]  # code -1 picks the -1 slot
                    continue
                values = [None if c < 0 else values.values[c] for c in values.codes.tolist()]
            elif isinstance(values, np.ndarray) and values.dtype == np.float64:
                col = self._cols.get(name)
                if col is None or not isinstance(col, _Coded):
                    col = self._cols.setdefault(name, np.full(self._cap, np.nan))
                    assert isinstance(col, np.ndarray)
                    col[start : start + count] = values
                    continue
                values = [None if np.isnan(v) else _num_out(v) for v in values]
            numeric = all(v is None or _is_num(v) for v in values)
            col = self._cols.get(name)
            if col is None:
                col = self._cols[name] = np.full(self._cap, np.nan) if numeric else _Coded(self._cap)
            elif not isinstance(col, _Coded) and not numeric:
                # A non-number arrived in a numeric column: re-encode the column as values.
                coded = _Coded(self._cap)
                coded.codes[:start] = [coded.code(None if np.isnan(x) else _num_out(x)) for x in col[:start]]
                col = self._cols[name] = coded
            if isinstance(col, _Coded):
                col.codes[start : start + count] = [col.code(v) for v in values]
            else:
                col[start : start + count] = [np.nan if v is None else float(v) for v in values]

    def get(self, pos: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, col in self._cols.items():
            if isinstance(col, _Coded):
                c = int(col.codes[pos])
                out[name] = None if c < 0 else col.values[c]
            else:
                v = col[pos]
                out[name] = None if np.isnan(v) else _num_out(v)
        return out

    def get_many(self, positions: Sequence[int]) -> list[dict[str, Any]]:
        """``[get(p) for p in positions]`` with one numpy take per column (a re-rank's ~150 hits)."""
        out: list[dict[str, Any]] = [{} for _ in positions]
        idx = np.asarray(positions, dtype=np.int64)
        for name, col in self._cols.items():
            if isinstance(col, _Coded):
                vals = col.values
                for d, c in zip(out, col.codes[idx].tolist()):
                    d[name] = None if c < 0 else vals[c]
            else:
                for d, v in zip(out, col[idx].tolist()):
                    d[name] = None if v != v else _num_out(v)  # v != v: NaN (null)
        return out

    def take(self, positions: np.ndarray) -> AttributeColumns:
        """A compacted copy holding only ``positions`` (in that order)."""
        new = AttributeColumns()
        new._size = new._cap = len(positions)
        for name, col in self._cols.items():
            if isinstance(col, _Coded):
                coded = _Coded(0)
                coded.codes = col.codes[positions].copy()
                coded.values, coded.lookup = list(col.values), dict(col.lookup)
                new._cols[name] = coded
            else:
                new._cols[name] = col[positions].copy()
        return new

    def mask(self, conditions: Sequence[Condition]) -> np.ndarray:
        """Bool array over positions ``[0, size)`` where every condition holds."""
        n = self._size
        out = np.ones(n, dtype=bool)
        for c in conditions:
            col = self._cols.get(c.column)
            if col is None:
                # The column was never set: every row is null there.
                out &= c.op in ("ne", "nin") or (c.op == "eq" and c.value is None) or (c.op == "in" and None in c.value)
            elif isinstance(col, _Coded):
                out &= _eval_coded(col, n, c)
            else:
                out &= _eval_num(col[:n], c)
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


def _eval_num(arr: np.ndarray, c: Condition) -> np.ndarray:
    op, v = c.op, c.value
    if op in ("in", "nin"):
        hit = np.isin(arr, [float(x) for x in v if _is_num(x)])
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


def _eval_coded(col: _Coded, n: int, c: Condition) -> np.ndarray:
    codes = col.codes[:n]
    op, v = c.op, c.value
    if op in ("eq", "ne", "in", "nin"):
        wanted = [v] if op in ("eq", "ne") else list(v)
        hits = {col.find(w) for w in wanted}
        if any(_is_num(w) for w in wanted):  # a mixed column: 1 and 1.0 are the same value
            hits |= {code for code, x in enumerate(col.values) if _is_num(x) and any(_same(x, w) for w in wanted)}
        hits.discard(None)
        if len(hits) == 1:
            hit = codes == hits.pop()  # the common equality filter: one vectorised compare
        elif hits:
            hit = np.isin(codes, np.fromiter(hits, dtype=np.int32, count=len(hits)))
        else:
            hit = np.zeros(n, dtype=bool)
        return hit if op in ("eq", "in") else ~hit

    def cmp(x: Any) -> bool:
        if isinstance(x, bool) or (type(x) is str) != (type(v) is str):
            return False
        try:
            return bool({"gt": x > v, "gte": x >= v, "lt": x < v, "lte": x <= v}[op])
        except TypeError:
            return False

    ok = np.fromiter((cmp(x) for x in col.values), dtype=bool, count=len(col.values))
    ok = np.append(ok, False)  # code -1 (null) indexes this last slot: never matches
    return ok[codes]
