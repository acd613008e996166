"""Feature data types: a closed vocabulary shared by definitions, stores and the wire."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa

__all__ = ["DType", "Int64", "Float64", "String", "Bool", "Timestamp", "Array", "Embedding", "from_arrow"]


@dataclass(frozen=True)
class DType:
    """A scalar type. ``name`` is the Tecton wire name (``int64``, ``float64``, ...)."""

    name: str

    def to_arrow(self) -> pa.DataType:
        return _SCALAR_ARROW[self.name]

    def accepts(self, value: Any) -> bool:
        """True when a Python value can be stored as this type without loss."""
        if value is None:
            return True
        if self.name == "int64":
            return isinstance(value, int) and not isinstance(value, bool)
        if self.name == "float64":
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.name == "string":
            return isinstance(value, str)
        if self.name == "bool":
            return isinstance(value, bool)
        if self.name == "timestamp":
            return isinstance(value, (datetime, str, int, float)) and not isinstance(value, bool)
        return False

    @property
    def is_numeric(self) -> bool:
        return self.name in ("int64", "float64")

    def describe(self) -> dict[str, Any]:
        """The Tecton ``dataType`` object."""
        return {"type": self.name}

    def __repr__(self) -> str:
        return f"cs.{_REPR[self.name]}"


@dataclass(frozen=True)
class Array(DType):
    element: DType = None  # type: ignore[assignment]

    def __init__(self, element: DType) -> None:
        if not isinstance(element, DType):
            raise TypeError(f"Array element must be a cs dtype, got {element!r}")
        object.__setattr__(self, "name", "array")
        object.__setattr__(self, "element", element)

    def to_arrow(self) -> pa.DataType:
        return pa.list_(self.element.to_arrow())

    def accepts(self, value: Any) -> bool:
        return value is None or (isinstance(value, (list, tuple)) and all(self.element.accepts(v) for v in value))

    def describe(self) -> dict[str, Any]:
        return {"type": "array", "elementType": self.element.describe()}

    def __repr__(self) -> str:
        return f"cs.Array({self.element!r})"


@dataclass(frozen=True)
class Embedding(DType):
    """A fixed-size float32 vector."""

    dim: int = 0

    def __init__(self, dim: int) -> None:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
            raise TypeError(f"Embedding dim must be a positive int, got {dim!r}")
        object.__setattr__(self, "name", "embedding")
        object.__setattr__(self, "dim", dim)

    def to_arrow(self) -> pa.DataType:
        return pa.list_(pa.float32(), self.dim)

    def accepts(self, value: Any) -> bool:
        if value is None:
            return True
        try:
            return len(value) == self.dim and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
            )
        except TypeError:
            return False

    def describe(self) -> dict[str, Any]:
        return {"type": "array", "elementType": {"type": "float32"}, "length": self.dim}

    def __repr__(self) -> str:
        return f"cs.Embedding({self.dim})"


Int64 = DType("int64")
Float64 = DType("float64")
String = DType("string")
Bool = DType("bool")
Timestamp = DType("timestamp")

_SCALAR_ARROW = {
    "int64": pa.int64(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}
_REPR = {"int64": "Int64", "float64": "Float64", "string": "String", "bool": "Bool", "timestamp": "Timestamp"}


def from_arrow(t: pa.DataType) -> DType:
    """Map an Arrow type (e.g. of a file column) to a cs dtype."""
    if pa.types.is_integer(t):
        return Int64
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return Float64
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        return String
    if pa.types.is_boolean(t):
        return Bool
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return Timestamp
    if pa.types.is_fixed_size_list(t):
        return Embedding(t.list_size)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return Array(from_arrow(t.value_type))
    raise TypeError(f"unsupported Arrow type {t}")
