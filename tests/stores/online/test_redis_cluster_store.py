"""The Redis Cluster online store beyond the shared contract suite: per-shard fences (a crash between
shard commits replays exactly the missing shards), the recorded shard count, URL handling."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import context_store as cs
from context_store.config import load_config
from context_store.errors import InvalidInputError, UnavailableError
from context_store.state.codec import entity_key
from context_store.state.tiles import ViewState
from context_store.stores.online import open_online_store
from context_store.stores.online._cluster import parse_cluster_url, shard_of
from context_store.stores.online.redis_cluster import RedisClusterOnlineStore
from tests.stores.online.test_online_contract import NOW, US, assert_same, events, expected, table
from tests.support.cluster import RedisClusterProcs

pytestmark = pytest.mark.redis

AGGS = [cs.Aggregate("amount", f, w) for f in ("count", "sum", "max") for w in ("1h", "1d")]
USERS = tuple(f"u{i}" for i in range(40))


def _state() -> ViewState:
    user = cs.Entity("user", ["user_id"])
    view = cs.FeatureView("cl", [user], cs.FileSource("x.parquet", "ts"), aggregations=AGGS)
    return ViewState(view, {"amount": cs.Float64, "cat": cs.String})


@pytest.fixture
def store(redis_cluster: RedisClusterProcs, tmp_path: Path, workspace_name: str) -> Iterator[RedisClusterOnlineStore]:
    s = open_online_store(load_config(tmp_path, workspace=workspace_name, online_store=redis_cluster.url))
    assert isinstance(s, RedisClusterOnlineStore)
    yield s
    s.clear()
    s.close()


def test_replay_after_a_crash_between_shard_commits_counts_each_event_once(store: RedisClusterOnlineStore) -> None:
    st = _state()
    ev = events(600, seed=3, users=USERS)
    half = {u for u in USERS if shard_of(entity_key(["user_id"], [u]), store.shards) % 2 == 0}
    assert 0 < len(half) < len(USERS)
    first = table(ev).filter([u in half for u in ev["user_id"]])
    # The crashed commit: the shards of ``half`` committed offset 7, the global fence never advanced.
    assert store.apply_events(st, first, token=("p", "7"), now_us=NOW) == first.num_rows
    store._r.hdel(store._offsets, "cl|p")
    assert store.applied_offset(st, "p") is None
    # The new owner resumes from the global fence and replays the whole batch: those shards skip.
    store.apply_events(st, table(ev), token=("p", "7"), now_us=NOW)
    assert store.applied_offset(st, "p") == "7"
    assert store.apply_events(st, table(ev), token=("p", "7"), now_us=NOW) == 0  # a second replay: nothing
    assert store.inflight_offset(st, "p") is None  # cleared when the global fence advanced
    names = [o.name for o in st.plan.outputs]  # type: ignore[union-attr]
    for uid in USERS[:12]:
        got = store.read_features([(st, entity_key(["user_id"], [uid]))], NOW)[0].values
        assert_same(names, got, expected(st, ev, uid, NOW))  # type: ignore[arg-type]


def test_a_replay_cut_at_other_offsets_is_refused_not_double_counted(store: RedisClusterOnlineStore) -> None:
    """A shard already past the caller's fence but short of its offset: applying would count twice."""
    st = _state()
    ev = events(50, seed=4, users=("u1",))
    assert store.apply_events(st, table(ev, 0, 30), token=("p", "5"), now_us=NOW) == 30
    store._r.hdel(store._offsets, "cl|p")
    ok = store.apply_many([_item(st, table(ev, 0, 50), "9", None)], now_us=NOW)
    assert not ok  # nothing counted twice; the worker falls back (and would report the conflict)
    # The cut-short commit left its in-flight offset: a new owner replays exactly up to it.
    assert store.inflight_offset(st, "p") == "9"
    got = store.read_features([(st, entity_key(["user_id"], ["u1"]))], NOW)[0].values
    assert got is not None and got[0] == sum(1 for t in ev["ts"][:30] if t >= NOW - 3600 * US)


def _item(st: ViewState, rows: object, new: str, exp: str | None) -> object:
    from context_store.state.ops import ApplyItem

    return ApplyItem(st, rows, [("p", new, exp)], False)  # type: ignore[arg-type]


def test_shard_count_is_recorded_per_workspace(
    redis_cluster: RedisClusterProcs, tmp_path: Path, workspace_name: str
) -> None:
    a = RedisClusterOnlineStore(redis_cluster.url, workspace_name, shards=16)
    b = RedisClusterOnlineStore(redis_cluster.url, workspace_name, shards=128)
    try:
        assert a.shards == b.shards == 16  # the first opener's count; another would misroute every key
    finally:
        a.clear()
        a.close()
        b.close()


