"""``get_user_context``: everything an agent should know about one entity, in one call.

A context service (``cs.ContextService``) names what goes in: a feature service's values, the
last N events of a stream source, the top-k items similar to the entity's interest vector (its
``interest`` feature, else the mean vector of the items in its recent events) and, for a query,
knowledge chunks. Every value carries provenance (feature view, effective time,
age) and the whole is rendered as compact text for a prompt, trimmed by priority to a token
budget counted with the MiniLM tokenizer (ships offline, no network).

``as_of=t`` rebuilds the context as it was at ``t`` from the offline store (point-in-time
features via ``get_training_data`` with their effective times, events strictly before ``t``, the
interest vector of that time, the items the catalogue held at ``t``; item vectors are the current
ones) so a decision can be replayed. A replay reads only the entity's rows (``retrieval.py``,
``compute/training.py``: a filter on the join key), so it costs about as much with a long log.

Similar items (``retrieval.py``) leave out the items the entity has seen, and may be re-ranked by
live features of the items (``cs.Rerank``) with an MMR diversity step.

Free text from users and documents is *data*: control characters are stripped, lengths are
bounded, and the rendered text says so in its first line.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..access import Subject, entity_id_value, subject_entity_id
from ..definitions import Rerank
from ..errors import InvalidInputError, NotFoundError
from ..limits import CONTEXT_QUERY_CHARS, MAX_TOKENS, SIMILAR_K
from ..types import KnowledgeChunk, SimilarItem
from ..vocab.time import EPOCH, checked_seconds_us, checked_utc, parse_iso, us_to_datetime
from .context_events import offline_row_time
from .context_text import MAX_TEXT_CHARS, clean_text, count_tokens, iso, jsonable, render
from .memory import context_memories

if TYPE_CHECKING:
    from ..definitions import ContextService
    from ..memory_types import MemoryRecord
    from .store import ContextStore

__all__ = [
    "FeatureValue",
    "RecentEvent",
    "UserContext",
    "get_user_context",
    "clean_text",
    "jsonable",
    "count_tokens",
    "iso",
    "parse_time",
    "MAX_TEXT_CHARS",
]


def parse_time(value: datetime | str | int | float | None, field_name: str = "as_of") -> datetime | None:
    """ISO-8601 string, aware/naive datetime (naive = UTC) or epoch seconds -> aware UTC datetime."""
    if value is None:
        return None
    try:
        if isinstance(value, datetime):
            t = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            return us_to_datetime(checked_seconds_us(value, field_name))
        elif isinstance(value, str):
            t = parse_iso(value)
        else:
            raise TypeError
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"{field_name} must be an ISO-8601 time such as '2026-01-31T12:00:00Z', got {value!r:.80}",
            field=field_name,
        ) from None
    return checked_utc(t, field_name)  # a 400 naming the field, not an OverflowError, for far offsets


# -- result types ------------------------------------------------------------------------------
@dataclass(slots=True)
class FeatureValue:
    """One feature value with its provenance."""

    name: str  # "view.feature"
    value: Any
    view: str
    status: str  # PRESENT | MISSING_DATA | NOT_MATERIALIZED (types.py)
    effective_time: datetime | None
    age_ms: int | None  # served_at - effective_time

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": jsonable(self.value),
            "view": self.view,
            "status": self.status,
            "effective_time": iso(self.effective_time) if self.effective_time else None,
            "age_ms": self.age_ms,
        }


@dataclass(slots=True)
class RecentEvent:
    timestamp: datetime
    age_ms: int
    values: dict[str, Any]  # the event's columns (untrusted: they came from users/clients)

    def to_dict(self) -> dict[str, Any]:
        return {"timestamp": iso(self.timestamp), "age_ms": self.age_ms, "values": jsonable(self.values)}


@dataclass(slots=True)
class UserContext:
    """What ``get_user_context`` returns. ``text`` is the prompt-ready rendering."""

    entity_id: str
    context_service: str
    join_keys: dict[str, Any]
    served_at: datetime  # the time the context is valid for (request time, or as_of)
    as_of: datetime | None  # set when rebuilt from the offline store
    features: list[FeatureValue]
    recent_events_source: str | None
    recent_events: list[RecentEvent]
    similar_view: str | None
    similar: list[SimilarItem]
    knowledge_name: str | None
    knowledge: list[KnowledgeChunk]
    text: str
    tokens: int | None  # MiniLM tokens of ``text`` (counted when max_tokens is set)
    max_tokens: int | None
    omitted: dict[str, int] = field(default_factory=dict)  # section -> items left out of ``text``
    notes: list[str] = field(default_factory=list)  # parts skipped, and why
    timings_ms: dict[str, float] = field(default_factory=dict)
    memory_name: str | None = None  # the cs.Memory of the entity (docs/memory.md)
    memories: list[MemoryRecord] = field(default_factory=list)  # untrusted: written by users or agents
    similar_label: str | None = None  # the attribute naming a similar item in ``text`` (the view's text column)

    @property
    def feature_values(self) -> dict[str, Any]:
        return {f.name: f.value for f in self.features}

    def to_dict(self) -> dict[str, Any]:
        return {
            "entity_id": self.entity_id,
            "context_service": self.context_service,
            "join_keys": jsonable(self.join_keys),
            "served_at": iso(self.served_at),
            "as_of": iso(self.as_of) if self.as_of else None,
            "features": {f.name: jsonable(f.value) for f in self.features},
            "provenance": {
                f.name: {k: v for k, v in f.to_dict().items() if k not in ("name", "value")} for f in self.features
            },
            "recent_events_source": self.recent_events_source,
            "recent_events": [e.to_dict() for e in self.recent_events],
            "similar_view": self.similar_view,
            "similar": [
                {
                    "entity_id": clean_text(str(i.entity_id), 256),
                    "score": jsonable(i.score),
                    "attributes": jsonable(i.attributes),
                    "rank_score": jsonable(i.rank_score),  # None unless re-ranked (cs.Rerank)
                }
                for i in self.similar
            ],
            "knowledge_name": self.knowledge_name,
            "knowledge": [
                {
                    "text": clean_text(c.text, MAX_TEXT_CHARS, keep_newlines=True),
                    "score": jsonable(c.score),
                    "source": clean_text(c.source, 512),
                    "start": c.start,
                    "end": c.end,
                    "chunk_id": c.chunk_id,
                }
                for c in self.knowledge
            ],
            "memory_name": self.memory_name,
            "memories": [memory_dict(m, self.served_at) for m in self.memories],
            "text": self.text,
            "tokens": self.tokens,
            "max_tokens": self.max_tokens,
            "omitted": dict(self.omitted),
            "notes": list(self.notes),
        }


# -- the call ------------------------------------------------------------------------------------
def get_user_context(
    store: ContextStore,
    entity_id: str | None,
    *,
    context_service: str | None = None,
    max_tokens: int | None = None,
    as_of: datetime | str | None = None,
    query: str | None = None,
    request_time: datetime | None = None,
    subject: Subject | None = None,
    k: int | None = None,
    filter: Mapping[str, Any] | None = None,
    rerank: Rerank | None = None,
) -> UserContext:
    """Build the context of one entity; see the module docstring. ``query`` adds knowledge chunks;
    ``k``, ``filter`` and ``rerank`` override the service's similar-items options for this call."""
    svc = _resolve_service(store, context_service)
    if subject is not None or entity_id is None:  # the subject's own entity only (None: the subject's)
        entity_id = subject_entity_id(subject, svc.entity.join_keys[0], entity_id)
    join_keys = _join_keys(svc, entity_id)
    if max_tokens is not None and max_tokens not in MAX_TOKENS:
        raise InvalidInputError(f"max_tokens must be an int in {MAX_TOKENS}, got {max_tokens!r}", field="max_tokens")
    if query is not None and (not isinstance(query, str) or not query.strip() or len(query) > CONTEXT_QUERY_CHARS):
        raise InvalidInputError(
            f"query must be a non-empty string of at most {CONTEXT_QUERY_CHARS} characters", field="query"
        )
    if k is not None and k not in SIMILAR_K:
        raise InvalidInputError(f"k must be an integer in {SIMILAR_K}, got {k!r}", field="k")
    if filter is not None and not isinstance(filter, Mapping):
        raise InvalidInputError("filter must be an object of {attribute: value | {op: value}}", field="filter")
    if rerank is not None and not isinstance(rerank, Rerank):
        raise InvalidInputError("rerank must be a cs.Rerank", field="rerank")
    now = datetime.now(UTC)
    replay = parse_time(as_of, "as_of")
    if replay is not None and replay > now + timedelta(seconds=1):
        raise InvalidInputError(f"as_of {iso(replay)} is in the future; a context can only be replayed", field="as_of")
    served_at = replay or (parse_time(request_time, "request_time") if request_time is not None else now)
    assert served_at is not None
    timings: dict[str, float] = {}
    notes: list[str] = []

    t0 = time.perf_counter()
    features: list[FeatureValue] = []
    raw: dict[str, Any] = {}
    if svc.feature_service is not None:
        features = (_features_as_of if replay else _features_online)(store, svc, join_keys, served_at)
        raw = {f.name: f.value for f in features}
    t1 = time.perf_counter()
    timings["features"] = (t1 - t0) * 1e3

    events: list[RecentEvent] = []
    source_name = None
    if svc.recent_events is not None:
        source, n = svc.recent_events
        source_name = source.name
        rows = _recent_events(store, source, join_keys, n, served_at, from_offline=replay is not None, notes=notes)
        cols = [f.name for f in source.schema or ()]
        events = [_event(r, source.timestamp_field, cols, served_at) for r in rows]
    t2 = time.perf_counter()
    timings["recent_events"] = (t2 - t1) * 1e3

    similar: list[SimilarItem] = []
    similar_view = None
    if svc.similar_options is not None:
        similar_view = svc.similar_options.view.name
        similar = _similar(store, svc, join_keys, raw, events, served_at, replay, notes, k, filter, rerank)
    t3 = time.perf_counter()
    timings["similar"] = (t3 - t2) * 1e3

    chunks: list[KnowledgeChunk] = []
    knowledge_name = None
    if svc.knowledge is not None:
        kb, k = svc.knowledge
        knowledge_name = kb.name
        if query is not None:
            chunks = list(store.search_knowledge(kb.name, query, k=k).chunks)
        else:
            notes.append("knowledge: skipped, no query given")
    t4 = time.perf_counter()
    timings["knowledge"] = (t4 - t3) * 1e3
    memory_name, memories, memory_notes = context_memories(
        store, svc.entity, join_keys, svc.memories, query, served_at, replay is not None
    )
    notes += memory_notes
    timings["memories"] = (time.perf_counter() - t4) * 1e3

    ctx = UserContext(
        entity_id=str(entity_id),
        context_service=svc.name,
        join_keys=join_keys,
        served_at=served_at,
        as_of=replay,
        features=features,
        recent_events_source=source_name,
        recent_events=events,
        similar_view=similar_view,
        similar=similar,
        knowledge_name=knowledge_name,
        knowledge=chunks,
        text="",
        tokens=None,
        max_tokens=max_tokens,
        notes=notes,
        timings_ms=timings,
        memory_name=memory_name,
        memories=memories,
        similar_label=svc.similar_options.view.text if svc.similar_options is not None else None,
    )
    ctx.text, ctx.tokens, ctx.omitted = render(ctx, max_tokens, svc.budget)
    timings["render"] = (time.perf_counter() - t4) * 1e3 - timings["memories"]
    return ctx


