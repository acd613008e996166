"""What a caller may touch beyond workspace and scope: the one entity a token is bound to.

A key created with ``--subject user_id=u0001`` (or a JWT whose subject claim maps to one) carries a
``Subject``. Serving checks every entity a call names against it, in one place, so REST, MCP and the
SDK refuse the same things: another entity is a 403 (MCP: ``isError``), and an omitted entity id
defaults to the subject's.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ForbiddenError, InvalidInputError
from .limits import ENTITY_ID_CHARS, INVISIBLE_CHARS

__all__ = ["Subject", "check_join_keys", "entity_id_value", "subject_entity_id"]

_INVISIBLE = re.compile(INVISIBLE_CHARS + "|[\t\n]")
_C0 = re.compile("[\x00-\x1f]")


@dataclass(frozen=True, slots=True)
class Subject:
    """The one entity a token may read or write: ``join_key=value``."""

    join_key: str
    value: str

    @classmethod
    def parse(cls, text: str, field: str = "subject") -> Subject:
        """``"user_id=u0001"`` -> ``Subject("user_id", "u0001")``; 400 naming ``field`` otherwise."""
        key, sep, value = text.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise InvalidInputError(
                f"a subject is JOIN_KEY=VALUE (for example user_id=u0001), got {text!r}", field=field
            )
        return cls(key, value)

    def __str__(self) -> str:
        return f"{self.join_key}={self.value}"


def check_join_keys(
    subject: Subject | None,
    join_keys: Mapping[str, Any],
    field: str = "join_keys",
    keyed_by: Collection[str] | None = None,
) -> None:
    """403 unless ``join_keys`` names the subject's entity (a request keyed otherwise reaches past it).

    ``keyed_by``: the join keys of what is read (a feature service's). A service not keyed by the
    subject's join key (item features, say) is refused too: an extra ``user_id`` the service ignores
    must not unlock it.
    """
    if subject is None:
        return
    if keyed_by is not None and subject.join_key not in keyed_by:
        raise ForbiddenError(
            f"this token is bound to {subject}; this feature service is not keyed by {subject.join_key!r}",
            field=field,
        )
    got = join_keys.get(subject.join_key)
    if got is None:
        raise ForbiddenError(
            f"this token is bound to {subject}; the request has no {subject.join_key!r} join key",
            field=f"{field}.{subject.join_key}",
        )
    if str(got) != subject.value:
        raise ForbiddenError(
            f"this token is bound to {subject}; it may not use {subject.join_key}={got}",
            field=f"{field}.{subject.join_key}",
        )


def subject_entity_id(subject: Subject | None, join_key: str, entity_id: Any, field: str = "entity_id") -> str:
    """The entity id a call runs for: ``entity_id``, or the subject's when omitted; 403 on another entity.

    ``join_key`` is the join key of the entity the call is about (the context service's, the view's).
    """
    if subject is None:
        if entity_id is None or str(entity_id) == "":
            raise InvalidInputError("entity_id is required", field=field)
        return str(entity_id)
    if join_key != subject.join_key:
        raise ForbiddenError(
            f"this token is bound to {subject}; entities keyed by {join_key!r} are out of its reach", field=field
        )
    if entity_id is None or str(entity_id) == "":
        return subject.value
    if str(entity_id) != subject.value:
        raise ForbiddenError(f"this token is bound to {subject}; it may not use {join_key}={entity_id}", field=field)
    return subject.value


def entity_id_value(
    raw: Any, join_key: str, int64: bool, field: str = "entity_id", *, erasure: bool = False
) -> tuple[str, str | int]:
    """(the id as text, the typed join-key value) of one entity a call names: the one rule of every verb
    (context, memories, forget). A string or an integer (never a bool), 1-ENTITY_ID_CHARS characters, not
    blank, no control or invisible characters; an int64 join key takes an integer. 400 naming ``field``.

    ``erasure``: only C0 controls are refused, so an id stored with zero-width or bidi characters can
    still be forgotten."""
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise InvalidInputError(f"{field} must be a string or an integer", field=field)
    text = str(raw)
    bad = (_C0 if erasure else _INVISIBLE).search(text)
    if not text.strip() or len(text) > ENTITY_ID_CHARS or bad:
        raise InvalidInputError(
            f"{field} must be 1-{ENTITY_ID_CHARS} characters without control characters", field=field
        )
    if not int64:
        return text, text
    try:
        return text, int(text)
    except ValueError:
        raise InvalidInputError(
            f"{field} must be an integer ({join_key} is int64), got {text!r}", field=field
        ) from None
