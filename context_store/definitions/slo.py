"""``expected_freshness`` of a view: the freshness SLO that ``context_store_view_freshness_slo_breached``,
``GET /v1/status/views`` and ``/readyz`` report against (docs/observability.md)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from .base import Definition
from .windows import parse_duration

__all__ = ["freshness_slo", "freshness_spec"]


def freshness_slo(owner: Definition, value: Any) -> timedelta | None:
    """``value`` (``"5m"``, a timedelta or None) as a positive timedelta; a DefinitionError naming ``owner``."""
    if value is None:
        return None
    try:
        return parse_duration(value, "expected_freshness")
    except ValueError as e:
        owner.fail(str(e))


def freshness_spec(slo: timedelta | None) -> dict[str, Any]:
    """The spec entry, only when set: registries applied before the parameter existed diff as unchanged."""
    return {} if slo is None else {"expected_freshness_s": slo.total_seconds()}
