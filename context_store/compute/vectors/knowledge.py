"""Knowledge files into a collection: chunk, embed, and replace a changed file's chunks atomically."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from ...stores.vector import VectorCollection
from ..embeddings import Chunk, embed_checked, file_digest, knowledge_files, read_chunks, text_hash

if TYPE_CHECKING:
    from ...definitions import Knowledge

__all__ = ["index_knowledge_base"]


def index_knowledge_base(kb: Knowledge, coll: VectorCollection, repo: Path, progress: bool = False) -> dict[str, int]:
    """(Re)index ``kb``'s files: a file whose digest is unchanged is skipped, a changed file's chunks
    are replaced, a deleted file's removed. Returns files / reindexed / removed / chunks counts."""
    files = knowledge_files(kb, repo)
    digests: dict[str, str] = {}
    known = coll.read(["file", "row_hash"])
    if known is not None:
        for f, h in zip(known.column("file").to_pylist(), known.column("row_hash").to_pylist()):
            digests[f] = h.split(":", 1)[0]
    stats = {"files": len(files), "reindexed": 0, "removed": 0, "chunks": 0}
    seen: set[str] = set()
    it: Iterable[Path] = files
    if progress:
        from tqdm import tqdm

        it = tqdm(files, desc=f"index {kb.name}", unit="file")
    for path in it:
        rel = _rel_or(path, repo, path.as_posix())
        seen.add(rel)
        digest = file_digest(path, kb)
        if digests.get(rel) == digest:
            continue
        chunks = read_chunks(kb, path, repo)
        texts = [f"{c.context}\n{c.text}" if c.context else c.text for c in chunks]
        vecs = embed_checked(texts, kb.embedder) if chunks else np.zeros((0, coll.index.dim), np.float32)
        _replace_file(coll, rel, _chunk_rows(coll, kb, digest, chunks, vecs))
        stats["reindexed"] += 1
        stats["chunks"] += len(chunks)
    for gone in sorted(set(digests) - seen):  # files deleted from disk
        _replace_file(coll, gone, None)
        stats["removed"] += 1
    if not coll.exists:  # no files yet: the collection is built, and empty
        coll.create_empty(_chunk_rows(coll, kb, "", [], np.zeros((0, coll.dim), np.float32)))
    return stats


def _chunk_rows(coll: VectorCollection, kb: Knowledge, digest: str, chunks: list[Chunk], vecs: np.ndarray) -> pa.Table:
    return coll.rows(
        [c.chunk_id for c in chunks],
        vecs,
        # digest first: a file is unchanged when its chunks' hashes start with it
        [f"{digest}:{text_hash(c.text, kb.embedder)}" for c in chunks],
        {
            "file": pa.array([c.file for c in chunks], pa.string()),
            "source": pa.array([c.source for c in chunks], pa.string()),
            "start": pa.array([c.start for c in chunks], pa.int64()),
            "end": pa.array([c.end for c in chunks], pa.int64()),
            "text": pa.array([c.text for c in chunks], pa.string()),
        },
        extra={"file": pa.array([c.file for c in chunks], pa.string())},  # plain column for the scope
    )


def _replace_file(coll: VectorCollection, rel: str, data: pa.Table | None) -> None:
    # chunk ids are "<file>@<start>" or "<file>#<line>@<start>"
    old = [i for i in list(coll.hashes) if i.startswith((rel + "@", rel + "#"))]
    coll.replace(data, "file = '" + rel.replace("'", "''") + "'", old)


def _rel_or(path: Path, repo: Path, default: str) -> str:
    try:
        return path.resolve().relative_to(repo.resolve()).as_posix()
    except ValueError:
        return default
