"""JSON conversion, one place for the options: what stored records and API bodies are written with,
and the conversion of Python/numpy values to JSON-able ones for plain ``json`` output (CLI).

``context_store.serving.context_text.jsonable`` stays separate on purpose: it also cleans and
truncates text for prompts (a rendering concern, not an encoding).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import orjson

__all__ = ["API_OPTIONS", "RECORD_OPTIONS", "api_default", "dumps_api", "dumps_record", "to_jsonable"]

# Stored records (recent events, client request bodies): naive datetimes are UTC, numpy allowed.
RECORD_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_SERIALIZE_NUMPY
# HTTP responses: as records, plus ``Z`` for UTC and non-string dict keys.
API_OPTIONS = RECORD_OPTIONS | orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS


def api_default(o: Any) -> Any:
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if hasattr(o, "item"):  # numpy / pyarrow scalars
        return o.item()
    if hasattr(o, "as_py"):
        return o.as_py()
    return str(o)


def dumps_api(obj: Any) -> bytes:
    return orjson.dumps(obj, default=api_default, option=API_OPTIONS)


def dumps_record(obj: Any) -> bytes:
    """One stored record (anything orjson cannot encode becomes its ``str``)."""
    return orjson.dumps(obj, default=str, option=RECORD_OPTIONS)


def to_jsonable(v: Any) -> Any:
    """Datetimes/dates as ISO-8601, numpy as Python, NaN as None, tuples as lists, keys as str."""
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, dict):
        return {str(k): to_jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_jsonable(x) for x in v]
    if hasattr(v, "tolist"):  # numpy scalars/arrays
        return to_jsonable(v.tolist())
    if isinstance(v, float) and v != v:
        return None
    return v
