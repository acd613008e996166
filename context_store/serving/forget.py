"""Forget an entity (right to erasure): ``ContextStore.forget`` and the audit of forgets.

Order matters: the tombstone is recorded FIRST (``compute/tombstones.py``), so a backfill, a
materialize, a push or a worker running meanwhile already drops the entity; then every store is
erased: each offline table with a column named like the join key (``src__``, ``fv__``, feature
logs, memories: any table, so tables added later are covered), online state and recent-events
lists, vectors (Lance rows, old versions, FAISS index and snapshot). Last, an audit entry without
the entity's data: who, when, the join key, a salted hash of the value, the counts.

Layout and guarantees: docs/erasure.md.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ..access import entity_id_value
from ..compute import tombstones
from ..errors import InvalidInputError, NotFoundError
from ..stores.offline.base import sql_equals
from ..vocab.tables import FORGET_AUDIT_TABLE, TOMBSTONE_TABLE
from ..vocab.time import us_to_datetime

if TYPE_CHECKING:
    from .store import ContextStore

__all__ = ["ForgetResult", "forget", "forget_entity", "forget_audit", "cli_actor", "value_hash"]

_TS = pa.timestamp("us", tz="UTC")
_SYSTEM_TABLES = frozenset({TOMBSTONE_TABLE, FORGET_AUDIT_TABLE})  # never erased by the generic rule
_SALT_META = "forget:salt"  # online meta: the audit's hash salt, one per namespace (all hosts)
_AUDIT_SCHEMA = pa.schema(
    [
        ("at", _TS),
        ("actor", pa.string()),
        ("join_key", pa.string()),
        ("value_hash", pa.string()),
        ("counts", pa.string()),  # JSON: {"offline": {table: n}, "online": {...}, "vectors": {table: n}}
        ("total", pa.int64()),
    ]
)


@dataclass(frozen=True)
class ForgetResult:
    """What one forget erased, per store. ``forgotten_at``: rows and events at or before it never
    come back (backfill, materialize, late events, replays); newer activity is new data."""

    join_key: str
    value: str
    forgotten_at: datetime
    actor: str
    offline: dict[str, int] = field(default_factory=dict)  # offline table -> rows deleted
    online: dict[str, int] = field(default_factory=dict)  # "entities" / "recent_lists" -> keys deleted
    vectors: dict[str, int] = field(default_factory=dict)  # vector table -> items deleted

    @property
    def total(self) -> int:
        return sum(self.offline.values()) + sum(self.online.values()) + sum(self.vectors.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "join_key": self.join_key,
            "value": self.value,
            "forgotten_at": self.forgotten_at.isoformat().replace("+00:00", "Z"),
            "actor": self.actor,
            "offline": dict(self.offline),
            "online": dict(self.online),
            "vectors": dict(self.vectors),
            "total": self.total,
        }


def cli_actor() -> str:
    """The audit's actor for a command run by a person: ``cli:<user>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def _check(store: ContextStore, join_keys: Mapping[str, Any]) -> tuple[str, str]:
    if not isinstance(join_keys, Mapping) or len(join_keys) != 1:
        raise InvalidInputError(
            "forget takes exactly one join key and value, e.g. {'user_id': 'u0001'}", field="join_keys"
        )
    ((key, raw),) = join_keys.items()
    known = sorted({k for e in store.definitions.entities.values() for k in e.join_keys})
    if key not in known:
        raise InvalidInputError(
            f"{key!r} is not a join key of any entity; known: {', '.join(known) or 'none'}", field="join_keys"
        )
    value = entity_id_value(raw, key, False, field=f"join_keys.{key}", erasure=True)[0]
    return key, value


def forget(store: ContextStore, join_keys: Mapping[str, Any], actor: str | None = None) -> ForgetResult:
    """Erase the entity ``join_keys`` (one join key) from every store; see the module docstring."""
    key, value = _check(store, join_keys)
    offline = store.offline
    at_us = time.time_ns() // 1000
    tombstones.record(offline, key, value, at_us)  # FIRST: every compute path drops it from now on
    store.flush_feature_log()  # vectors served before the forget and still queued: erased below with the rest
    erased_offline: dict[str, int] = {}
    for table in offline.tables():
        if table in _SYSTEM_TABLES:
            continue
        try:
            pred = sql_equals(offline.schema(table), key, value)
        except NotFoundError:  # dropped meanwhile
            continue
        if pred is None:
            continue
        n = offline.delete_where(table, pred)
        if n:
            offline.purge(table)  # deleted rows leave the disk (Lance keeps old versions)
            erased_offline[table] = n
    gone = store.online.forget_entity(key, value)
    vectors = store.vector_collections.forget_entity(key, value)
    result = ForgetResult(
        key,
        value,
        us_to_datetime(at_us),
        actor or cli_actor(),
        erased_offline,
        {"entities": gone.entities, "recent_lists": gone.recent_lists},
        vectors,
    )
    _audit(store, result, at_us)
    return result


def forget_entity(store: ContextStore, entity: str, entity_id: str, actor: str | None = None) -> ForgetResult:
    """``forget`` by entity definition name (REST): 404 for an unknown entity; one join key only."""
    ent = store.definitions.entities.get(entity)
    if ent is None:
        known = ", ".join(sorted(store.definitions.entities)) or "none"
        raise NotFoundError(f"unknown entity {entity!r}; known: {known}", field="entity")
    if len(ent.join_keys) != 1:
        raise InvalidInputError(
            f"entity {entity!r} has join keys {ent.join_keys}: forget one of them with the SDK or CLI "
            "(context-store forget KEY=VALUE)",
            field="entity",
        )
    return forget(store, {ent.join_keys[0]: entity_id}, actor)


# -- audit ---------------------------------------------------------------------------------
def _salt(store: ContextStore) -> bytes:
    """One random salt per online namespace (shared by every host): hashes stay comparable, and
    the audit alone does not give the value back (no dictionary attack without the salt)."""
    return store.online.claim_meta(_SALT_META, os.urandom(16).hex().encode())


def value_hash(store: ContextStore, join_key: str, value: str) -> str:
    """The audit's stand-in for a value: HMAC-SHA256(salt, join_key=value), hex."""
    return hmac.new(_salt(store), f"{join_key}={value}".encode(), hashlib.sha256).hexdigest()


def _audit(store: ContextStore, r: ForgetResult, at_us: int) -> None:
    counts = {"offline": r.offline, "online": r.online, "vectors": r.vectors}
    row = {
        "at": pa.array([at_us], _TS),
        "actor": [r.actor],
        "join_key": [r.join_key],
        "value_hash": [value_hash(store, r.join_key, r.value)],
        "counts": [json.dumps(counts, sort_keys=True)],
        "total": [r.total],
    }
    store.offline.append(FORGET_AUDIT_TABLE, pa.table(row, schema=_AUDIT_SCHEMA))


def forget_audit(store: ContextStore, join_keys: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The audit of forgets, oldest first; ``join_keys``: only the forgets of that entity."""
    if not store.offline.exists(FORGET_AUDIT_TABLE):
        return []
    rows = store.offline.read(FORGET_AUDIT_TABLE).sort_by([("at", "ascending")]).to_pylist()
    out = []
    want = None
    if join_keys is not None:
        key, value = _check(store, join_keys)
        want = (key, value_hash(store, key, value))
    for row in rows:
        if want is not None and (row["join_key"], row["value_hash"]) != want:
            continue
        out.append({**row, "at": row["at"].isoformat().replace("+00:00", "Z"), "counts": json.loads(row["counts"])})
    return out
