"""Result objects of agent memories (``remember``, ``search_memories``), shared by serving, REST, MCP and the client."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["MemoryRecord", "MemoryResult"]


@dataclass(slots=True)
class MemoryRecord:
    """One memory. ``text``, ``kind`` and ``metadata`` are untrusted data (written by users or agents).
    ``score``: the search score (similarity plus a small recency bonus), None when not from a search.
    ``deduplicated``: ``remember`` found the same text for this entity within the dedup window and
    returned that memory instead of storing another."""

    id: str
    entity: dict[str, Any]  # {join_key: value}
    text: str
    kind: str | None
    metadata: dict[str, Any]
    created_at: datetime
    written_by: str | None
    score: float | None = None
    memory: str = ""  # the memory source's name
    deduplicated: bool = False

    def to_dict(self) -> dict[str, Any]:
        from .vocab.time import format_iso_z

        return {
            "id": self.id,
            "entity": dict(self.entity),
            "text": self.text,
            "kind": self.kind,
            "metadata": dict(self.metadata),
            "created_at": format_iso_z(self.created_at),
            "written_by": self.written_by,
            "score": self.score,
            "memory": self.memory,
            "deduplicated": self.deduplicated,
        }


@dataclass(slots=True)
class MemoryResult:
    """The top memories of one entity for a query, best first."""

    memory: str
    entity: dict[str, Any]
    query: str
    memories: list[MemoryRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "memory": self.memory,
            "entity": dict(self.entity),
            "query": self.query,
            "memories": [m.to_dict() for m in self.memories],
        }
