"""Which views' online state is complete (``state.markers``), and marking the ones that are by
construction: a view whose inputs have no history at all (no batch files, an empty offline log)
is complete from its first streamed event, so ``apply`` marks it and pushes are served at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config
from ..definitions import FeatureView, StreamSource
from ..registry.repo import RepoDefinitions
from ..state.markers import encode_marker, marker_key, read_marker
from ..state.tiles import ViewState
from ..vocab.tables import source_table, view_table

__all__ = ["ApplyCoverage", "has_history", "mark_after_apply", "mark_view"]


@dataclass
class ApplyCoverage:
    """After an apply: views marked complete (no history), and views whose (new) features wait
    for a backfill and a materialize; ``live`` names those that keep serving their old features."""

    marked: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    live: list[str] = field(default_factory=list)

    def next_steps(self) -> str:
        """What to run next, for the CLI (empty when nothing is pending)."""
        if not self.pending:
            return ""
        views = " ".join(f"--view {v}" for v in self.pending)
        lines = [
            f"Not materialized yet: {', '.join(self.pending)} (served as NOT_MATERIALIZED"
            + (f"; {', '.join(self.live)} keep serving their previous features" if self.live else "")
            + ").",
            f"Next: context-store backfill {views} && context-store materialize {views}",
        ]
        return "\n".join(lines)


def has_history(view: FeatureView, config: Config, offline: Any) -> bool:
    """Whether any input of ``view`` already exists: batch files, rows in the source's offline log
    or in the view's offline table. Unknown (an unreadable store) counts as history."""
    from .transform import batch_source_of

    fs = batch_source_of(view.source)
    if fs is not None:
        import glob

        path = Path(fs.path)
        pattern = str(path if path.is_absolute() else Path(config.repo) / path)
        files = glob.glob(pattern, recursive=True) if glob.has_magic(pattern) else [pattern]
        if any(_has_rows(f, fs.file_format) for f in files if Path(f).is_file()):
            return True
    tables = [view_table(view.name)]
    if isinstance(view.source, StreamSource):
        tables.append(source_table(view.source.name))
    try:
        return any(offline.exists(t) and offline.count(t) > 0 for t in tables)
    except Exception:  # noqa: BLE001 - cannot tell: never claim the state complete
        return True


def mark_view(online: Any, state: ViewState, how: str = "materialize") -> None:
    """Record that ``online`` holds ``state``'s view completely (after the data it covers)."""
    online.set_meta(marker_key(state.name), encode_marker(state, how))


def mark_after_apply(defs: RepoDefinitions, config: Config, offline: Any, online: Any) -> ApplyCoverage:
    """Mark the online views with no history as complete; list the others not materialized."""
    from ..state.markers import legacy_state

    out = ApplyCoverage()
    for name, view in sorted(defs.feature_views.items()):
        if not view.online:
            continue
        state = ViewState(view, defs.input_schemas.get(name, {}))
        m = read_marker(online, name)
        if m is not None and m.vid == state.vid:
            continue
        if not has_history(view, config, offline):
            mark_view(online, state, "apply")
            out.marked.append(name)
            continue
        out.pending.append(name)
        if m is not None and legacy_state(view, m, defs.input_schemas.get(name, {})) is not None:
            out.live.append(name)
    return out


def _has_rows(path: str, fmt: str) -> bool:
    """Whether a batch file holds any row (parquet: its footer; csv: a line after the header)."""
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return bool(pq.ParquetFile(path).metadata.num_rows)
        with open(path, "rb") as f:
            return sum(1 for line, _ in zip(f, range(2)) if line.strip()) > 1
    except Exception:  # noqa: BLE001 - unreadable: count it as history (never claim complete)
        return True
