"""Event-time admission: which pushed records are too late to count, decided before anything is written.

A record is rejected (written nowhere, reported in ``PushResult.rejected``) when

- its time is before the backfill cut-over of a view on its source (``cutover.py``: the batch
  history owns that range, so the stream would never count it), or
- it is older than its partition's watermark minus ``allowed_lateness``, where the watermark is
  the newest admitted event time of the partition, in stream order (the same running max as
  ``processor._late_masks``: the one before each record of a push includes the records before
  it in the same push).

Redis: the admitted watermark of each partition lives in the source's admission hash
(``RedisStreamLog.admission_key``), kept by the push script atomically with its ``XADD``. The
pusher decides on the watermarks it last saw; the script re-checks each decision against the
current watermark -- as a range (``PartitionAdmission.lo``/``hi``), so concurrent pushers of live
events rarely conflict -- and on a conflict writes nothing and returns the current watermarks, the
pusher decides again. Every admitted record therefore was on time against the true stream-order
watermark, which is also the watermark a worker computes when it reaches that entry; workers
apply admitted entries without a lateness check of their own (``process_batch(admitted=...)``).

Embedded: the same decision under a file lock, against a watermark persisted beside the sqlite
store (``<workspace_dir>/stream/admission.json``), so every process agrees.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...definitions.windows import format_duration
from ...vocab.time import us_to_datetime
from .processor import PartitionState, watermark_cap

if TYPE_CHECKING:
    from ...definitions import StreamSource
    from .redis_streams import RedisStreamLog

__all__ = [
    "RejectedRecord",
    "PartitionAdmission",
    "Admission",
    "admit",
    "bound_watermarks",
    "AdmissionFile",
    "embedded_admission",
    "TOO_LATE",
    "BEFORE_CUTOVER",
]

log = logging.getLogger("context_store.stream")

TOO_LATE = "too_late"
BEFORE_CUTOVER = "before_cutover"
FORGOTTEN = "forgotten"  # the entity was forgotten after the event's time (push_outcome.admit_rows)
_SMALL = 16  # records per push decided in plain Python (see _admit_small)
_NONE = -(2**62)  # "no watermark yet": below every event time, and ``_NONE - lateness`` cannot overflow


@dataclass(frozen=True)
class RejectedRecord:
    """One pushed record that was not written (JSON-able as is)."""

    index: int  # position in the push
    field: str  # the source's timestamp field
    reason: str  # TOO_LATE, BEFORE_CUTOVER or FORGOTTEN
    message: str


@dataclass(frozen=True)
class PartitionAdmission:
    """What one partition's decision assumed, for the push script to re-check and commit.

    The decision stays right under any current watermark ``W`` with ``lo < W <= hi`` (no
    watermark counts as below every time): ``hi`` keeps every admitted record within lateness,
    ``lo`` keeps the records rejected because of the watermark rejected."""

    partition: int
    lo: int | None
    hi: int | None
    watermark: int | None  # newest admitted event time (the script keeps the max)
    late: int  # admitted, but older than the watermark (within allowed_lateness)
    rejected: int


@dataclass(frozen=True)
class Admission:
    accepted: np.ndarray  # bool per pushed record
    rejected: tuple[RejectedRecord, ...]
    partitions: tuple[PartitionAdmission, ...]

    @property
    def late(self) -> int:
        return sum(p.late for p in self.partitions)


def _iso(us: int) -> str:
    return us_to_datetime(int(us)).isoformat().replace("+00:00", "Z")


def admit(
    ts: np.ndarray,
    part: np.ndarray,
    watermarks: Mapping[int, int | None],
    lateness: timedelta,
    cutover: tuple[str, int] | None,
    ts_field: str,
) -> Admission:
    """Decide every record of one push. ``ts``/``part``: event time (µs) and partition per record,
    in push order; ``watermarks``: partition -> admitted watermark assumed; ``cutover``: (view, µs)
    of the latest backfill cut-over among the source's views."""
    lateness_us = lateness // timedelta(microseconds=1)
    if len(ts) <= _SMALL:
        return _admit_small(ts.tolist(), part.tolist(), watermarks, lateness_us, lateness, cutover, ts_field)
    return _admit_arrays(ts, part, watermarks, lateness_us, lateness, cutover, ts_field)


