"""Realtime feature views: Python computed at request time from request data and other features."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from .base import Definition
from .entity import Field
from .feature_view import FeatureSelection, FeatureView
from .sources import RequestSource

__all__ = ["RealtimeFeatureView", "realtime_feature_view"]


class RealtimeFeatureView(Definition):
    """Built by ``@cs.realtime_feature_view``. Calling it runs the user's function.

    The function takes one argument per source, in order: a dict of request fields for a
    ``RequestSource`` and a dict of feature values for a ``FeatureView``; it returns a dict
    with one value per ``output`` field.
    """

    kind = "realtime_feature_view"

    def __init__(
        self,
        fn: Callable[..., dict[str, Any]],
        sources: list[RequestSource | FeatureView | FeatureSelection],
        output: list[Field],
        name: str | None = None,
        description: str | None = None,
        tags: dict[str, str] | None = None,
        owner: str | None = None,
    ) -> None:
        doc = description or (fn.__doc__ or "").strip()
        self._init_common(name or getattr(fn, "__name__", "realtime"), doc, tags, owner)
        self.fn = fn
        if not isinstance(sources, (list, tuple)) or not sources:
            self.fail("sources must be a non-empty list of cs.RequestSource or cs.FeatureView")
        for s in sources:
            if not isinstance(s, (RequestSource, FeatureView, FeatureSelection)):
                self.fail(f"source {s!r} must be a cs.RequestSource or cs.FeatureView")
        self.sources = tuple(sources)
        if not isinstance(output, (list, tuple)) or not output or not all(isinstance(f, Field) for f in output):
            self.fail("output must be a non-empty list of cs.Field")
        self.output: tuple[Field, ...] = tuple(output)
        names = [f.name for f in output]
        if len(set(names)) != len(names):
            self.fail(f"duplicate output field in {names}")
        params: Mapping[str, inspect.Parameter]
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            params = {}
        if params and len(params) != len(self.sources):
            self.fail(f"function takes {len(params)} arguments but {len(self.sources)} sources are given")

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.output]

    @property
    def request_sources(self) -> list[RequestSource]:
        return [s for s in self.sources if isinstance(s, RequestSource)]

    @property
    def feature_view_sources(self) -> list[FeatureView]:
        return [
            s.view if isinstance(s, FeatureSelection) else s for s in self.sources if not isinstance(s, RequestSource)
        ]

    def __call__(self, *args: Any) -> dict[str, Any]:
        return self.fn(*args)

    def __getitem__(self, names: list[str]) -> FeatureSelection:
        return FeatureSelection(self, self.select(names, self.feature_names))

    def spec(self) -> dict[str, Any]:
        try:
            src = inspect.getsource(self.fn)
        except (OSError, TypeError):
            src = repr(self.fn)
        return {
            **super().spec(),
            "sources": [s.view.name if isinstance(s, FeatureSelection) else s.name for s in self.sources],
            "output": [f.spec() for f in self.output],
            "code_sha": hashlib.sha256(src.encode()).hexdigest()[:16],
        }


def realtime_feature_view(
    sources: list[RequestSource | FeatureView | FeatureSelection],
    output: list[Field],
    name: str | None = None,
    description: str | None = None,
    tags: dict[str, str] | None = None,
    owner: str | None = None,
) -> Callable[[Callable[..., dict[str, Any]]], RealtimeFeatureView]:
    """Decorator: ``@cs.realtime_feature_view(sources=[req, txn_stats], output=[...])``."""

    def wrap(fn: Callable[..., dict[str, Any]]) -> RealtimeFeatureView:
        return RealtimeFeatureView(fn, sources, output, name=name, description=description, tags=tags, owner=owner)

    return wrap
