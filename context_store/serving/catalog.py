"""The catalog: every applied definition with its owner, tags, description and lineage, for people and agents.

``Catalog(definitions)`` is built once per registry version (``catalog_of``): one item per entity, source,
view, service and memory, the lineage graph between them (source -> view -> feature service -> context
service; embedding views, knowledge and memories feed context services) and the search index
(``catalog_search.py``). Entities are not lineage nodes: an item lists the entities it is keyed by.

The JSON shapes (``CatalogItem.to_dict``, ``describe_dict``, ``CatalogHit.to_dict``) are the contract of
``GET /v1/catalog*``, the MCP ``search_features`` tool and ``context-store list/describe/search --json``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..definitions import (
    ContextService,
    Definition,
    EmbeddingView,
    Entity,
    FeatureService,
    FeatureView,
    FileSource,
    Memory,
    RealtimeFeatureView,
    StreamSource,
)
from ..definitions.windows import format_duration
from ..errors import InvalidInputError, NotFoundError
from ..registry.plan import dtype_to_str
from ..vocab.json import to_jsonable

if TYPE_CHECKING:
    from ..registry.repo import RepoDefinitions
    from .catalog_search import CatalogIndex

__all__ = ["KINDS", "CatalogRef", "FeatureDoc", "CatalogItem", "CatalogHit", "Catalog", "catalog_of", "parse_tag"]

# The catalog's kinds, in listing order (and the order a bare name is resolved in when kinds share it).
KINDS = (
    "entity",
    "batch_source",
    "stream_source",
    "memory",
    "feature_view",
    "realtime_feature_view",
    "embedding_view",
    "knowledge",
    "feature_service",
    "context_service",
)
_RESOLVE_ORDER = (
    "feature_view",
    "realtime_feature_view",
    "embedding_view",
    "knowledge",
    "feature_service",
    "context_service",
    "memory",
    "stream_source",
    "batch_source",
    "entity",
)


def _kind(obj: Definition) -> str:
    return "batch_source" if isinstance(obj, FileSource) else obj.kind


@dataclass(frozen=True, slots=True)
class CatalogRef:
    kind: str
    name: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name}


@dataclass(frozen=True, slots=True)
class FeatureDoc:
    """A feature (or a column, a join key, an output field) of an item: name, type and what it is."""

    name: str
    dtype: str | None
    description: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "description": self.description}


@dataclass
class CatalogItem:
    kind: str
    name: str
    description: str
    owner: str | None
    tags: dict[str, str]
    entities: list[str]
    upstream: list[CatalogRef] = field(default_factory=list)
    downstream: list[CatalogRef] = field(default_factory=list)
    features: list[FeatureDoc] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)
    lineage: list[CatalogRef] = field(default_factory=list)  # the full chain, upstream-most first

    @property
    def ref(self) -> CatalogRef:
        return CatalogRef(self.kind, self.name)

    def to_dict(self) -> dict[str, Any]:
        """The ``Item`` of the contract (what ``list`` and ``search`` return)."""
        return {
            "kind": self.kind,
            "name": self.name,
            "description": self.description,
            "owner": self.owner,
            "tags": dict(self.tags),
            "entities": list(self.entities),
            "upstream": [r.to_dict() for r in self.upstream],
            "downstream": [r.to_dict() for r in self.downstream],
        }

    def describe_dict(self) -> dict[str, Any]:
        """``Item`` + spec, features and the full lineage chain (``describe``)."""
        return {
            **self.to_dict(),
            "spec": self.spec,
            "features": [f.to_dict() for f in self.features],
            "lineage": [[r.kind, r.name] for r in self.lineage],
        }


@dataclass(frozen=True, slots=True)
class CatalogHit:
    item: CatalogItem
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.item.to_dict(), "score": round(self.score, 4)}


def parse_tag(tag: str | None) -> tuple[str, str | None] | None:
    """``"team=fraud"`` -> ("team", "fraud"); ``"pii"`` -> ("pii", None): the tag is present, any value."""
    if tag is None:
        return None
    if not isinstance(tag, str) or not tag.strip() or tag.startswith("="):
        raise InvalidInputError(f"tag must be KEY or KEY=VALUE, got {tag!r}", field="tag")
    key, sep, value = tag.partition("=")
    return (key.strip(), value.strip() if sep else None)


def _check_kind(kind: str | None) -> str | None:
    if kind is not None and kind not in KINDS:
        raise InvalidInputError(f"unknown kind {kind!r}; one of: {', '.join(KINDS)}", field="kind")
    return kind


class Catalog:
    """Every applied definition as a ``CatalogItem``, with lineage; built from ``RepoDefinitions``."""

    def __init__(self, defs: RepoDefinitions) -> None:
        self.definitions = defs
        self._objects: dict[CatalogRef, Definition] = {}
        for obj in _all_objects(defs):
            self._objects.setdefault(CatalogRef(_kind(obj), obj.name), obj)
        edges = list(_edges(defs, self._objects))
        up: dict[CatalogRef, list[CatalogRef]] = {r: [] for r in self._objects}
        down: dict[CatalogRef, list[CatalogRef]] = {r: [] for r in self._objects}
        for a, b in edges:  # a feeds b
            if a in up and b in up and a not in up[b]:
                up[b].append(a)
                down[a].append(b)
        order = {k: i for i, k in enumerate(KINDS)}
        refs = sorted(self._objects, key=lambda r: (order[r.kind], r.name))
        self._items: dict[CatalogRef, CatalogItem] = {}
        for r in refs:
            obj = self._objects[r]
            self._items[r] = CatalogItem(
                kind=r.kind,
                name=r.name,
                description=obj.description,
                owner=obj.owner,
                tags=dict(obj.tags),
                entities=_entities(obj),
                upstream=up[r],
                downstream=down[r],
                features=_features(obj, defs),
                spec=to_jsonable(obj.spec()),
                lineage=_chain(r, up, down),
            )
        self._index: CatalogIndex | None = None
        self._index_lock = threading.Lock()

    def items(self, kind: str | None = None, tag: str | None = None) -> list[CatalogItem]:
        """Every item, or those of ``kind`` and/or carrying ``tag`` (``KEY`` or ``KEY=VALUE``)."""
        _check_kind(kind)
        want = parse_tag(tag)
        out = []
        for item in self._items.values():
            if kind is not None and item.kind != kind:
                continue
            if want is not None:
                key, value = want
                if key not in item.tags or (value is not None and item.tags[key] != value):
                    continue
            out.append(item)
        return out

    def get(self, name: str, kind: str | None = None) -> CatalogItem:
        """The item named ``name`` (of ``kind`` when given; else views first, then services, sources, entities)."""
        _check_kind(kind)
        for k in (kind,) if kind else _RESOLVE_ORDER:
            item = self._items.get(CatalogRef(k, name))
            if item is not None:
                return item
        import difflib

        names = sorted({r.name for r in self._items if kind is None or r.kind == kind})
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        what = kind.replace("_", " ") if kind else "definition"
        raise NotFoundError(f"no {what} named {name!r} in the catalog{hint}", field="name")

    @property
    def index(self) -> CatalogIndex:
        """The search index (item texts embedded on first search, then kept with this catalog)."""
        if self._index is None:
            from .catalog_search import CatalogIndex

            with self._index_lock:
                if self._index is None:
                    self._index = CatalogIndex(list(self._items.values()), self.definitions)
        return self._index

    def search(self, query: str, k: int = 10) -> list[CatalogHit]:
        return self.index.search(query, k)


# -- building ---------------------------------------------------------------------------------------
def _all_objects(defs: RepoDefinitions) -> Iterable[Definition]:
    yield from defs.entities.values()
    for src in defs.sources.values():
        yield src
        if isinstance(src, StreamSource) and src.batch_source is not None:
            yield src.batch_source  # its history, listed even when written inline
    yield from defs.feature_views.values()
    yield from defs.realtime_views.values()
    yield from defs.embedding_views.values()
    yield from defs.knowledge.values()
    yield from defs.feature_services.values()
    yield from defs.context_services.values()


def _ref(obj: Definition) -> CatalogRef:
    return CatalogRef(_kind(obj), obj.name)


def _edges(defs: RepoDefinitions, objects: dict[CatalogRef, Definition]) -> Iterable[tuple[CatalogRef, CatalogRef]]:
    """(upstream, downstream) pairs: what each object reads from."""
    for obj in objects.values():
        me = _ref(obj)
        if isinstance(obj, StreamSource) and obj.batch_source is not None:
            yield _ref(obj.batch_source), me
        elif isinstance(obj, (FeatureView, EmbeddingView)):
            yield _ref(obj.source), me
        elif isinstance(obj, RealtimeFeatureView):
            for fv in obj.feature_view_sources:
                yield _ref(fv), me
        elif isinstance(obj, FeatureService):
            for view in obj.views:
                yield _ref(view), me
        elif isinstance(obj, ContextService):
            if obj.feature_service is not None:
                yield _ref(obj.feature_service), me
            if obj.recent_events is not None:
                yield _ref(obj.recent_events[0]), me
            if obj.similar is not None:
                yield _ref(obj.similar[0]), me
            if obj.knowledge is not None:
                yield _ref(obj.knowledge[0]), me
            if obj.memories:  # the memory of its entity (serving.memory): agents' notes in the context
                for src in defs.sources.values():
                    if isinstance(src, Memory) and src.entity.name == obj.entity.name:
                        yield _ref(src), me


def _chain(
    me: CatalogRef, up: dict[CatalogRef, list[CatalogRef]], down: dict[CatalogRef, list[CatalogRef]]
) -> list[CatalogRef]:
    """Everything upstream of ``me``, ``me`` and everything downstream, each object after all it reads from
    (a topological order; ties in catalog kind order, then by name)."""

    def reach(nxt: dict[CatalogRef, list[CatalogRef]]) -> set[CatalogRef]:
        seen: set[CatalogRef] = set()
        stack = [me]
        while stack:
            for n in nxt.get(stack.pop(), []):
                if n not in seen and n != me:
                    seen.add(n)
                    stack.append(n)
        return seen

    nodes = reach(up) | {me} | reach(down)
    order = {k: i for i, k in enumerate(KINDS)}
    pending = {n: sum(1 for u in up.get(n, []) if u in nodes) for n in nodes}
    out: list[CatalogRef] = []
    ready = sorted((n for n, c in pending.items() if c == 0), key=lambda r: (order[r.kind], r.name))
    while ready:
        n = ready.pop(0)
        out.append(n)
        for d in down.get(n, []):
            if d in pending:
                pending[d] -= 1
                if pending[d] == 0:
                    ready.append(d)
                    ready.sort(key=lambda r: (order[r.kind], r.name))
    return out


def _entities(obj: Definition) -> list[str]:
    if isinstance(obj, Entity):
        return [obj.name]
    if isinstance(obj, (FeatureView, EmbeddingView)):
        return [e.name for e in obj.entities]
    if isinstance(obj, (Memory, ContextService)):
        return [obj.entity.name]
    if isinstance(obj, RealtimeFeatureView):
        return list(dict.fromkeys(e.name for v in obj.feature_view_sources for e in v.entities))
    if isinstance(obj, FeatureService):
        names: list[str] = []
        for v in obj.views:
            for e in _entities(v):
                if e not in names:
                    names.append(e)
        return names
    return []


def _function(fn: str, n: int | None) -> str:
    return (fn.replace("_n", f"_{n}") if n is not None else fn).replace("_", " ")


def _features(obj: Definition, defs: RepoDefinitions) -> list[FeatureDoc]:
    types = defs.feature_types.get(obj.name, {})

    def typed(name: str) -> str | None:
        t = types.get(name)
        return dtype_to_str(t) if t is not None else None

    if isinstance(obj, Entity):
        return [FeatureDoc(k.name, dtype_to_str(k.dtype), "join key") for k in obj.join_key_fields]
    if isinstance(obj, FeatureView):
        if obj.aggregations:
            return [
                FeatureDoc(
                    a.output_name,
                    typed(a.output_name),
                    f"{_function(a.function, a.n)} of {a.column} over {format_duration(a.window)}",  # type: ignore[arg-type]
                )
                for a in obj.aggregations
            ]
        return [FeatureDoc(f.name, typed(f.name) or dtype_to_str(f.dtype), "") for f in obj.features_in]
    if isinstance(obj, RealtimeFeatureView):
        return [FeatureDoc(f.name, dtype_to_str(f.dtype), "computed at request time") for f in obj.output]
    if isinstance(obj, FeatureService):
        out = []
        for sel in obj.selections:
            vt = defs.feature_types.get(sel.view.name, {})
            for n in sel.features:
                t = vt.get(n)
                out.append(FeatureDoc(f"{sel.view.name}.{n}", dtype_to_str(t) if t else None, sel.view.description))
        return out
    if isinstance(obj, ContextService):
        return _features(obj.feature_service, defs) if obj.feature_service is not None else []
    if isinstance(obj, EmbeddingView):
        from ..embedders import embedder_dim

        dim = embedder_dim(obj.embedder)
        vec = FeatureDoc("embedding", f"embedding[{dim}]" if dim else None, f"{obj.embedder} of {obj.text}")
        return [vec, *(FeatureDoc(a, None, "attribute") for a in obj.attributes)]
    if isinstance(obj, (FileSource, StreamSource)):
        return [FeatureDoc(f.name, dtype_to_str(f.dtype), "column") for f in obj.schema or ()]
    return []  # knowledge: documents, no typed fields


# -- one catalog per applied version ----------------------------------------------------------------
_CACHE: dict[int, tuple[RepoDefinitions, Catalog]] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 16  # workspaces a server holds at once; an older version's catalog is dropped


def catalog_of(defs: RepoDefinitions) -> Catalog:
    """The catalog of these definitions (the same object until the registry version changes: a refresh
    loads new ``RepoDefinitions``), so item embeddings are computed once per version."""
    with _CACHE_LOCK:
        hit = _CACHE.get(id(defs))
        if hit is not None and hit[0] is defs:
            return hit[1]
    cat = Catalog(defs)
    with _CACHE_LOCK:
        hit = _CACHE.get(id(defs))
        if hit is not None and hit[0] is defs:
            return hit[1]
        while len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[id(defs)] = (defs, cat)
    return cat
