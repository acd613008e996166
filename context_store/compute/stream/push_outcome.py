"""What a push decides and answers, on either path (embedded ``ingestor.py``, Redis ``redis_push.py``):
the event-time decision on each record (``admission.py``) and the ``PushResult``."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ...errors import InvalidInputError
from ...state.columns import ts_to_us
from ..tombstones import NONE, Tombstones
from .admission import BEFORE_CUTOVER, FORGOTTEN, Admission, PartitionAdmission, RejectedRecord, admit
from .cutover import load_cutovers
from .dedup import StoredResult
from .stats import STATS

if TYPE_CHECKING:
    from .context import StreamContext
    from .processor import SourcePlan

__all__ = ["PushResult", "admit_rows", "all_rejected", "count_rejections", "cutovers", "replayed_result"]


@dataclass(frozen=True)
class PushResult:
    source: str
    accepted: int  # records written (0 on a dry run)
    validated: int  # records that passed validation
    dry_run: bool = False
    visible: bool = False  # online state includes the accepted records when push returned
    offsets: dict[str, int] = field(default_factory=dict)  # partition -> last offset written (JSON-able)
    # Valid records not written because they were too late to count (admission.py): never counted
    # anywhere, so ``visible`` stays true of everything accepted.
    rejected: tuple[RejectedRecord, ...] = ()
    late: int = 0  # accepted records older than their partition's watermark (within allowed_lateness)
    # Idempotent ingest (dedup.py): records dropped because their event id was already ingested
    # (or repeated within this push), by index in the pushed records; ``replayed``: a retry with
    # the same Idempotency-Key, answered with the first push's result (nothing written).
    duplicates: int = 0
    duplicate_indices: tuple[int, ...] = ()
    replayed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "accepted": self.accepted,
            "validated": self.validated,
            "dry_run": self.dry_run,
            "visible": self.visible,
            "offsets": dict(self.offsets),
            "rejected": [
                {"index": r.index, "field": r.field, "reason": r.reason, "message": r.message} for r in self.rejected
            ],
            "late": self.late,
            "duplicates": self.duplicates,
            "duplicate_indices": list(self.duplicate_indices),
            "replayed": self.replayed,
        }


def replayed_result(source: str, got: StoredResult, visible: bool) -> PushResult:
    """The result of the first push with this Idempotency-Key, answered to a retry."""
    return PushResult(
        source,
        got.accepted,
        got.validated,
        visible=visible,
        offsets={str(p): o for p, o in got.offsets.items()},
        duplicates=len(got.duplicate_indices),
        duplicate_indices=got.duplicate_indices,
        replayed=True,
    )


def cutovers(ctx: StreamContext) -> dict[str, int]:
    """View -> the event time (µs) from which the stream feeds it (``cutover.py``)."""
    return {v: c.ts_us for v, c in load_cutovers(ctx.config, ctx.online).items()}


def admit_rows(
    cuts: dict[str, int],
    plan: SourcePlan,
    table: pa.Table,
    part: np.ndarray,
    watermarks: dict[int, int | None],
    forgotten: Tombstones = NONE,
) -> Admission:
    """The event-time decision on every record (``admission.py``) against the assumed watermarks;
    ``cuts``: the views' cut-overs (``cutovers``), read once per push. Records of a ``forgotten``
    entity at or before its forget are rejected first (they move no watermark; docs/erasure.md)."""
    src = plan.source
    cut = max(((v.name, cuts[v.name]) for v in plan.views if v.name in cuts), key=lambda c: c[1], default=None)
    ts = ts_to_us(table.column(src.timestamp_field))
    gone = forgotten.mask(table, src.timestamp_field) if forgotten else None
    if gone is None:
        return admit(ts, part, watermarks, src.allowed_lateness, cut, src.timestamp_field)
    keep = np.flatnonzero(~gone)
    adm = admit(ts[keep], part[keep], watermarks, src.allowed_lateness, cut, src.timestamp_field)
    accepted = np.zeros(len(ts), dtype=bool)
    accepted[keep] = adm.accepted
    msg = "this entity was forgotten (right to erasure) after this event's time: not written"
    rejected = [replace(r, index=int(keep[r.index])) for r in adm.rejected]
    rejected += [RejectedRecord(int(i), src.timestamp_field, FORGOTTEN, msg) for i in np.flatnonzero(gone)]
    # A partition whose every record was forgotten: a decision that assumes and changes nothing.
    have = {p.partition for p in adm.partitions}
    parts = adm.partitions + tuple(
        PartitionAdmission(int(p), None, None, None, 0, 0) for p in np.unique(part).tolist() if int(p) not in have
    )
    return Admission(
        accepted, tuple(sorted(rejected, key=lambda r: r.index)), tuple(sorted(parts, key=lambda p: p.partition))
    )


def count_rejections(source: str, adm: Admission) -> None:
    if adm.rejected:
        n_cut = sum(r.reason == BEFORE_CUTOVER for r in adm.rejected)
        n_gone = sum(r.reason == FORGOTTEN for r in adm.rejected)
        STATS.inc("before_cutover_events", source, n_cut)
        STATS.inc("too_late_events", source, len(adm.rejected) - n_cut - n_gone)
        if n_gone:
            STATS.inc("forgotten_events", source, n_gone)


def all_rejected(adm: Admission) -> InvalidInputError:
    r = adm.rejected[0]
    return InvalidInputError(
        f"every record was rejected, nothing written: record {r.index}: field '{r.field}': {r.message}",
        field=f"records[{r.index}].{r.field}",
    )
