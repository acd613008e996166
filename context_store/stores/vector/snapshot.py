"""Index snapshots: a FAISS index saved next to its Lance table, so a restart need not rebuild it.

One file per table, ``<vectors>/<table>.faiss-snapshot``: an uncompressed ``.npz`` (a zip whose
members carry CRC-32s, so a torn or flipped byte is detected on read) holding

* ``index`` (and ``flat`` for IVF): ``faiss.serialize_index`` bytes,
* ``alive``: the tombstone mask by position,
* ``ids`` / ``hashes``: the id and the Lance ``row_hash`` of every position (``""`` when dead),
  packed as UTF-8 bytes + offsets (no pickle),
* ``meta``: JSON — format, dim, embedder, index kind/mode, key, attributes, search breadth and the
  Lance version + newest ``updated_us`` the snapshot reflects (the watermark).

The per-position row hashes make a stale snapshot safe: at load the current table's
``(key, row_hash)`` column pair is compared with them and only the rows that differ are replayed
(deleted or re-read), whatever happened to the table in between (other writers, compaction,
version cleanup). Writes go to a unique temp file that is fsynced and renamed over the old
snapshot, so a reader in another process sees the old or the new file, never half of one;
concurrent writers simply race to the last complete rename.
"""

from __future__ import annotations

import json
import os
import time
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FORMAT", "Snapshot", "SnapshotError", "read_snapshot", "write_snapshot", "remove_snapshot"]

FORMAT = 1


class SnapshotError(Exception):
    """The snapshot file is unreadable (truncated, corrupt, or not ours): rebuild instead."""


@dataclass(slots=True)
class Snapshot:
    meta: dict[str, Any]
    ids: list[str]
    hashes: list[str]
    arrays: dict[str, np.ndarray]  # "index", "alive" and, for IVF, "flat"


def _pack(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    enc = [s.encode("utf-8") for s in strings]
    offsets = np.zeros(len(enc) + 1, dtype=np.int64)
    if enc:
        np.cumsum([len(b) for b in enc], out=offsets[1:])
    return np.frombuffer(b"".join(enc), dtype=np.uint8), offsets


def _unpack(data: np.ndarray, offsets: np.ndarray) -> list[str]:
    buf = data.tobytes()
    o = offsets.tolist()
    return [buf[o[i] : o[i + 1]].decode("utf-8") for i in range(len(o) - 1)]


def write_snapshot(
    path: Path,
    meta: Mapping[str, Any],
    ids: Sequence[str],
    hashes: Sequence[str],
    arrays: Mapping[str, np.ndarray],
) -> int:
    """Atomically (temp file + fsync + rename) write a snapshot; returns its size in bytes."""
    if len(ids) != len(hashes):
        raise ValueError("one hash per id")
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep(path)
    ids_data, ids_off = _pack(ids)
    h_data, h_off = _pack(hashes)
    body = dict(meta, format=FORMAT)
    # Any values: a typed ``**members`` would also be matched against savez's ``allow_pickle: bool``
    # keyword (numpy>=2.1 stubs); no member has that name.
    members: dict[str, Any] = {
        "meta": np.frombuffer(json.dumps(body).encode("utf-8"), dtype=np.uint8),
        "ids_data": ids_data,
        "ids_off": ids_off,
        "hashes_data": h_data,
        "hashes_off": h_off,
        **arrays,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **members)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path.stat().st_size


def _sweep(path: Path, age: float = 3600.0) -> None:
    """Remove temp files of writers that died mid-write (an hour old: surely not still writing)."""
    now = time.time()
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            if now - tmp.stat().st_mtime > age:
                tmp.unlink()
        except OSError:
            pass


def read_snapshot(path: Path) -> Snapshot | None:
    """The snapshot at ``path``, None when there is none; SnapshotError when it is unusable."""
    if not path.exists():
        return None
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            # Reading each member whole makes zipfile check its CRC-32.
            loaded = {name: z[name] for name in z.files}
        meta = json.loads(loaded.pop("meta").tobytes().decode("utf-8"))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise SnapshotError(f"unknown snapshot format {meta.get('format') if isinstance(meta, dict) else meta!r}")
        ids = _unpack(loaded.pop("ids_data"), loaded.pop("ids_off"))
        hashes = _unpack(loaded.pop("hashes_data"), loaded.pop("hashes_off"))
    except SnapshotError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise SnapshotError(f"{path.name}: {type(e).__name__}: {e}") from None
    if len(ids) != len(hashes) or "index" not in loaded or "alive" not in loaded or len(loaded["alive"]) != len(ids):
        raise SnapshotError(f"{path.name}: inconsistent members")
    return Snapshot(meta, ids, hashes, loaded)


def remove_snapshot(path: Path) -> None:
    path.unlink(missing_ok=True)
