"""Query parameters are part of a route's contract: one the route does not take is a 400 naming it.

Ignoring it would hide a caller's mistake (``?max_token=200`` would serve an untrimmed context).
``known_query_params`` is a router dependency (``APIRouter(dependencies=[KNOWN_QUERY_PARAMS])``):
it reads the parameters the matched route declares, so a new GET route is covered without a list.

Where it is not used, on purpose: the health probes (``/healthz``, ``/readyz``: a probe must fail
only when the service is unhealthy, whatever a load balancer appends), ``/metrics`` (scrapers may add
their own parameters), the OpenAPI pages and ``/mcp`` (the MCP SDK's transport).
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends
from starlette.requests import Request

from ..errors import InvalidInputError

__all__ = ["KNOWN_QUERY_PARAMS", "known_query_params", "check_query_params"]


def check_query_params(request: Request, allowed: frozenset[str] | set[str], route: str = "this route") -> None:
    """400 naming the first query parameter not in ``allowed``."""
    for name in request.query_params:
        if name not in allowed:
            takes = ", ".join(sorted(allowed)) or "no query parameters"
            raise InvalidInputError(f"unknown query parameter {name!r}; {route} takes: {takes}", field=name)


def _query_names(dependant: Any) -> list[str]:
    """The query parameters of a FastAPI route's dependant and of its sub-dependencies."""
    if dependant is None:
        return []
    names = [p.alias for p in dependant.query_params]
    for sub in dependant.dependencies:
        names += _query_names(sub)
    return names


async def known_query_params(request: Request) -> None:
    """Router dependency: on GET, a query parameter the matched route does not declare is a 400."""
    if request.method != "GET" or not request.query_params:
        return
    route = request.scope.get("route")
    # Walked per request (a handful of parameters; routes are not hashable to cache by).
    declared = frozenset(_query_names(getattr(route, "dependant", None)))
    check_query_params(request, declared, getattr(route, "path", "this route"))


KNOWN_QUERY_PARAMS = Depends(known_query_params)
