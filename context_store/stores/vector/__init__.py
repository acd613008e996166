"""Vector stores: LanceDB tables (durable) + an in-memory FAISS index (serving) + its snapshots."""

from .base import AttributeColumns, Condition, VectorIndex, compile_filter
from .collection import ATTR_PREFIX, VectorCollection
from .faiss_index import FaissIndex
from .lance_vectors import LanceVectors, embedding_table, knowledge_table, vector_array
from .registry import CollectionOptions, VectorCollections, view_columns
from .snapshot import Snapshot, SnapshotError, read_snapshot, write_snapshot

__all__ = [
    "VectorIndex",
    "FaissIndex",
    "LanceVectors",
    "VectorCollection",
    "VectorCollections",
    "CollectionOptions",
    "view_columns",
    "ATTR_PREFIX",
    "AttributeColumns",
    "Condition",
    "compile_filter",
    "embedding_table",
    "knowledge_table",
    "vector_array",
    "Snapshot",
    "SnapshotError",
    "read_snapshot",
    "write_snapshot",
]
