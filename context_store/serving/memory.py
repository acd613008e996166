"""Agent memories: ``remember``, ``search_memories``, ``forget_memory`` and the context's memories section.

A memory is one event of a ``cs.Memory`` stream source (``definitions/memory.py``), pushed through the
ordinary push path: durable in the offline log ``src__{name}``, on the entity's online recent list
(bounded by ``max_per_entity``) and, through the stream's embedding sink, in the vector collection
``mem__{name}`` (attribute ``{join_key}`` = the entity, so per-entity filters and erasure are generic).

Dedup: the id is a hash of (memory, entity, normalized text, window bucket). ``remember`` first looks
for this bucket's id and the previous bucket's (kept when younger than the window: a sliding window,
not an aligned one); two concurrent calls with the same text push the same id and the stream's
event-id dedup keeps one. A forgotten id gets a tombstone (online meta) and a re-remembered text a
new id derived from it, since the stream still holds the forgotten id as seen.
"""

from __future__ import annotations

import hashlib
import re
import time
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from ..access import Subject, entity_id_value, subject_entity_id
from ..definitions.memory import Memory, memory_candidates
from ..errors import InvalidInputError, NotFoundError
from ..limits import (
    CONTEXT_QUERY_CHARS,
    MEMORY_ID_CHARS,
    MEMORY_K,
    MEMORY_K_DEFAULT,
    MEMORY_KIND_CHARS,
    MEMORY_METADATA_BYTES,
    MEMORY_TEXT_CHARS,
)
from ..memory_types import MemoryRecord, MemoryResult
from ..vocab.time import datetime_to_us, us_to_datetime
from .context_text import _CONTROL

if TYPE_CHECKING:
    from ..stores.vector import VectorCollection
    from .store import ContextStore

__all__ = ["remember", "search_memories", "forget_memory", "memory_of", "context_memories", "RECENCY_WEIGHT"]

RECENCY_WEIGHT = 0.1  # score = cosine + RECENCY_WEIGHT * 0.5 ** (age / RECENCY_HALF_LIFE)
RECENCY_HALF_LIFE_US = 7 * 86_400 * 1_000_000
_ID = re.compile(r"^[A-Za-z0-9_\-]+$")
_TOMBSTONE = "memory-forgotten:"
_WRITTEN_BY_CHARS = 256


# -- which memory -------------------------------------------------------------------------------
def memories_of(store: ContextStore) -> list[Memory]:
    return [s for s in store.definitions.sources.values() if isinstance(s, Memory)]


def memory_of(store: ContextStore, name: str | None = None, subject: Subject | None = None) -> Memory:
    """The workspace's memory: ``name``, else the only one, else the one keyed like the subject."""
    mems = memories_of(store)
    if name is not None:
        found = [m for m in mems if m.name == name]
        if not found:
            known = ", ".join(m.name for m in mems) or "none"
            raise NotFoundError(f"unknown memory {name!r}; known: {known}", field="memory")
        return found[0]
    if len(mems) == 1:
        return mems[0]
    if not mems:
        entities = [e.name for e in memory_candidates(store.definitions.context_services.values())]
        why = (
            f"the context services use several entities ({', '.join(entities)})"
            if len(entities) > 1
            else "no context service names an entity with one join key"
        )
        raise NotFoundError(
            f"this workspace has no memory: {why}; declare one, e.g. memories = cs.Memory(entity=user)", field="memory"
        )
    keyed = [m for m in mems if subject is not None and m.join_key == subject.join_key]
    if len(keyed) == 1:
        return keyed[0]
    raise InvalidInputError(
        f"this workspace declares several memories ({', '.join(m.name for m in mems)}); name one", field="memory"
    )


def _entity(mem: Memory, subject: Subject | None, entity_id: Any) -> tuple[str, Any]:
    """(entity id as text, typed join key value); 403 for another entity than the subject's."""
    if entity_id is not None:
        entity_id_value(entity_id, mem.join_key, False)  # the type and characters, before the subject check
    eid = subject_entity_id(subject, mem.join_key, entity_id)
    return entity_id_value(eid, mem.join_key, mem.entity.join_key_fields[0].dtype.name == "int64")


