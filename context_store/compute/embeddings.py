"""Embedding-view compute (latest text per entity -> vectors) and knowledge chunking.

Pure functions over Arrow and files; index building lives in ``compute.vectors``, storage in
``stores.vector`` and reads in ``serving.similar``. Feature-view code calls ``embed_texts`` /
``embed_table`` to embed an event's item text with a view's embedder.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..definitions import EmbeddingView, Knowledge
from ..errors import DefinitionError, InvalidInputError

if TYPE_CHECKING:
    from ..embedders import Embedder

__all__ = [
    "embed_texts",
    "embed_checked",
    "bulk_embedder",
    "embed_table",
    "text_hash",
    "latest_rows",
    "Chunk",
    "chunk_text",
    "knowledge_files",
    "read_chunks",
    "file_digest",
]


def embed_texts(texts: Sequence[str], embedder: str) -> np.ndarray:
    """``(len(texts), dim)`` float32 unit vectors from the named embedder (nulls embed as "")."""
    from context_store.embedders import get_embedder

    emb = get_embedder(embedder)
    return emb.embed(["" if t is None else str(t) for t in texts])


def embed_checked(texts: Sequence[str], embedder: str) -> np.ndarray:
    """``embed_texts``, an unknown embedder answered as invalid input naming the field."""
    try:
        return embed_texts(texts, embedder)
    except KeyError as e:
        raise InvalidInputError(str(e.args[0] if e.args else e), field="embedder") from None


def bulk_embedder(embedder: str) -> Embedder:
    """The named embedder's model for bulk writes (backfills, upserts), loaded once per process and
    shared with queries, but past the query LRU cache: backfill texts would only evict hot queries."""
    from context_store.embedders import get_embedder

    try:
        return get_embedder(embedder).inner
    except KeyError as e:
        raise InvalidInputError(str(e.args[0] if e.args else e), field="embedder") from None


def embed_table(table: pa.Table, text_column: str, embedder: str, output_column: str = "embedding") -> pa.Table:
    """``table`` plus a ``fixed_size_list<float32>[dim]`` column embedding ``text_column``."""
    if text_column not in table.column_names:
        raise InvalidInputError(f"no text column {text_column!r}; columns: {table.column_names}", field=text_column)
    vecs = embed_texts(table.column(text_column).to_pylist(), embedder)
    dim = vecs.shape[1] if vecs.ndim == 2 and vecs.shape[1] else _dim_of(embedder)
    arr = pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1), type=pa.float32()), dim)
    if output_column in table.column_names:
        return table.set_column(table.schema.get_field_index(output_column), output_column, arr)
    return table.append_column(output_column, arr)


def _dim_of(embedder: str) -> int:
    from context_store.embedders import get_embedder

    return get_embedder(embedder).dim


def text_hash(text: str | None, embedder: str) -> str:
    """Identifies (text, embedder): a row is re-embedded only when this changes."""
    h = hashlib.blake2b(digest_size=12)
    h.update(embedder.encode())
    h.update(b"\x00")
    h.update(("" if text is None else str(text)).encode())
    return h.hexdigest()


def latest_rows(view: EmbeddingView, table: pa.Table, timestamp_field: str | None) -> pa.Table:
    """One row per entity (the latest by ``timestamp_field``), with key, text and attributes."""
    key = view.join_key
    wanted = [key, view.text, *[a for a in view.attributes if a not in (key, view.text)]]
    missing = [c for c in wanted if c not in table.column_names]
    if missing:
        raise DefinitionError(
            f"column {missing[0]!r} is not in source {view.source.name!r}; columns: {table.column_names}",
            location=view.location,
            obj=f"embedding_view '{view.name}'",
        )
    if table.num_rows == 0:
        return table.select(wanted)
    table = table.filter(pc.is_valid(table.column(key)))
    if timestamp_field and timestamp_field in table.column_names:
        # Stable sort by time, then keep the last occurrence of each key.
        table = table.take(pc.sort_indices(table, sort_keys=[(timestamp_field, "ascending")]))
    keys = table.column(key).cast(pa.string()).to_pylist()
    last: dict[str, int] = {}
    for i, k in enumerate(keys):
        last[k] = i
    table = table.take(pa.array(sorted(last.values()), type=pa.int64())).select(wanted)
    return table.set_column(0, key, table.column(key).cast(pa.string()))


# -- knowledge ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Chunk:
    chunk_id: str
    file: str  # path relative to the repo (what re-indexing replaces)
    source: str  # file, or "file#line" for a JSONL record
    start: int  # character offsets into the document (the JSONL record's text)
    end: int
    text: str
    context: str  # heading trail prepended for embedding (Markdown), not returned


_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)
_BREAKS = ("\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ")


def chunk_text(text: str, chunk_size: int, overlap: int) -> list[tuple[int, int]]:
    """``(start, end)`` character spans of at most ``chunk_size``, consecutive spans overlapping
    by about ``overlap``; ends prefer paragraph, line, sentence, then word boundaries."""
    if chunk_size <= 0 or not 0 <= overlap < chunk_size:
        raise ValueError("need chunk_size > 0 and 0 <= overlap < chunk_size")
    n = len(text)
    spans: list[tuple[int, int]] = []
    start = 0
    while start < n:
        while start < n and text[start].isspace():
            start += 1
        if start >= n:
            break
        end = min(start + chunk_size, n)
        if end < n:
            lo = start + chunk_size // 2
            for sep in _BREAKS:
                cut = text.rfind(sep, lo, end)
                if cut >= 0:
                    end = cut + len(sep)
                    break
        stripped_end = end
        while stripped_end > start and text[stripped_end - 1].isspace():
            stripped_end -= 1
        if stripped_end > start:
            spans.append((start, stripped_end))
        if end >= n:
            break
        nxt = max(end - overlap, start + 1)
        if overlap and nxt > start + 1:
            # Start the overlap on a word boundary, not mid-word.
            sp = text.find(" ", nxt, end)
            nxt = sp + 1 if sp >= 0 else nxt
        start = nxt
    return spans


def _headings_before(text: str) -> list[tuple[int, int, str]]:
    return [(m.start(), len(m.group(1)), m.group(2)) for m in _HEADING.finditer(text)]


def _context_for(headings: list[tuple[int, int, str]], pos: int) -> str:
    trail: list[tuple[int, str]] = []
    for at, level, title in headings:
        if at > pos:
            break
        trail = [t for t in trail if t[0] < level] + [(level, title)]
    return " > ".join(t for _, t in trail)


def knowledge_files(kb: Knowledge, repo_root: Path) -> list[Path]:
    path = Path(kb.source)
    pattern = str(path if path.is_absolute() else Path(repo_root) / path)
    if glob.has_magic(pattern):
        files = [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
    elif Path(pattern).is_dir():
        files = sorted(
            p for p in Path(pattern).rglob("*") if p.suffix.lower() in (".md", ".markdown", ".txt", ".jsonl")
        )
    else:
        files = [Path(pattern)] if Path(pattern).exists() else []
    return [f for f in files if f.is_file()]


def file_digest(path: Path, kb: Knowledge) -> str:
    """Changes when the file or anything that shapes its chunks/vectors changes."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{kb.chunk_size}:{kb.chunk_overlap}:{kb.embedder}:{kb.text}\x00".encode())
    h.update(path.read_bytes())
    return h.hexdigest()


