"""Vector index building: embedding views and knowledge bases into their collections.

``VectorIndexer`` is the one writer: backfills (``ContextStore.backfill``), the stream's embedding
sink (``views_on_source`` / ``ingest``), entity upserts and deletes, knowledge (re)indexing and
snapshots. Serving (``serving.similar``) only reads the collections it shares with it.
"""

from .indexer import VectorIndexer

__all__ = ["VectorIndexer"]
