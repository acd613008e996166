"""Entities and fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import DefinitionError
from .base import Definition, caller_location, check_name
from .dtypes import DType, String

__all__ = ["Field", "Entity"]


@dataclass(frozen=True)
class Field:
    """A named, typed column: ``cs.Field("amount", cs.Float64)``."""

    name: str
    dtype: DType

    def __post_init__(self) -> None:
        loc = caller_location()
        check_name(self.name, "field", loc)
        if not isinstance(self.dtype, DType):
            raise DefinitionError(
                f"field '{self.name}': dtype must be a cs dtype such as cs.Float64, got {self.dtype!r}",
                location=loc,
            )

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype.describe()}


class Entity(Definition):
    """A business object features are keyed by: ``cs.Entity("user", join_keys=["user_id"])``.

    Join keys given as strings are ``cs.String``; pass ``cs.Field`` for other key types.
    """

    kind = "entity"

    def __init__(
        self,
        name: str,
        join_keys: list[str | Field],
        description: str | None = None,
        tags: dict[str, str] | None = None,
        owner: str | None = None,
    ) -> None:
        self._init_common(name, description, tags, owner)
        if isinstance(join_keys, (str, Field)) or not isinstance(join_keys, (list, tuple)) or not join_keys:
            self.fail("join_keys must be a non-empty list of names or cs.Field")
        keys: list[Field] = []
        for k in join_keys:
            if isinstance(k, str):
                keys.append(Field(k, String))
            elif isinstance(k, Field):
                if k.dtype.name not in ("string", "int64"):
                    self.fail(f"join key '{k.name}' must be cs.String or cs.Int64, got {k.dtype!r}")
                keys.append(k)
            else:
                self.fail(f"join key {k!r} must be a name or cs.Field")
        names = [k.name for k in keys]
        if len(set(names)) != len(names):
            self.fail(f"duplicate join key in {names}")
        self.join_key_fields: tuple[Field, ...] = tuple(keys)

    @property
    def join_keys(self) -> list[str]:
        return [k.name for k in self.join_key_fields]

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "join_keys": [k.spec() for k in self.join_key_fields]}