def _rel(path: Path, repo_root: Path) -> str:
    try:
        return path.resolve().relative_to(Path(repo_root).resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def read_chunks(kb: Knowledge, path: Path, repo_root: Path) -> list[Chunk]:
    """The chunks of one document file (Markdown/text, or JSONL with ``kb.text`` per record)."""
    rel = _rel(path, repo_root)
    try:
        raw = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise InvalidInputError(f"cannot read {rel}: {e}", field="source") from None
    docs: list[tuple[str, str]] = []  # (source, text)
    if path.suffix.lower() == ".jsonl":
        for lineno, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec: Any = json.loads(line)
            except json.JSONDecodeError as e:
                raise InvalidInputError(f"{rel}:{lineno}: not valid JSON: {e.msg}", field="source") from None
            if not isinstance(rec, dict) or not isinstance(rec.get(kb.text), str):
                raise InvalidInputError(f"{rel}:{lineno}: record has no string field {kb.text!r}", field="text")
            docs.append((f"{rel}#{lineno}", rec[kb.text]))
    else:
        docs.append((rel, raw))
    out: list[Chunk] = []
    markdown = path.suffix.lower() in (".md", ".markdown")
    for source, text in docs:
        headings = _headings_before(text) if markdown else []
        for start, end in chunk_text(text, kb.chunk_size, kb.chunk_overlap):
            out.append(
                Chunk(
                    chunk_id=f"{source}@{start}",
                    file=rel,
                    source=source,
                    start=start,
                    end=end,
                    text=text[start:end],
                    context=_context_for(headings, start) if headings else "",
                )
            )
    return out