def _resolve_service(store: ContextStore, name: str | None) -> ContextService:
    defs = store.definitions
    if name is None:
        if not defs.context_services:
            raise NotFoundError("no context service is defined in this workspace", field="context_service")
        return next(iter(defs.context_services.values()))
    if not isinstance(name, str):
        raise InvalidInputError("context_service must be a string", field="context_service")
    return defs.context_service(name)


def _join_keys(svc: ContextService, entity_id: Any) -> dict[str, Any]:
    fields = svc.entity.join_key_fields
    if len(fields) != 1:
        raise InvalidInputError(
            f"entity {svc.entity.name!r} has join keys {svc.entity.join_keys}; get_user_context needs one",
            field="entity_id",
        )
    key = fields[0]
    return {key.name: entity_id_value(entity_id, key.name, key.dtype.name == "int64")[1]}


def _age_ms(served_at: datetime, t: datetime | None) -> int | None:
    if t is None:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int((served_at - t) / timedelta(milliseconds=1))


def _features_online(
    store: ContextStore, svc: ContextService, join_keys: dict[str, Any], at: datetime
) -> list[FeatureValue]:
    fs = svc.feature_service
    assert fs is not None
    vec = store.get_features(fs.name, join_keys, None, at)
    meta = {m.name: m for m in vec.metadata}
    out: list[FeatureValue] = []
    for name, value in vec.feature_values.items():
        m = meta.get(name)
        eff = m.effective_time if m else None
        out.append(
            FeatureValue(
                name=name,
                value=value,
                view=m.view if m else name.split(".", 1)[0],
                status=m.status if m else ("MISSING_DATA" if value is None else "PRESENT"),
                effective_time=eff,
                age_ms=_age_ms(at, eff),
            )
        )
    return out


