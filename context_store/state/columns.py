"""Events of one feature view in columnar form (the input of partials and raw-event tiles),
and the conversion of Arrow tables and timestamp columns into it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..definitions import Embedding
from ..errors import InvalidInputError

if TYPE_CHECKING:
    from .aggregations import AggPlan

__all__ = ["Columns", "columns_from_arrow", "ts_to_us"]


@dataclass
class Columns:
    """Events of one feature view in columnar form (the input of partials).

    ``num``: float64 values of numeric columns (garbage where invalid), ``valid``: masks,
    ``obj``: Python values (None = null) of columns used by object slots,
    ``emb``: float32 matrices of embedding columns.
    """

    ts: np.ndarray
    valid: dict[str, np.ndarray] = field(default_factory=dict)
    num: dict[str, np.ndarray] = field(default_factory=dict)
    obj: dict[str, list[Any]] = field(default_factory=dict)
    emb: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, idx: np.ndarray) -> Columns:
        """Rows at ``idx`` (an index array or boolean mask)."""
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        il = idx.tolist()
        return Columns(
            ts=self.ts[idx],
            valid={k: v[idx] for k, v in self.valid.items()},
            num={k: v[idx] for k, v in self.num.items()},
            obj={k: [v[i] for i in il] for k, v in self.obj.items()},
            emb={k: v[idx] for k, v in self.emb.items()},
        )

    @staticmethod
    def concat(parts: Sequence[Columns]) -> Columns:
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        return Columns(
            ts=np.concatenate([p.ts for p in parts]),
            valid={k: np.concatenate([p.valid[k] for p in parts]) for k in first.valid},
            num={k: np.concatenate([p.num[k] for p in parts]) for k in first.num},
            obj={k: [x for p in parts for x in p.obj[k]] for k in first.obj},
            emb={k: np.concatenate([p.emb[k] for p in parts]) for k in first.emb},
        )


def ts_to_us(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Any Arrow timestamp/date/int column -> int64 µs since epoch (UTC)."""
    t = col.type
    if pa.types.is_timestamp(t):
        if t.unit != "us":
            col = pc.cast(col, pa.timestamp("us", tz=t.tz))
        arr = pc.cast(col, pa.int64())
    elif pa.types.is_date(t):
        arr = pc.multiply(pc.cast(pc.cast(col, pa.timestamp("us")), pa.int64()), 1)
    else:
        arr = pc.cast(col, pa.int64())
    return np.asarray(arr.to_numpy(zero_copy_only=False) if hasattr(arr, "to_numpy") else arr, dtype=np.int64)


def columns_from_arrow(table: pa.Table, plan: AggPlan, ts_column: str) -> Columns:
    cols = Columns(ts=ts_to_us(table[ts_column]))
    for c in plan.columns:
        if c not in table.column_names:
            raise InvalidInputError(f"rows of feature view {plan.view.name!r} lack column {c!r}", field=c)
        arr = table[c]
        dt = plan.types[c]
        valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        cols.valid[c] = valid
        if isinstance(dt, Embedding):
            m = np.zeros((len(arr), dt.dim), dtype=np.float32)
            if valid.any():
                flat = pc.list_flatten(arr.filter(pa.array(valid))).to_numpy(zero_copy_only=False)
                m[valid] = np.asarray(flat, dtype=np.float32).reshape(-1, dt.dim)
            cols.emb[c] = m
            continue
        if dt.name == "timestamp":
            us = ts_to_us(arr.fill_null(0) if arr.null_count else arr)
            if c in plan.num_cols or dt.is_numeric:
                cols.num[c] = us.astype(np.float64)
            cols.obj[c] = [int(x) if v else None for x, v in zip(us.tolist(), valid.tolist())]
            continue
        if dt.is_numeric:
            filled = arr.fill_null(0) if arr.null_count else arr
            cols.num[c] = np.asarray(filled.to_numpy(zero_copy_only=False), dtype=np.float64)
        if c in plan.obj_cols:
            cols.obj[c] = arr.to_pylist()
    return cols