def _pre_cutover(i: int, t: int, field: str, view: str, cut: int) -> RejectedRecord:
    return RejectedRecord(
        i,
        field,
        BEFORE_CUTOVER,
        f"{_iso(t)} is before the backfill cut-over {_iso(cut)} of view '{view}': that range is the batch history's",
    )


def _too_late(i: int, t: int, field: str, p: int, before: int, lateness: timedelta) -> RejectedRecord:
    return RejectedRecord(
        i,
        field,
        TOO_LATE,
        f"{_iso(t)} is older than partition {p}'s watermark {_iso(before)} minus "
        f"allowed_lateness ({format_duration(lateness)}): too late to count",
    )


def _admit_small(
    tl: list[int],
    pl: list[int],
    watermarks: Mapping[int, int | None],
    lateness_us: int,
    lateness: timedelta,
    cutover: tuple[str, int] | None,
    ts_field: str,
) -> Admission:
    """``_admit_arrays`` in plain Python, for small pushes (most are one record), where numpy's
    per-call overhead would be most of a push's client CPU. Same decisions (a property test holds them equal)."""
    n = len(tl)
    accepted = [True] * n
    rejected: list[RejectedRecord] = []
    parts: list[PartitionAdmission] = []
    for p in sorted(set(pl)):
        w = watermarks.get(int(p))
        run: int | None = None  # running max of this push's records (after the cut-over) so far
        lo = hi = top = None
        n_late = n_too = n_pre = 0
        for i in range(n):
            if pl[i] != p:
                continue
            t = tl[i]
            if cutover is not None and t < cutover[1]:
                rejected.append(_pre_cutover(i, t, ts_field, *cutover))
                accepted[i] = False
                n_pre += 1
                continue
            rb = _NONE if run is None else run
            before = rb if w is None else max(rb, w)
            if t < before - lateness_us:
                rejected.append(_too_late(i, t, ts_field, int(p), before, lateness))
                accepted[i] = False
                n_too += 1
                if t >= rb - lateness_us:  # rejected only because of the watermark
                    lo = t + lateness_us if lo is None else max(lo, t + lateness_us)
            else:
                n_late += t < before
                hi = t + lateness_us if hi is None else min(hi, t + lateness_us)
                top = t if top is None else max(top, t)
            run = t if run is None else max(run, t)
        parts.append(PartitionAdmission(int(p), lo, hi, top, n_late, n_too + n_pre))
    rejected.sort(key=lambda r: r.index)
    return Admission(np.array(accepted, dtype=bool), tuple(rejected), tuple(parts))