def _features_as_of(
    store: ContextStore, svc: ContextService, join_keys: dict[str, Any], at: datetime
) -> list[FeatureValue]:
    """Point-in-time values from the offline store: a one-row spine at ``at``."""
    import pyarrow as pa

    fs = svc.feature_service
    assert fs is not None
    cols: dict[str, pa.Array] = {}
    for f in svc.entity.join_key_fields:
        cols[f.name] = pa.array([join_keys[f.name]], type=f.dtype.to_arrow())
    cols["timestamp"] = pa.array([at], type=pa.timestamp("us", tz="UTC"))
    table = store.get_training_data(pa.table(cols), fs.name, "timestamp")
    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    row = table.slice(0, 1).to_pylist()[0] if table.num_rows else {}
    out: list[FeatureValue] = []
    for sel in fs.selections:
        is_agg = bool(getattr(sel.view, "aggregations", ()))
        # An aggregate is as fresh as its window end; a row feature as its row (read from the offline log).
        view_eff = _window_end(sel.view, at) if is_agg else offline_row_time(store, sel.view, join_keys, at)
        for feat in sel.features:
            value = row.get(f"{sel.view.name}__{feat}")
            eff = view_eff if (is_agg or value is not None) else None
            out.append(
                FeatureValue(
                    name=f"{sel.view.name}.{feat}",
                    value=value,
                    view=sel.view.name,
                    status="MISSING_DATA" if value is None else "PRESENT",
                    effective_time=eff,
                    age_ms=_age_ms(at, eff),
                )
            )
    return out


