"""Backfill on Ray: each source file becomes a task that reads its rows and runs the views' transforms.

Same definitions, same rows as the local engine: transforms are row-wise, the driver concatenates
the tasks' tables in file order (the local engine's read order, so "the last row wins" still holds
for equal (key, ts)) and writes each view through ``batch.write_view`` -- the same sort, the same
``[start, end)`` replace and the same stream cut-over protocol.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ..definitions import FeatureView, FileSource, StreamSource
from ..errors import InvalidInputError
from .transform import apply_transform, batch_source_of, read_source, source_files

if TYPE_CHECKING:
    from ..config import Config
    from ..stores.offline.base import OfflineStore
    from .batch import BackfillReport

__all__ = ["RAY_ADDRESS_ENV", "ray_backfill"]

RAY_ADDRESS_ENV = "CONTEXT_STORE_RAY_ADDRESS"
_INSTALL_HINT = "the ray engine needs Ray: pip install 'context-store[ray]'"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InvalidInputError(_INSTALL_HINT, field="engine") from None
    return ray


def _one_file(source: FileSource | StreamSource, path: str) -> FileSource | StreamSource:
    """A copy of ``source`` whose (batch) files are just ``path`` (schema and casts unchanged)."""
    fs = copy.copy(batch_source_of(source))
    assert fs is not None
    fs.path = path  # absolute, so the repo root no longer matters
    if isinstance(source, StreamSource):
        out = copy.copy(source)
        out.batch_source = fs
        return out
    return fs


def _slice_task(
    source: FileSource | StreamSource, views: list[FeatureView], start_us: int | None, end_us: int | None
) -> tuple[int, list[pa.Table]]:
    """One file's rows in ``[start, end)`` -> each view's transform (runs in a Ray worker)."""
    table = read_source(source, Path("/"), start_us, end_us)
    return table.num_rows, [apply_transform(v, table) for v in views]


def _connect(ray: Any, config: Config) -> bool:
    """Join the configured cluster, or start a small local one; True when we started it."""
    if ray.is_initialized():
        return False
    address = os.environ.get(RAY_ADDRESS_ENV) or config.extra.get("ray_address")
    with warnings.catch_warnings():
        # Ray starts its processes with fork+exec (preexec_fn), which fires lance's/lancedb's at-fork
        # warnings; nothing of their state survives the exec, so the warnings do not apply
        warnings.filterwarnings("ignore", message="lance is not fork-safe")
        warnings.filterwarnings("ignore", message="lancedb fork support is experimental")
        if address:
            ray.init(address=str(address), log_to_driver=False)
        else:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    return True


def ray_backfill(
    todo: list[FeatureView],
    config: Config,
    offline: OfflineStore,
    start_us: int | None,
    end_us: int | None,
    report: BackfillReport,
    progress: bool = False,
) -> None:
    """Backfill the (already selected) views on Ray; fills ``report.rows`` / ``report.events``."""
    from .batch import write_view

    ray = _import_ray()
    # group views by source: each file is read once for all the views that share it
    groups: dict[str, tuple[FileSource | StreamSource, list[FeatureView]]] = {}
    for view in todo:
        src = view.source
        groups.setdefault(f"{src.kind}:{src.name}", (src, []))[1].append(view)
    # resolve files on the driver: a missing file is a DefinitionError before any cluster work
    files = {key: source_files(batch_source_of(src), config.repo) for key, (src, _) in groups.items()}  # type: ignore[arg-type]
    if not groups:
        return
    started = _connect(ray, config)
    try:
        task = ray.remote(_slice_task)
        pending = {
            key: [task.remote(_one_file(src, f), views, start_us, end_us) for f in files[key]]
            for key, (src, views) in groups.items()
        }
        bar: Any = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc="backfill (ray)", unit="view")
        try:
            done: dict[str, list[tuple[int, list[pa.Table]]]] = {}
            for view in todo:  # the local engine's order, so reports and cut-overs match
                key = f"{view.source.kind}:{view.source.name}"
                if key not in done:
                    done[key] = ray.get(pending[key])  # file order, as the local engine reads them
                    report.events += sum(n for n, _ in done[key])
                i = groups[key][1].index(view)
                rows = pa.concat_tables([tables[i] for _, tables in done[key]], promote_options="permissive")
                report.wrote(view.name, write_view(config, offline, view, rows, start_us, end_us), bar)
        finally:
            if bar is not None:
                bar.close()
    finally:
        if started:
            ray.shutdown()