def _admit_arrays(
    ts: np.ndarray,
    part: np.ndarray,
    watermarks: Mapping[int, int | None],
    lateness_us: int,
    lateness: timedelta,
    cutover: tuple[str, int] | None,
    ts_field: str,
) -> Admission:
    accepted = np.ones(len(ts), bool)
    rejected: list[RejectedRecord] = []
    parts: list[PartitionAdmission] = []
    for p in np.unique(part).tolist():
        idx = np.flatnonzero(part == p)
        t = ts[idx]
        w = watermarks.get(int(p))
        pre = np.zeros(len(t), bool)
        if cutover is not None:
            view, cut = cutover
            pre = t < cut
            for i in idx[pre].tolist():
                rejected.append(_pre_cutover(i, int(ts[i]), ts_field, view, cut))
        rest = idx[~pre]
        tr = t[~pre]
        lo = hi = top = None
        n_late = n_too = 0
        if len(tr):
            run = np.maximum.accumulate(tr)
            rb = np.empty_like(run)  # the running max before each record, within this push
            rb[0] = _NONE
            rb[1:] = run[:-1]
            before = rb if w is None else np.maximum(rb, w)
            too_late = tr < before - lateness_us
            late = (tr < before) & ~too_late
            ok = ~too_late
            wdep = too_late & (tr >= rb - lateness_us)  # rejected only because of the watermark
            if ok.any():
                hi = int(tr[ok].min()) + lateness_us
                top = int(tr[ok].max())
            if wdep.any():
                lo = int(tr[wdep].max()) + lateness_us
            n_late, n_too = int(late.sum()), int(too_late.sum())
            for j in np.flatnonzero(too_late).tolist():
                i = int(rest[j])
                rejected.append(_too_late(i, int(ts[i]), ts_field, int(p), int(before[j]), lateness))
            accepted[rest[too_late]] = False
        accepted[idx[pre]] = False
        parts.append(PartitionAdmission(int(p), lo, hi, top, n_late, n_too + int(pre.sum())))
    rejected.sort(key=lambda r: r.index)
    return Admission(accepted, tuple(rejected), tuple(parts))


def bound_watermarks(log_: RedisStreamLog, src: StreamSource, states: Mapping[int, PartitionState]) -> None:
    """Workers' watermarks (partition -> state of one source), never above the admitted ones
    (pushes decide lateness against those; an operator may have reset one) nor past now +
    max_future_skew (one stored by an older version). One read per source."""
    parts = [p for p, st in states.items() if st.watermark_us is not None]
    cap = watermark_cap(src)
    for p, adm in log_.admitted_watermarks(src.name, parts).items():
        wm = min(int(states[p].watermark_us or 0), cap)
        states[p].watermark_us = wm if adm is None else min(wm, adm)


# -- embedded: one JSON file per workspace, under a file lock ------------------------------
@dataclass
class AdmissionFile:
    """The persisted admission state of an embedded workspace: ``source -> partition -> {wm, late, rejected}``."""

    data: dict[str, dict[str, dict[str, Any]]]
    dirty: bool = False

    def watermark(self, source: str, partition: int) -> int | None:
        v = self.data.get(source, {}).get(str(partition), {}).get("wm")
        return None if v is None else int(v)

    def entry(self, source: str, partition: int) -> dict[str, Any]:
        return self.data.get(source, {}).get(str(partition), {})

    def commit(self, source: str, adm: PartitionAdmission) -> None:
        e = self.data.setdefault(source, {}).setdefault(str(adm.partition), {"wm": None, "late": 0, "rejected": 0})
        if adm.watermark is not None and (e.get("wm") is None or adm.watermark > int(e["wm"])):
            e["wm"] = adm.watermark
        e["late"] = int(e.get("late", 0)) + adm.late
        e["rejected"] = int(e.get("rejected", 0)) + adm.rejected
        self.dirty = True

    def reset(self, source: str, partition: int, to_us: int) -> None:
        e = self.data.setdefault(source, {}).setdefault(str(partition), {"wm": None, "late": 0, "rejected": 0})
        e["wm"] = int(to_us)
        self.dirty = True


@contextmanager
def embedded_admission(workspace_dir: Path) -> Iterator[AdmissionFile]:
    """The workspace's admission state, locked against other processes until the block ends
    (then written back atomically when changed). Hold it across decide + apply of one push."""
    d = workspace_dir / "stream"
    d.mkdir(parents=True, exist_ok=True)
    path = d / "admission.json"
    with open(d / "admission.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            try:
                data = json.loads(path.read_text())
            except FileNotFoundError:
                data = {}
            except ValueError:  # unreadable (written by hand?): start over rather than refuse every push
                log.warning("%s is not valid JSON; admission watermarks start over", path)
                data = {}
            af = AdmissionFile(data if isinstance(data, dict) else {})
            yield af
            if af.dirty:
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(af.data, sort_keys=True))
                os.replace(tmp, path)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
