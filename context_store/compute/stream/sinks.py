"""Where the stream path sends the texts of new events: the embedding views on their source.

Compute only knows this protocol; serving's ``VectorService`` satisfies it structurally, so the
stream path updates ``find_similar``'s indexes without importing serving.
"""

from __future__ import annotations

from typing import Protocol

import pyarrow as pa

__all__ = ["EmbeddingSink"]


class EmbeddingSink(Protocol):
    def views_on_source(self, source: str) -> list[str]:
        """The embedding views that read ``source``."""
        ...

    def ingest(self, source: str, rows: pa.Table) -> dict[str, int]:
        """New or changed texts of ``rows`` into every embedding view on ``source``; rows per view."""
        ...
