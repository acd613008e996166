"""Agent memories: ``cs.Memory(entity=user)``, a stream source of short texts an agent keeps about an entity.

A ``Memory`` is a ``StreamSource`` with a fixed schema, so the push path carries it unchanged
(admission, event-id dedup, the offline log ``src__{name}``, the online recent list per entity);
its texts are embedded into their own vector collection (``mem__{name}``) on the way.

Schema: ``memory_id`` (the event id: a hash of entity, normalized text and dedup-window bucket),
the entity's join key (e.g. ``user_id``), ``text``, ``kind``, ``metadata`` (JSON text),
``written_by`` (provenance: key id or token principal) and ``ts`` (created time).

A repo that declares no Memory gets a built-in one (``builtin_memory``) when the entities of its
context services are exactly one entity with one join key: ``memories``, with the embedder of that
context service's knowledge or similar view (else the default). See docs/memory.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from .dtypes import String, Timestamp
from .embedding import DEFAULT_EMBEDDER
from .entity import Entity, Field
from .sources import StreamSource
from .windows import parse_duration

__all__ = ["Memory", "MEMORY_COLUMNS", "BUILTIN_MEMORY", "builtin_memory", "memory_candidates"]

MEMORY_COLUMNS = ("memory_id", "text", "kind", "metadata", "written_by", "ts")  # beside the join key
BUILTIN_MEMORY = "memories"


class Memory(StreamSource):
    """``cs.Memory(name="memories", entity=user, embedder="all-MiniLM-L6-v2", dedup_window="1d")``.

    ``dedup_window``: the same text (normalized: case, spacing) for the same entity within this
    window is stored once. ``max_per_entity``: how many recent memories per entity the online
    store keeps (older ones stay searchable in the vector index and the offline log).
    """

    kind = "memory"

    def __init__(
        self,
        name: str = BUILTIN_MEMORY,
        entity: Entity | None = None,
        embedder: str = DEFAULT_EMBEDDER,
        dedup_window: str | timedelta = "1d",
        max_per_entity: int = 100,
        partitions: int = 1,
        description: str | None = None,
        tags: dict[str, str] | None = None,
        owner: str | None = None,
    ) -> None:
        self._init_common(name, description, tags, owner)
        if not isinstance(entity, Entity):
            self.fail("entity must be a cs.Entity (whose memories these are)")
        if len(entity.join_key_fields) != 1:
            self.fail(f"the entity of a memory must have one join key, {entity.name!r} has {entity.join_keys}")
        key = entity.join_key_fields[0]
        if key.name in MEMORY_COLUMNS:
            self.fail(f"the entity's join key {key.name!r} clashes with a memory column ({', '.join(MEMORY_COLUMNS)})")
        if not isinstance(embedder, str) or not embedder:
            self.fail("embedder must be an embedder name such as 'all-MiniLM-L6-v2'")
        try:
            window = parse_duration(dedup_window, "dedup_window")
        except ValueError as e:
            self.fail(str(e))
        if not timedelta(seconds=1) <= window <= timedelta(days=45):
            self.fail(f"dedup_window must be between 1s and 45d, got {dedup_window!r}")
        if isinstance(max_per_entity, bool) or not isinstance(max_per_entity, int) or not 1 <= max_per_entity <= 1000:
            self.fail(f"max_per_entity must be an int in 1..1000, got {max_per_entity!r}")
        schema = [
            Field("memory_id", String),
            key,
            Field("text", String),
            Field("kind", String),
            Field("metadata", String),
            Field("written_by", String),
            Field("ts", Timestamp),
        ]
        # Retention two windows: a retry in the next bucket still finds its first id (see serving.memory).
        super().__init__(
            name,
            schema,
            "ts",
            partitions=partitions,
            description=description,
            tags=tags,
            owner=owner,
            event_id_field="memory_id",
            event_id_retention=window * 2,
        )
        self.entity = entity
        self.embedder = embedder
        self.dedup_window = window
        self.max_per_entity = max_per_entity

    @property
    def join_key(self) -> str:
        return self.entity.join_keys[0]

    @property
    def recent_lists(self) -> tuple[tuple[tuple[str, ...], int], ...]:
        """(entity join keys, cap) of the online recent list the stream keeps (``processor.source_plan``)."""
        return (((self.join_key,), self.max_per_entity),)

    def spec(self) -> dict[str, Any]:
        return {
            **super().spec(),
            "entity": self.entity.name,
            "embedder": self.embedder,
            "dedup_window_s": self.dedup_window.total_seconds(),
            "max_per_entity": self.max_per_entity,
        }


def memory_candidates(context_services: Iterable[Any]) -> list[Entity]:
    """The distinct single-join-key entities of the context services (a built-in memory needs one)."""
    out: dict[str, Entity] = {}
    for svc in context_services:
        e = svc.entity
        if len(e.join_keys) == 1:
            out.setdefault(e.name, e)
    return list(out.values())


def builtin_memory(sources: Iterable[Any], context_services: Iterable[Any]) -> Memory | None:
    """The workspace's built-in memory: when no Memory is declared, no source is named ``memories``
    and the context services use exactly one single-join-key entity. None otherwise."""
    sources, services = list(sources), list(context_services)
    if any(isinstance(s, Memory) or s.name == BUILTIN_MEMORY for s in sources):
        return None
    entities = memory_candidates(services)
    if len(entities) != 1:
        return None
    embedder = DEFAULT_EMBEDDER
    for svc in services:
        if svc.entity is entities[0] or svc.entity.name == entities[0].name:
            if svc.knowledge is not None:
                embedder = svc.knowledge[0].embedder
                break
            if svc.similar is not None:
                embedder = svc.similar[0].embedder
    mem = Memory(BUILTIN_MEMORY, entity=entities[0], embedder=embedder, description="built-in agent memory")
    mem.location = "<built-in>"
    return mem
