"""Redis Cluster plumbing of the cluster online store: URL parsing, the per-shard commit script
(derived from the single-node ``COMMIT``), the global fence script, and per-node pipelines with WAIT.

Layout and why: docs/online-state.md ("Redis Cluster").
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

from ...errors import InvalidInputError
from ._resp import COMMIT

__all__ = [
    "GLOBAL_BEGIN",
    "GLOBAL_COMMIT",
    "INFLIGHT",
    "SHARD_COMMIT",
    "ClusterUrl",
    "NodeBatches",
    "cluster_client",
    "parse_cluster_url",
    "shard_of",
]

DEFAULT_SHARDS = 64


class ClusterUrl(NamedTuple):
    nodes: list[tuple[str, int]]
    username: str | None
    password: str | None
    ssl: bool


def parse_cluster_url(url: str) -> ClusterUrl:
    """``redis+cluster://[user:password@]host:port[,host:port...]`` (``rediss+cluster`` for TLS)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis+cluster", "rediss+cluster"):
        raise InvalidInputError("online_store: a cluster URL starts with redis+cluster://", field="online_store")
    netloc = parts.netloc
    user = password = None
    if "@" in netloc:
        info, netloc = netloc.rsplit("@", 1)
        user, _, pw = info.partition(":")
        user, password = (unquote(user) or None), (unquote(pw) or None)
    nodes = []
    for hp in netloc.split(","):
        host, _, port = hp.strip().rpartition(":")
        if not host or not port.isdigit():
            raise InvalidInputError(
                f"online_store: cluster node {hp!r} must be host:port (redis+cluster://h1:p1,h2:p2)",
                field="online_store",
            )
        nodes.append((host.strip("[]"), int(port)))
    return ClusterUrl(nodes, user, password, parts.scheme == "rediss+cluster")


def cluster_client(url: str, timeout_s: float, retries: int) -> Any:
    """redis-py's cluster client for ``url``: follows MOVED/ASK and, on a lost node, re-reads the
    topology (with ``retries`` > 0 it also retries the call with backoff: only for idempotent calls)."""
    from redis.backoff import ExponentialBackoff
    from redis.cluster import ClusterNode, RedisCluster
    from redis.retry import Retry

    spec = parse_cluster_url(url)
    return RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in spec.nodes],  # type: ignore[no-untyped-call]
        username=spec.username,
        password=spec.password,
        ssl=spec.ssl,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries),
    )


def shard_of(key: str, shards: int) -> int:
    """The virtual shard of an entity key (stable across processes and releases: crc32)."""
    return zlib.crc32(key.encode()) % shards


# The single-node COMMIT checks ``offsets[field] == expected``. A shard's fence instead records the
# last offset applied *to that shard* (shards a batch does not touch keep older fences), so a shard
# commit is: every fence already >= new -> done, skip (2: a replay after a crash mid-commit, which
# applies exactly the shards still missing); every fence <= expected (or unset) -> apply (1);
# anything else (a fence between expected and new: a replay cut at other offsets, or a combined
# round mixing done and pending partitions) -> 0, nothing written (the caller re-tries per partition).
_CAS_EQUAL = """for i = 1, ncas do
  if (redis.call('HGET', KEYS[1], ARGV[a]) or '') ~= ARGV[a + 1] then return 0 end
  a = a + 3
end
"""
_CAS_SHARD = """local function cmp1(x, y)
  if #x ~= #y then return #x < #y and -1 or 1 end
  if x == y then return 0 end
  return x < y and -1 or 1
end
local function cmp(x, y)  -- stream offsets: integers or 'ms-seq'
  local xa, xb = string.match(x, '^(%d+)%-?(%d*)$')
  local ya, yb = string.match(y, '^(%d+)%-?(%d*)$')
  local c = cmp1(xa or x, ya or y)
  if c ~= 0 then return c end
  return cmp1((xb ~= nil and xb ~= '') and xb or '0', (yb ~= nil and yb ~= '') and yb or '0')
end
local done = 0
for i = 1, ncas do
  local s = redis.call('HGET', KEYS[1], ARGV[a]) or ''
  if s ~= '' and cmp(s, ARGV[a + 2]) >= 0 then done = done + 1
  elseif s ~= '' and (ARGV[a + 1] == '' or cmp(s, ARGV[a + 1]) > 0) then return 0 end
  a = a + 3
end
if done > 0 then if done == ncas then return 2 end return 0 end
"""
if _CAS_EQUAL not in COMMIT:  # pragma: no cover - COMMIT's fence check changed: update _CAS_EQUAL
    raise ImportError("stores.online._cluster: COMMIT's offset check is not where expected")
SHARD_COMMIT = COMMIT.replace(_CAS_EQUAL, _CAS_SHARD)

