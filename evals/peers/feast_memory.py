"""Write one shape's rows into Redis with Feast's own online write path (run under the Feast venv).

    .venv-feast/bin/python evals/peers/feast_memory.py --redis redis://127.0.0.1:PORT/0 --rows rows.parquet \
        --shape row|agg --repo DIR

Called by evals/bench_redis_memory.py. ``rows.parquet`` holds ``user_id``, ``ts`` and the feature
columns (for the aggregation shape: the 12 final window values, Feast has no window aggregations).
Uses ``FeatureStore.write_to_online_store`` (the same ``online_write_batch`` that ``feast
materialize`` runs), entity key serialization v3, no ``key_ttl_seconds`` (Feast's default: keys never
expire). Prints one JSON line: rows written and seconds.
"""

from __future__ import annotations

import argparse
import json
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis", required=True)
    ap.add_argument("--rows", type=Path, required=True)
    ap.add_argument("--shape", choices=("row", "agg"), required=True)
    ap.add_argument("--repo", type=Path, required=True)
    args = ap.parse_args()
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Bool, Float64, Int64, String

    u = urlparse(args.redis)
    db = (u.path or "/0").lstrip("/") or "0"
    args.repo.mkdir(parents=True, exist_ok=True)
    (args.repo / "feature_store.yaml").write_text(
        textwrap.dedent(f"""\
        project: memprobe
        registry: {args.repo / "registry.db"}
        provider: local
        online_store:
          type: redis
          connection_string: "{u.hostname}:{u.port},db={db}"
        offline_store:
          type: file
        entity_key_serialization_version: 3
        """)
    )
    df = pd.read_parquet(args.rows)
    types = {"int64": Int64, "float64": Float64, "bool": Bool, "object": String, "string": String}
    schema = [Field(name=c, dtype=types[str(df[c].dtype)]) for c in df.columns if c not in ("user_id", "ts")]
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    fv = FeatureView(
        name=f"mem_{args.shape}",
        entities=[user],
        ttl=timedelta(days=30),
        source=FileSource(name="mem_src", path=str(args.rows), timestamp_field="ts"),
        online=True,
        schema=schema,
    )
    store = FeatureStore(repo_path=str(args.repo))
    store.apply([user, fv])
    t0 = time.perf_counter()
    for i in range(0, len(df), 50_000):
        store.write_to_online_store(fv.name, df.iloc[i : i + 50_000])
    print(json.dumps({"rows": len(df), "seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()
