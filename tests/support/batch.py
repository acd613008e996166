"""Helpers for the batch-engine tests: build a RepoDefinitions + offline store over event tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from context_store.compute.batch import backfill
from context_store.compute.transform import input_schema
from context_store.config import Config, load_config
from context_store.definitions import FeatureService, FeatureView, RealtimeFeatureView
from context_store.registry.repo import RepoDefinitions
from context_store.stores.offline import OfflineStore, open_offline_store

TS = pa.timestamp("us", tz="UTC")
T0 = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z, in microseconds


def ts_array(values: list[int]) -> pa.Array:
    return pa.array(values, pa.int64()).cast(TS)


def write_parquet(root: Path, name: str, table: pa.Table) -> None:
    path = root / "data" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def build(
    root: Path,
    views: list[FeatureView],
    services: list[FeatureService],
    realtime: list[RealtimeFeatureView] = (),  # type: ignore[assignment]
    run_backfill: bool = True,
) -> tuple[RepoDefinitions, Config, OfflineStore]:
    """Definitions as the registry would resolve them (input schemas from the files), backfilled."""
    defs = RepoDefinitions()
    for v in views:
        defs.feature_views[v.name] = v
        defs.sources[v.source.name] = v.source
        for e in v.entities:
            defs.entities[e.name] = e
        defs.input_schemas[v.name] = input_schema(v, root)
    for r in realtime:
        defs.realtime_views[r.name] = r
    for s in services:
        defs.feature_services[s.name] = s
    config = load_config(root)
    offline = open_offline_store(config)
    if run_backfill:
        backfill(defs, config, offline)
    return defs, config, offline


def rows_of(table: pa.Table, ts_field: str) -> list[dict[str, Any]]:
    """Rows as dicts with the timestamp as int microseconds (for tests.support.reference)."""
    t = table.set_column(table.schema.get_field_index(ts_field), ts_field, table.column(ts_field).cast(pa.int64()))
    return t.to_pylist()
