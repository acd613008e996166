"""A served context repo for the subject-bound token tests (REST and MCP): keys, a JWT secret, a user embedding view.

The context repo of ``tests.support.context`` plus ``user_embeddings`` (keyed by ``user_id``), so that
``find_similar`` by entity has a view keyed by the subject's join key (``item_embeddings`` is keyed by item_id).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt

import context_store as cs
from context_store.server import create_app
from context_store.server.keys import KeyStore, key_store_path
from tests.support.context import build_context_repo
from tests.support.server import running_server

__all__ = ["JWT_SECRET", "AUDIENCE", "make_jwt", "subject_server"]

JWT_SECRET = "test-secret-" + "x" * 40  # an HS256 secret of more than 32 bytes
AUDIENCE = "context-store"
USER_EMBEDDINGS = """
user_embeddings = cs.EmbeddingView("user_embeddings", [user], profiles, text="segment", embedder="hash-64")
"""


def make_jwt(claims: dict[str, Any], key: Any = JWT_SECRET, algorithm: str = "HS256", **headers: Any) -> str:
    """A signed token: ``aud`` and a 5-minute ``exp`` unless ``claims`` sets them (None removes one)."""
    full = {"aud": AUDIENCE, "exp": int(time.time()) + 300, **claims}
    return jwt.encode({k: v for k, v in full.items() if v is not None}, key, algorithm=algorithm, headers=headers)


@contextmanager
def subject_server(root: Path, redis_url: str, *, mcp: bool) -> Iterator[dict[str, Any]]:
    """Serve the repo; yields url, ws, keys (bound to user_id=u1, unbound, bound ingest, metrics) and a JWT maker."""
    import redis

    ws = "t" + uuid.uuid4().hex[:12]
    auth = {"jwt": {"secret": JWT_SECRET, "audience": AUDIENCE, "subject_join_key": "user_id"}}
    repo = build_context_repo(root, config={"online_store": redis_url, "workspace": ws, "auth": auth})
    defs = repo / "features.py"
    defs.write_text(defs.read_text() + USER_EMBEDDINGS)
    with cs.ContextStore(repo) as store:
        store.apply()
        store.backfill()
        store.materialize()
        data_dir = store.config.data_dir
    keys = KeyStore(key_store_path(data_dir), cache_ttl=0.0)
    k = {
        "u1": keys.create(ws, "read", subject="user_id=u1")[0],
        "u1_ingest": keys.create(ws, "ingest", subject="user_id=u1")[0],
        "free": keys.create(ws, "read")[0],
        "ingest": keys.create(ws, "ingest")[0],
    }
    try:
        with running_server(create_app(repo, key_store=keys, mcp=mcp)) as url:
            yield {"url": url, "ws": ws, "keys": k, "repo": repo}
    finally:
        keys.close()
        r = redis.Redis.from_url(redis_url)
        found = list(r.scan_iter(match=f"*{ws}*", count=1000))
        for i in range(0, len(found), 500):
            r.delete(*found[i : i + 500])
        r.close()