def _window_end(view: Any, at: datetime) -> datetime:
    interval = getattr(view, "aggregation_interval", None)
    if not interval:
        return at
    return EPOCH + ((at - EPOCH) // interval) * interval


def _interest_vector(svc: ContextService, values: Mapping[str, Any]) -> list[float] | None:
    if not svc.interest:
        return None
    name = svc.interest.replace("__", ".", 1) if "__" in svc.interest and "." not in svc.interest else svc.interest
    v = values.get(name)
    if v is None:
        return None
    vec = v.tolist() if hasattr(v, "tolist") else list(v)
    if not vec or any(x is None or not math.isfinite(float(x)) for x in vec):
        return None
    return [float(x) for x in vec]


def _similar(
    store: ContextStore,
    svc: ContextService,
    join_keys: dict[str, Any],
    raw: Mapping[str, Any],
    events: list[RecentEvent],
    served_at: datetime,
    replay: datetime | None,
    notes: list[str],
    k: int | None,
    filter: Mapping[str, Any] | None,
    rerank: Rerank | None,
) -> list[SimilarItem]:
    from .retrieval import recent_items_query, retrieve, seen_items

    opts = svc.similar_options
    assert opts is not None
    view = opts.view
    vector = _interest_vector(svc, raw)
    seen = (
        seen_items(store, opts, join_keys, [e.values for e in events], raw, served_at)
        if opts.exclude_seen or opts.recent_items
        else []
    )
    recent = recent_items_query(store, view.name, seen[: opts.recent_items]) if opts.recent_items else None
    from_events = 0
    if recent is not None:  # item-kNN from the last seen items: the interest vector is not the query
        vector = recent
        notes.append(f"similar: query = the last {min(len(seen), opts.recent_items or 0)} seen items (item-kNN)")
    elif vector is None and not svc.interest:
        # No interest feature: the mean of the vectors of the items in the recent events.
        vector, from_events, why = _events_interest(store, view, events)
        if vector is None:
            notes.append(f"similar: skipped, no interest feature and {why}")
            return []
    elif vector is None:
        notes.append("similar: skipped, no interest vector for this entity")
        return []
    if not opts.exclude_seen:
        seen = []
    got = retrieve(
        store,
        opts,
        vector,
        k=k if k is not None else opts.k,
        filter=filter,
        seen=seen,
        as_of=replay,
        served_at=served_at,
        rerank_with=rerank if rerank is not None else opts.rerank,
    )
    if from_events:
        notes.append(f"similar: interest = mean vector of {from_events} recently seen items")
    if got.seen:
        notes.append(f"similar: {got.seen} seen items excluded")
    if replay is not None:
        notes.append(
            f"similar: catalogue as of as_of ({got.unreleased} later items excluded); item vectors are the current ones"
        )
    return got.items


def _events_interest(store: ContextStore, view: Any, events: list[RecentEvent]) -> tuple[list[float] | None, int, str]:
    """(mean vector of the recent events' items, how many, why none)."""
    key = view.join_key
    ids = list(dict.fromkeys(str(e.values[key]) for e in events if e.values.get(key) is not None))
    if not events:
        return None, 0, "no recent events"
    if not ids:
        return None, 0, f"none of the {len(events)} recent events has a {key!r}"
    vecs = store.vectors.get_vectors(view.name, ids)
    if not vecs:
        shown = ", ".join(ids[:3]) + (", …" if len(ids) > 3 else "")
        return None, 0, f"none of the {len(ids)} recent items ({shown}) has a vector in {view.name!r}"
    import numpy as np

    mean = np.mean(np.stack([np.asarray(v, dtype=np.float64) for v in vecs.values()]), axis=0)
    if not np.isfinite(mean).all() or float(np.linalg.norm(mean)) == 0.0:
        return None, 0, f"the vectors of the {len(vecs)} recent items average to zero"
    return [float(x) for x in mean], len(vecs), ""


def _recent_events(
    store: ContextStore,
    source: Any,
    join_keys: dict[str, Any],
    n: int,
    before: datetime,
    *,
    from_offline: bool,
    notes: list[str],
) -> list[dict[str, Any]]:
    """The last ``n`` events with ``ts < before``, newest first: the online list when serving, the
    offline log merged with the source's batch history when replaying (the same union both ways)."""
    from .context_events import offline_recent_events, online_recent_events

    found = (offline_recent_events if from_offline else online_recent_events)(store, source, join_keys, n, before)
    if found is None:
        notes.append(f"recent_events: source {source.name!r} has no stored events yet")
        return []
    return found


def _event(row: Mapping[str, Any], ts_field: str, cols: list[str], served_at: datetime) -> RecentEvent:
    """The source's own columns only (stores may keep bookkeeping such as offsets beside them)."""
    ts = parse_time(row.get(ts_field), ts_field) or served_at
    values = {c: row.get(c) for c in cols if c != ts_field} if cols else {k: v for k, v in row.items() if k != ts_field}
    return RecentEvent(timestamp=ts, age_ms=_age_ms(served_at, ts) or 0, values=values)


def memory_dict(m: MemoryRecord, served_at: datetime) -> dict[str, Any]:
    """A memory in a context's structured output: its text, kind and metadata are untrusted (cleaned)."""
    return {
        "id": m.id,
        "text": clean_text(m.text, MAX_TEXT_CHARS, keep_newlines=True),
        "kind": clean_text(m.kind, 64) if m.kind else None,
        "metadata": jsonable(m.metadata),
        "created_at": iso(m.created_at),
        "age_ms": _age_ms(served_at, m.created_at),
        "written_by": clean_text(m.written_by, 256) if m.written_by else None,
        "score": m.score,
    }
