"""What every definition shares: a name and where it was written (for error messages)."""

from __future__ import annotations

import difflib
import inspect
import os
import re
from typing import Any, NoReturn

from ..errors import DefinitionError

__all__ = ["Definition", "caller_location", "check_name"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OWNER_CHARS = 256  # a team, a person or an email address
TAG_CHARS = 256


def caller_location() -> str:
    """``file:line`` of the first frame outside this package: where the user wrote the object."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            path = os.path.abspath(frame.f_code.co_filename)
            # "<string>" frames are generated code (dataclass __init__ of Aggregate/Field): skip them.
            if not path.startswith(_PKG_DIR + os.sep) and not frame.f_code.co_filename.startswith("<"):
                return f"{frame.f_code.co_filename}:{frame.f_lineno}"
            frame = frame.f_back
        return "<unknown>"
    finally:
        del frame


def check_name(name: Any, kind: str, location: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise DefinitionError(
            f"{kind} name {name!r} must be an identifier (letters, digits, underscore; at most 128)",
            location=location,
        )
    return name


def _check_owner(obj: Definition, owner: Any) -> str | None:
    """``owner``: None, or a one-line non-empty string (who to ask about this object: the catalog shows it)."""
    if owner is None:
        return None
    if not isinstance(owner, str):
        obj.fail(f"owner must be a string such as 'fraud-team@example.com', got {type(owner).__name__}")
    owner = owner.strip()
    if not owner or len(owner) > OWNER_CHARS or any(c in owner for c in "\r\n\t"):
        obj.fail(f"owner must be a non-empty single line of at most {OWNER_CHARS} characters, got {owner!r}")
    return owner


class Definition:
    """Base for registered objects. ``kind`` is used in plans and errors."""

    kind: str = "definition"
    name: str
    location: str
    description: str
    tags: dict[str, str]
    owner: str | None

    def _init_common(
        self, name: Any, description: str | None, tags: dict[str, str] | None, owner: str | None = None
    ) -> None:
        self.location = caller_location()
        self.name = check_name(name, self.kind, self.location)
        if description is not None and not isinstance(description, str):
            self.fail(f"description must be a string, got {type(description).__name__}")
        self.description = description or ""
        if tags is not None and not (
            isinstance(tags, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items())
        ):
            self.fail("tags must be a dict of str to str")
        self.tags = dict(tags or {})
        for k, v in self.tags.items():
            if not k or len(k) > TAG_CHARS or len(v) > TAG_CHARS:
                self.fail(f"tag {k!r}: keys must be non-empty and keys and values at most {TAG_CHARS} characters")
        self.owner = _check_owner(self, owner)

    def fail(self, message: str) -> NoReturn:
        """Raise a DefinitionError naming this object and where it was defined."""
        raise DefinitionError(message, location=self.location, obj=f"{self.kind} '{getattr(self, 'name', '?')}'")

    def select(self, names: list[str] | str, available: list[str]) -> tuple[str, ...]:
        """Check a slice ``view[["a", "b"]]``; a typo is reported at the slice's own line, not the view's."""
        if isinstance(names, str):
            names = [names]
        for n in names:
            if n not in available:
                close = difflib.get_close_matches(str(n), available, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise DefinitionError(
                    f"no feature {n!r}{hint}; it has {available} (the {self.kind.replace('_', ' ')} is defined at "
                    f"{self.location})",
                    location=caller_location(),
                    obj=f"{self.kind} '{self.name}'",
                )
        return tuple(names)

    def spec(self) -> dict[str, Any]:
        """A JSON-able description used by the registry to diff versions (subclasses extend)."""
        out = {"kind": self.kind, "name": self.name, "description": self.description, "tags": self.tags}
        if self.owner is not None:  # only when set: an upgrade must not show every applied object as changed
            out["owner"] = self.owner
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