# -- validation ----------------------------------------------------------------------------------
def _text(value: Any, field: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{field} must be a non-empty string", field=field)
    if len(value) > limit:
        raise InvalidInputError(f"{field} must be at most {limit} characters, got {len(value)}", field=field)
    if "\x00" in value:
        raise InvalidInputError(f"{field} must not contain NUL characters", field=field)
    return value


def _optional(value: Any, field: str, limit: int) -> str | None:
    if value is None:
        return None
    s = _text(value, field, limit)
    if _CONTROL.search(s):
        raise InvalidInputError(f"{field} must not contain control characters", field=field)
    return s


def _metadata(value: Any) -> str:
    if value is None:
        return "{}"
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise InvalidInputError("metadata must be an object with string keys", field="metadata")
    try:
        data = orjson.dumps(dict(value))
    except (TypeError, orjson.JSONEncodeError):
        raise InvalidInputError(
            "metadata must hold JSON values (strings, numbers, booleans, null, lists, objects)", field="metadata"
        ) from None
    if len(data) > MEMORY_METADATA_BYTES:
        raise InvalidInputError(
            f"metadata must be at most {MEMORY_METADATA_BYTES} bytes as JSON, got {len(data)}", field="metadata"
        )
    return data.decode()


def _memory_id_arg(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MEMORY_ID_CHARS or not _ID.match(value):
        raise InvalidInputError(
            f"memory_id must be 1-{MEMORY_ID_CHARS} letters, digits, '-' or '_', got {value!r:.80}", field="memory_id"
        )
    return value


def normalize(text: str) -> str:
    """What counts as "the same text": Unicode NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


# -- ids -----------------------------------------------------------------------------------------
def _hash(*parts: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(p.encode())
        h.update(b"\x00")
    return h.hexdigest()


def _memory_id(store: ContextStore, mem: Memory, eid: str, norm: str, bucket: int) -> str:
    """The deterministic id; past a forgotten id, the next one derived from its tombstone."""
    mid = _hash(mem.name, mem.join_key, eid, norm, str(bucket))
    for _ in range(16):
        tomb = store.online.get_meta(_TOMBSTONE + f"{mem.name}:{mid}")
        if tomb is None:
            return mid
        mid = _hash(mid, tomb.decode())
    return mid


# -- records -------------------------------------------------------------------------------------
def _record(mem: Memory, mid: str, attrs: dict[str, Any], score: float | None = None) -> MemoryRecord:
    try:
        meta = orjson.loads(attrs.get("metadata") or "{}")
    except orjson.JSONDecodeError:
        meta = {}
    created = attrs.get("created_us")
    return MemoryRecord(
        id=mid,
        entity={mem.join_key: attrs.get(mem.join_key)},
        text=str(attrs.get("text") or ""),
        kind=attrs.get("kind"),
        metadata=meta if isinstance(meta, dict) else {},
        created_at=us_to_datetime(int(created)) if created is not None else datetime.now(UTC),
        written_by=attrs.get("written_by"),
        score=score,
        memory=mem.name,
    )


def _lookup(coll: VectorCollection, mid: str) -> dict[str, Any] | None:
    return coll.index.get_attributes(mid) if mid in coll.index else None


def _collection(store: ContextStore, mem: Memory, fresh: bool = False) -> VectorCollection:
    coll = store.vector_collections.memory(mem)
    if fresh:  # another process (a stream worker) may have written it within the refresh interval
        coll.checked_at = float("-inf")
        coll.refresh()
    return coll


# -- remember ------------------------------------------------------------------------------------
def remember(
    store: ContextStore,
    text: str,
    entity_id: str | int | None = None,
    kind: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    *,
    subject: Subject | None = None,
    written_by: str | None = None,
    memory: str | None = None,
) -> MemoryRecord:
    """Store a memory of one entity (read-after-write); the same text within the dedup window returns
    the existing memory with ``deduplicated=True``."""
    mem = memory_of(store, memory, subject)
    eid, value = _entity(mem, subject, entity_id)
    text = _text(text, "text", MEMORY_TEXT_CHARS)
    kind = _optional(kind, "kind", MEMORY_KIND_CHARS)
    meta = _metadata(metadata)
    written_by = _optional(written_by, "written_by", _WRITTEN_BY_CHARS)
    norm = normalize(text)
    now = datetime.now(UTC)
    now_us, window = datetime_to_us(now), int(mem.dedup_window.total_seconds() * 1_000_000)
    bucket = now_us // window
    coll = _collection(store, mem)
    for b in (bucket, bucket - 1):  # the same text within the window: this bucket's or the last one's
        mid = _memory_id(store, mem, eid, norm, b)
        found = _lookup(coll, mid)
        if found is not None and (b == bucket or int(found.get("created_us") or 0) >= now_us - window):
            return _deduplicated(mem, mid, found)
    mid = _memory_id(store, mem, eid, norm, bucket)
    row = {
        "memory_id": mid,
        mem.join_key: value,
        "text": text,
        "kind": kind,
        "metadata": meta,
        "written_by": written_by,
        "ts": now,
    }
    result = store.push(mem.name, [row])
    if result.duplicates:  # a concurrent call stored this text first: answer with its memory
        for _ in range(20):
            found = _lookup(_collection(store, mem, fresh=True), mid)
            if found is not None:
                return _deduplicated(mem, mid, found)
            time.sleep(0.05)
        rec = _record(mem, mid, {**row, mem.join_key: eid, "created_us": now_us})
        rec.deduplicated = True
        return rec
    if _lookup(coll, mid) is None and _lookup(_collection(store, mem, fresh=True), mid) is None:
        import pyarrow as pa

        store.indexer.ingest(mem.name, pa.Table.from_pylist([row]))  # searchable here when this returns
    return _record(mem, mid, {**row, mem.join_key: eid, "created_us": now_us})


def _deduplicated(mem: Memory, mid: str, attrs: dict[str, Any]) -> MemoryRecord:
    rec = _record(mem, mid, attrs)
    rec.deduplicated = True
    return rec


# -- search --------------------------------------------------------------------------------------
def search_memories(
    store: ContextStore,
    query: str,
    entity_id: str | int | None = None,
    k: int = MEMORY_K_DEFAULT,
    *,
    subject: Subject | None = None,
    memory: str | None = None,
) -> MemoryResult:
    """The entity's top-``k`` memories for ``query``: cosine similarity plus a small recency bonus."""
    mem = memory_of(store, memory, subject)
    eid, _ = _entity(mem, subject, entity_id)
    query = _text(query, "query", CONTEXT_QUERY_CHARS)
    if k not in MEMORY_K:
        raise InvalidInputError(f"k must be an int in {MEMORY_K}, got {k!r}", field="k")
    return MemoryResult(mem.name, {mem.join_key: eid}, query, ranked(store, mem, eid, query, k))


def ranked(store: ContextStore, mem: Memory, eid: str, query: str, k: int) -> list[MemoryRecord]:
    from ..compute.embeddings import embed_checked

    coll = _collection(store, mem)
    if not coll.exists or len(coll.index) == 0:
        return []
    qv = embed_checked([query], mem.embedder)[0]
    hits = coll.index.search(qv, min(k * 4, 200), filter={mem.join_key: eid})
    now_us = datetime_to_us(datetime.now(UTC))
    out = []
    for (mid, sim), attrs in zip(hits, coll.index.search_attributes(hits)):
        age = max(0, now_us - int(attrs.get("created_us") or now_us))
        score = float(sim) + RECENCY_WEIGHT * 0.5 ** (age / RECENCY_HALF_LIFE_US)
        out.append(_record(mem, mid, attrs, round(score, 6)))
    out.sort(key=lambda r: -(r.score or 0.0))
    return out[:k]


# -- forget --------------------------------------------------------------------------------------
def forget_memory(
    store: ContextStore, memory_id: str, *, subject: Subject | None = None, memory: str | None = None
) -> bool:
    """Remove one memory from the vector index, the online recent list and the offline log.
    404 when unknown; 403 when it belongs to another entity than the subject's."""
    from ..state.codec import entity_key
    from ..vocab.tables import source_table

    mid = _memory_id_arg(memory_id)
    mems = [memory_of(store, memory, subject)] if memory is not None else memories_of(store)
    for mem in mems:
        coll = _collection(store, mem)
        attrs = _lookup(coll, mid) or _lookup(_collection(store, mem, fresh=True), mid)
        if attrs is None:
            continue
        eid = str(attrs.get(mem.join_key))
        subject_entity_id(subject, mem.join_key, eid, field="memory_id")  # 403: another entity's memory
        _delete_offline(store, mem, mid, int(attrs.get("created_us") or 0), source_table(mem.name))
        coll.delete([mid])
        store.online.remove_recent(mem.name, entity_key([mem.join_key], [eid]), "memory_id", mid)
        store.online.set_meta(_TOMBSTONE + f"{mem.name}:{mid}", str(time.time_ns()).encode())
        return True
    raise NotFoundError(f"no memory {mid!r} in this workspace", field="memory_id")


def _delete_offline(store: ContextStore, mem: Memory, mid: str, created_us: int, table: str) -> None:
    """Delete the memory's row from the offline log. Redis mode appends it there asynchronously (the
    workers' flush, about a second): a memory this young is waited for first, so it cannot land after."""
    import pyarrow.compute as pc

    offline = store.offline
    young = store.config.is_redis and datetime_to_us(datetime.now(UTC)) - created_us < 60_000_000
    deadline = time.monotonic() + (10.0 if young else 0.0)
    while True:
        if offline.exists(table):
            there = offline.read(table, columns=["memory_id"], filter=pc.field("memory_id") == mid).num_rows
            if there:
                offline.delete_where(table, f"memory_id = '{mid}'")  # mid matched _ID: no quotes inside
                return
        if time.monotonic() >= deadline:
            return
        time.sleep(0.1)


# -- get_user_context ----------------------------------------------------------------------------
def context_memories(
    store: ContextStore,
    entity: Any,
    join_keys: dict[str, Any],
    n: int,
    query: str | None,
    before: datetime,
    replay: bool,
) -> tuple[str | None, list[MemoryRecord], list[str]]:
    """The memories section of a context: with a query its top-``n`` by similarity plus the newest few
    not already there, else the newest ``n``. Replays read the offline log (no similarity)."""
    from .context_events import _ts_us, offline_recent_events, online_recent_events

    mems = [m for m in memories_of(store) if m.entity.name == entity.name]
    if not mems or n <= 0:
        return None, [], []
    mem = mems[0]
    eid = str(join_keys.get(mem.join_key))
    notes: list[str] = []
    out: list[MemoryRecord] = []
    if query is not None and not replay:
        out = ranked(store, mem, eid, query, n)
    cap = len(out) + (max(1, n // 2) if out else n)
    read = offline_recent_events if replay else online_recent_events
    rows = read(store, mem, join_keys, cap, before) or []
    have = {r.id for r in out}
    for r in rows:
        mid = str(r.get("memory_id"))
        if mid in have or len(out) >= cap:
            continue
        attrs = {**r, mem.join_key: eid, "created_us": _ts_us(r.get("ts"))}
        out.append(_record(mem, mid, attrs))
        have.add(mid)
    if replay and query is not None:
        notes.append("memories: replayed newest first (no similarity ranking as of a past time)")
    return mem.name, out, notes
