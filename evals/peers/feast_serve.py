"""A Feast repo ready for ``feast serve`` (1 entity x 10 features in Redis), for evals/bench_server.py.

    .venv-feast/bin/python evals/peers/feast_serve.py setup --dir DIR --redis URL [--users 1000]
    .venv-feast/bin/python evals/peers/feast_serve.py teardown --dir DIR

``setup`` generates events (bench_feast's generator), precomputes the window features, applies the
Feast objects and materializes them into Redis, then prints one JSON line: the repo, the ``feast serve``
command, the request body and the Redis project (for cleanup). Runs only in the Feast venv (its pins
clash with context-store's); bench_server.py calls it there when ``.venv-feast`` exists.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import warnings
from datetime import timedelta
from pathlib import Path

from bench_feast import ONLINE_10, generate_events, open_store, precompute_windows, write_repo


def setup(root: Path, redis_url: str, users: int) -> dict[str, object]:
    root.mkdir(parents=True, exist_ok=True)
    events = generate_events(5 * users, users, 2)
    feats = precompute_windows(events)
    path = root / "txn_features.parquet"
    feats.to_parquet(path, index=False)
    repo = root / "feast_repo"
    repo.mkdir(parents=True, exist_ok=True)
    project = f"ctxbench_serve_{random.getrandbits(24):06x}"
    write_repo(repo, project, "file", redis_url)
    store = open_store(repo, path, None)
    store.materialize(
        start_date=feats["ts"].min().to_pydatetime() - timedelta(seconds=1),
        end_date=feats["ts"].max().to_pydatetime() + timedelta(seconds=1),
    )
    user = str(sorted(feats["user_id"].unique())[1])
    refs = [f"txn_stats:{c}" for c in ONLINE_10]
    sample = store.get_online_features(features=refs, entity_rows=[{"user_id": user}]).to_dict()
    assert all(sample[c][0] is not None for c in ONLINE_10), sample
    feast_bin = str(Path(sys.executable).parent / "feast")
    return {
        "repo": str(repo),
        "project": project,
        "cmd": [feast_bin, "--chdir", str(repo), "serve", "-h", "127.0.0.1", "-w", "2", "--no-access-log"],
        "path": "/get-online-features",
        "body": json.dumps({"features": refs, "entities": {"user_id": [user]}}),
    }


def teardown(root: Path) -> None:
    from feast import FeatureStore

    FeatureStore(repo_path=str(root / "feast_repo")).teardown()


def main() -> None:
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["setup", "teardown"])
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--users", type=int, default=1000)
    args = ap.parse_args()
    if args.action == "setup":
        print(json.dumps(setup(args.dir, args.redis, args.users)))
    else:
        teardown(args.dir)


if __name__ == "__main__":
    main()