def test_every_commit_touches_one_slot_and_keys_spread_over_masters(store: RedisClusterOnlineStore) -> None:
    st = _state()
    store.apply_events(st, table(events(300, seed=5, users=USERS)), token=("p", "1"), now_us=NOW)
    per_node = [
        sum(1 for _ in store._r.get_redis_connection(n).scan_iter(match=f"cs:{{{store.workspace}|*}}:e:*"))
        for n in store._r.get_primaries()
    ]
    assert sum(per_node) == len(USERS) and all(n > 0 for n in per_node), per_node


def test_cluster_url_parsing_and_errors(tmp_path: Path) -> None:
    u = parse_cluster_url("redis+cluster://me:p%40ss@10.0.0.1:7000,[::1]:7001")
    assert u.nodes == [("10.0.0.1", 7000), ("::1", 7001)] and u.username == "me" and u.password == "p@ss"
    with pytest.raises(InvalidInputError, match="host:port"):
        parse_cluster_url("redis+cluster://10.0.0.1")
    with pytest.raises(InvalidInputError, match="redis_wait_replicas"):
        load_config(tmp_path, online_store="redis+cluster://h:1", redis_wait_replicas="x")
    cfg = load_config(tmp_path, online_store="redis+cluster://h:1", redis_wait_replicas=1, redis_wait_timeout_ms=250)
    assert cfg.is_redis and cfg.is_redis_cluster and cfg.redis_wait == (1, 250)


def test_unreachable_cluster_is_503_without_the_password(tmp_path: Path) -> None:
    from tests.support.cluster import _free_cluster_port

    url = f"redis+cluster://user:Sup3rSecret@127.0.0.1:{_free_cluster_port()}"
    with pytest.raises(UnavailableError) as e:
        open_online_store(load_config(tmp_path, online_store=url))
    assert "Sup3rSecret" not in str(e.value) and "unreachable" in str(e.value)


def test_redis_py_cluster_client_rejects_cross_slot_scripts(redis_cluster: RedisClusterProcs) -> None:
    """Why the layout exists: the single-node commit (offsets hash + entity keys) is refused."""
    r = redis.RedisCluster.from_url(f"redis://127.0.0.1:{redis_cluster.ports[0]}")
    try:
        with pytest.raises(redis.exceptions.RedisClusterException):
            r.eval("return 1", 2, "cs:x:offsets", "cs:x:e:user_id=u1")
    finally:
        r.close()


def test_replay_chunks_end_the_first_batch_at_the_cut_short_offset() -> None:
    from context_store.compute.stream.entries import offset_to_id, replay_chunks

    pending = [(offset_to_id(o), {}) for o in range(10, 20)]
    assert [len(c) for c in replay_chunks(pending, -1, 4)] == [4, 4, 2]
    assert [len(c) for c in replay_chunks(pending, 15, 4)] == [6, 4]  # 10..15 as one batch, then by 4


def test_commit_arguments_match_the_single_node_encoding() -> None:
    """The cluster store builds COMMIT's per-key arguments as a list; the single-node store RESP-encodes
    them directly: both must stay the same layout."""
    from context_store.state.ops import Ops
    from context_store.stores.online._resp import key_args_resp, resp_args
    from context_store.stores.online.redis_cluster import key_args

    ops = Ops()
    ops.set("a", "f1", b"x")
    ops.set("a", "f2", b"\x00yz")
    ops.appends["a"] = {"r": b"raw"}
    ops.dels["a"] = ["old1", "old2"]
    ops.expire["a"] = 1234
    ops.expire["b"] = None
    ops.dels["b"] = []
    for k in ("a", "b"):
        n, packed = key_args_resp(ops, k)
        args = key_args(ops, k)
        assert resp_args([a.encode() if isinstance(a, str) else a for a in args]) == packed and n == len(args)


def test_the_cluster_url_comes_from_the_environment_too(
    redis_cluster: RedisClusterProcs, tmp_path: Path, workspace_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONTEXT_STORE_ONLINE_STORE", redis_cluster.url)
    monkeypatch.setenv("CONTEXT_STORE_REDIS_WAIT_REPLICAS", "1")
    cfg = load_config(tmp_path, workspace=workspace_name)
    s = open_online_store(cfg)
    try:
        assert isinstance(s, RedisClusterOnlineStore) and s.wait == (1, 1000)
        st = _state()
        assert s.apply_events(st, table(events(20, seed=9)), token=("p", "1"), now_us=NOW) == 20  # WAIT 1 met
    finally:
        s.clear()
        s.close()