# Before the shard commits: the global fences must equal the caller's expectation; then each
# field's in-flight offset is recorded (``~inflight|<field>``), so that an owner taking the partition
# over after a crash mid-commit replays exactly up to it in one batch (the shards that applied it
# skip it whole). KEYS[1] offsets hash; ARGV ncas, (field, expected, new)*.
INFLIGHT = "~inflight|"
GLOBAL_BEGIN = """
local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  if (redis.call('HGET', KEYS[1], ARGV[2 + 3 * i]) or '') ~= ARGV[3 + 3 * i] then return 0 end
end
for i = 0, n - 1 do redis.call('HSET', KEYS[1], '~inflight|' .. ARGV[2 + 3 * i], ARGV[4 + 3 * i]) end
return 1
"""

# The global fences (what a new partition owner resumes from), advanced after every shard committed:
# KEYS[1] offsets hash; ARGV ncas, (field, expected, new)*, channel ('' = none), message.
GLOBAL_COMMIT = """
local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  if (redis.call('HGET', KEYS[1], ARGV[2 + 3 * i]) or '') ~= ARGV[3 + 3 * i] then return 0 end
end
for i = 0, n - 1 do
  redis.call('HSET', KEYS[1], ARGV[2 + 3 * i], ARGV[4 + 3 * i])
  redis.call('HDEL', KEYS[1], '~inflight|' .. ARGV[2 + 3 * i])
end
if ARGV[2 + 3 * n] ~= '' then redis.call('PUBLISH', ARGV[2 + 3 * n], ARGV[3 + 3 * n]) end
return 1
"""

# Errors after which the topology is re-read and the batch re-sent (fenced shard commits are
# idempotent: a shard that already applied answers "done").
_RETRYABLE = ("MovedError", "AskError", "TryAgainError", "ClusterDownError", "MasterDownError", "ReadOnlyError")


class NodeBatches:
    """Scripts sent to the master of each slot, pipelined per node, optionally followed by ``WAIT``
    on the same connection (WAIT counts the writes of the connection it runs on)."""

    def __init__(self, cluster: Any, wait: tuple[int, int], deadline_s: float) -> None:
        self.r = cluster
        self.wait = wait
        self.deadline_s = deadline_s
        self._loaded: dict[tuple[str, str], bytes] = {}

    def _sha(self, client: Any, node: str, script: str) -> bytes:
        sha = self._loaded.get((node, script))
        if sha is None:
            got = client.script_load(script)
            sha = self._loaded[(node, script)] = got.encode() if isinstance(got, str) else got
        return sha

    def run(self, script: str, calls: Sequence[tuple[str, Sequence[bytes | str]]]) -> list[Any]:
        """``calls`` = [(a key naming the slot, EVALSHA arguments after the sha)]: the replies, in order.
        Connection loss, MOVED/ASK and a failover in progress re-read the topology and re-send the
        calls not yet answered, until ``deadline_s``; then the last error is raised."""
        import redis

        out: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        deadline = time.monotonic() + self.deadline_s
        delay = 0.05
        while True:
            failed: list[int] = []
            last: BaseException | None = None
            by_node: dict[str, tuple[Any, list[int]]] = {}
            try:
                nm = self.r.nodes_manager
                for i in todo:
                    node = nm.get_node_from_slot(self.r.keyslot(calls[i][0]))
                    by_node.setdefault(node.name, (node, []))[1].append(i)
            except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError) as e:  # no master yet
                last, failed = e, list(todo)
                by_node = {}
            for name, (node, idx) in by_node.items():
                try:
                    self._node(script, name, node, idx, calls, out)
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as e:
                    last = e
                    failed += idx
                except redis.exceptions.ResponseError as e:
                    if type(e).__name__ not in _RETRYABLE and not str(e).startswith(("MOVED", "ASK", "CLUSTERDOWN")):
                        raise
                    last = e
                    failed += idx
            if not failed:
                return out
            if time.monotonic() + delay > deadline:
                assert last is not None
                raise last
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
            try:
                self.r.nodes_manager.initialize()
            except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError):
                pass  # still electing: the next round retries
            todo = sorted(failed)

    def _node(self, script: str, name: str, node: Any, idx: list[int], calls: Sequence[Any], out: list[Any]) -> None:
        import redis

        client = self.r.get_redis_connection(node)
        for attempt in (0, 1):
            sha = self._sha(client, name, script)
            pipe = client.pipeline(transaction=False)
            for i in idx:
                pipe.execute_command("EVALSHA", sha, *calls[i][1])
            n, ms = self.wait
            if n:
                pipe.execute_command("WAIT", n, ms)
            res = pipe.execute(raise_on_error=False)
            if any(isinstance(x, redis.exceptions.NoScriptError) for x in res[: len(idx)]) and not attempt:
                self._loaded.pop((name, script), None)  # a restarted or promoted node: load it again
                continue
            for i, x in zip(idx, res):
                if isinstance(x, BaseException):
                    raise x
                out[i] = x
            if n and int(res[-1]) < n:
                raise redis.exceptions.ConnectionError(
                    f"WAIT: the write reached {int(res[-1])} of {n} replicas of {name} within {ms} ms"
                )
            return
