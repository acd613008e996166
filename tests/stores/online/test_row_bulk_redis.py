"""Materialize's short Redis script for row views (``ROWS``) leaves exactly what the general
``COMMIT`` path leaves: same fields in the same order, same bytes, same TTL rules, for new keys
and for keys holding a longer row, another view's fields, a TTL or the ``_p`` marker."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pytest

import context_store as cs
from context_store.config import load_config
from context_store.state.codec import entity_key
from context_store.state.tiles import ViewState
from context_store.state.writes import RowChunk, bulk_row_chunks
from context_store.stores.online import open_online_store

US = 1_000_000
NOW = int(time.time()) * US
user = cs.Entity("user", ["user_id"])
src = cs.FileSource("x.parquet", "ts")
EXTRA = ["s1", "s2", "s3", "s4"]  # four more strings: the row spans up to 3 fields
FEATS = [cs.Field("age", cs.Int64), cs.Field("city", cs.String), cs.Field("score", cs.Float64)]
FEATS += [cs.Field(x, cs.String) for x in EXTRA]


def _chunk(st: ViewState, cities: list[str], t: int) -> RowChunk:
    n = len(cities)
    table = pa.table(
        {
            "user_id": [f"u{i}" for i in range(n)],
            "ts": pa.array([t] * n, pa.timestamp("us", tz="UTC")),
            "age": list(range(n)),
            "city": cities,
            "score": [0.5] * n,
        }
        | {x: [None if i % 2 else "ab"] * n for i, x in enumerate(EXTRA)}
    )
    chunk, _ = next(bulk_row_chunks(st, table, NOW, chunk_keys=n))
    return chunk


@pytest.mark.redis
@pytest.mark.parametrize("ttl", [None, "30d"])
def test_rows_script_writes_what_commit_writes(tmp_path: Path, redis_url: str, ttl: str | None) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    ws = {side: f"t{side}{time.time_ns() % 10**9}" for side in ("ops", "rows")}
    stores = {
        side: open_online_store(load_config(tmp_path / side, workspace=w, online_store=redis_url))
        for side, w in ws.items()
    }
    st = ViewState(cs.FeatureView("p", [user], src, features=FEATS, ttl=ttl), {})
    assert len(st.row_fields) == 3
    long_city, mid_city = "Llanfairpwllgwyngyll" * 12, "Llanfairpwllgwyngyll" * 4  # 3+ pieces, 2 pieces
    try:
        # keys 0-3 pre-exist: a longer row; another view's field with the '_p' marker; a TTL'd key
        for s in stores.values():
            pre = s.prefix + "e:"  # type: ignore[attr-defined]
            s.write_ops(_chunk(st, [long_city, long_city], NOW - 10 * US).ops())
            r.hset(pre + entity_key(["user_id"], ["u2"]), mapping={"zz": b"x", "_p": b"1"})
            r.hset(pre + entity_key(["user_id"], ["u3"]), "zz", b"y")
            r.pexpire(pre + entity_key(["user_id"], ["u3"]), 10**9 if ttl else 5000)
        cities = ["Oslo", mid_city, "Lima", long_city, "Pune", mid_city, long_city * 3]
        stores["ops"].write_ops(_chunk(st, cities, NOW).ops())
        stores["rows"].write_rows(_chunk(st, cities, NOW))
        stores["rows"].flush()
        for i in range(len(cities)):
            k = entity_key(["user_id"], [f"u{i}"])
            a, b = (f"cs:{ws[side]}:e:{k}" for side in ("ops", "rows"))
            assert list(r.hgetall(a).items()) == list(r.hgetall(b).items()), i  # order too
            assert r.object("encoding", a) == r.object("encoding", b), i
            ta, tb = r.pttl(a), r.pttl(b)
            assert (ta > 0) == (tb > 0) and abs(ta - tb) < 60_000, (i, ta, tb)
        got = stores["rows"].read_features([(st, entity_key(["user_id"], [f"u{i}"])) for i in range(len(cities))], NOW)
        assert [v.values[1] for v in got] == cities
    finally:
        for s in stores.values():
            s.clear()
            s.close()


@pytest.mark.redis
def test_pipelined_row_chunks_survive_a_script_flush(tmp_path: Path, redis_url: str) -> None:
    """``write_rows(wait=False)`` keeps two chunks in flight on one connection; a SCRIPT FLUSH
    between them (NOSCRIPT on the chunks after it) is redone, and every row lands with its TTL."""
    import redis

    r = redis.Redis.from_url(redis_url)
    ws = f"tpipe{time.time_ns() % 10**9}"
    store = open_online_store(load_config(tmp_path, workspace=ws, online_store=redis_url))
    st = ViewState(cs.FeatureView("p", [user], src, features=FEATS, ttl="30d"), {})
    n = 1200  # 3 commands of CHUNK_KEYS per chunk
    table = pa.table(
        {
            "user_id": [f"u{i}" for i in range(4 * n)],
            "ts": pa.array([NOW - i * US for i in range(4 * n)], pa.timestamp("us", tz="UTC")),
            "age": list(range(4 * n)),
            "city": [f"c{i}" * (1 + i % 40) for i in range(4 * n)],  # 1 to 3 pieces
            "score": [0.5] * (4 * n),
        }
        | {x: ["ab"] * (4 * n) for x in EXTRA}
    )
    chunks = [c for c, _ in bulk_row_chunks(st, table, NOW, chunk_keys=n)]
    assert len(chunks) == 4
    try:
        for i, c in enumerate(chunks):
            store.write_rows(c, wait=False)
            if i % 2 == 0:
                r.script_flush()
        store.flush()
        pre = store.prefix + "e:"  # type: ignore[attr-defined]
        keys = [k for c in chunks for k in c.keys]
        exp = [e for c in chunks for e in c.expire]
        for k, e in zip(keys, exp):
            assert e is not None and abs(r.pttl(pre + k) - e) < 60_000, k
        got = store.read_features([(st, entity_key(["user_id"], [f"u{i}"])) for i in range(4 * n)], NOW)
        assert [v.values[1] for v in got] == table["city"].to_pylist()
    finally:
        store.clear()
        store.close()


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_materialize_counts_row_fields_as_rowchunk_does(k: int) -> None:
    import random

    from context_store.compute.materialize import _row_fields

    rng = random.Random(k)
    vals = [bytes(rng.choice([0, 1, 63, 64, 65, 127, 128, 129, 200, 400])) for _ in range(500)]
    c = RowChunk([f"f{i}" for i in range(k)], [str(i) for i in range(500)], vals, [None] * 500)
    assert _row_fields(c) == c.fields()
