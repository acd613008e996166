"""Plans: the diff between the applied registry and the repo's definitions.

Each change lists field-level diffs, what it forces (``rebackfill``, ``rematerialize``,
``reindex``) and whether it is breaking (clients or stored data would silently change).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..definitions import DType
from ..definitions.dtypes import Array, Bool, Embedding, Float64, Int64, String, Timestamp

__all__ = [
    "Plan",
    "Change",
    "FieldDiff",
    "compute_plan",
    "dtype_to_str",
    "dtype_from_str",
    "REBACKFILL",
    "REMATERIALIZE",
    "REINDEX",
]

REBACKFILL = "rebackfill"
REMATERIALIZE = "rematerialize"
REINDEX = "reindex"

# Order of kinds in a plan: dependencies first.
TABLE_ORDER = (
    "entities",
    "sources",
    "feature_views",
    "realtime_views",
    "embedding_views",
    "knowledge",
    "feature_services",
    "context_services",
)

_SCALARS = {"int64": Int64, "float64": Float64, "string": String, "bool": Bool, "timestamp": Timestamp}


def dtype_to_str(d: DType) -> str:
    """A compact, parseable name: ``float64``, ``array<string>``, ``embedding[384]``."""
    if isinstance(d, Embedding):
        return f"embedding[{d.dim}]"
    if isinstance(d, Array):
        return f"array<{dtype_to_str(d.element)}>"
    return d.name


def dtype_from_str(s: str) -> DType:
    if s.startswith("embedding[") and s.endswith("]"):
        return Embedding(int(s[10:-1]))
    if s.startswith("array<") and s.endswith(">"):
        return Array(dtype_from_str(s[6:-1]))
    try:
        return _SCALARS[s]
    except KeyError:
        raise ValueError(f"unknown dtype {s!r}") from None


@dataclass
class FieldDiff:
    path: str
    old: Any
    new: Any

    def __str__(self) -> str:
        o, n = self.old, self.new
        if isinstance(o, list) and isinstance(n, list) and all(isinstance(x, (str, int, float)) for x in o + n):
            added = [x for x in n if x not in o]
            removed = [x for x in o if x not in n]
            parts = [f"+{x}" for x in added] + [f"-{x}" for x in removed]
            return f"{self.path}: {' '.join(parts) if parts else 'reordered'}"
        return f"{self.path}: {_short(o)} -> {_short(n)}"


@dataclass
class Change:
    action: str  # "add" | "change" | "remove"
    kind: str  # the object's kind, e.g. "feature_view", "stream_source"
    name: str
    table: str  # RepoDefinitions attribute, e.g. "feature_views"
    diffs: list[FieldDiff] = field(default_factory=list)
    forces: list[str] = field(default_factory=list)
    breaking: bool = False
    reasons: list[str] = field(default_factory=list)  # why it is breaking
    affects: list[str] = field(default_factory=list)  # dependents that the forced work covers

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "kind": self.kind,
            "name": self.name,
            "diffs": [{"path": d.path, "old": d.old, "new": d.new} for d in self.diffs],
            "forces": self.forces,
            "breaking": self.breaking,
            "reasons": self.reasons,
            "affects": self.affects,
        }


@dataclass
class Plan:
    workspace: str
    from_version: int
    changes: list[Change]
    to_version: int | None = None  # set by apply
    definitions: Any = None  # the repo's RepoDefinitions the plan was computed from
    records: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    @property
    def is_empty(self) -> bool:
        return not self.changes

    @property
    def breaking(self) -> list[Change]:
        return [c for c in self.changes if c.breaking]

    @property
    def adds(self) -> list[Change]:
        return [c for c in self.changes if c.action == "add"]

    @property
    def updates(self) -> list[Change]:
        return [c for c in self.changes if c.action == "change"]

    @property
    def removes(self) -> list[Change]:
        return [c for c in self.changes if c.action == "remove"]

    @property
    def forces(self) -> set[str]:
        return {f for c in self.changes for f in c.forces}

    def to_dict(self) -> dict[str, Any]:
        return {
            "workspace": self.workspace,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "changes": [c.to_dict() for c in self.changes],
        }

    def __str__(self) -> str:
        head = f"Workspace '{self.workspace}'"
        head += f" (applied version {self.from_version})" if self.from_version else " (nothing applied yet)"
        if self.is_empty and not self.from_version:
            return f"{head}: no definitions found in the repo (write *.py files, or run `context-store init DIR`)."
        if self.is_empty:
            return f"{head}: no changes; the registry matches the repo."
        lines = [f"{head}:"]
        sym = {"add": "+", "change": "~", "remove": "-"}
        for c in self.changes:
            line = f"  {sym[c.action]} {c.kind.replace('_', ' ')} {c.name}"
            if c.forces:
                line += f"   forces: {', '.join(c.forces)}"
            if c.breaking:
                line += "   [BREAKING]"
            lines.append(line)
            for d in c.diffs:
                lines.append(f"      {d}")
            for r in c.reasons:
                lines.append(f"      ! {r}")
            if c.affects:
                lines.append(f"      affects: {', '.join(c.affects)}")
        lines.append(
            f"{len(self.changes)} change(s): {len(self.adds)} to add, {len(self.updates)} to change, "
            f"{len(self.removes)} to remove."
        )
        if self.breaking:
            lines.append(f"{len(self.breaking)} breaking change(s): `apply` needs --force.")
        todo = [w for w in (REBACKFILL, REMATERIALIZE, REINDEX) if w in self.forces]
        if todo:
            verbs = {REBACKFILL: "backfill", REINDEX: "backfill", REMATERIALIZE: "materialize"}
            order = [w for w in (REBACKFILL, REINDEX, REMATERIALIZE) if w in todo]
            lines.append(
                "After apply, run: " + ", then ".join(dict.fromkeys(f"context-store {verbs[w]}" for w in order)) + "."
            )
        return "\n".join(lines)


def _short(v: Any) -> str:
    if v is None:
        return "(none)"
    if isinstance(v, dict) and {"column", "function", "window"} <= set(v):  # an aggregation
        extra = "".join(f", {k}={v[k]}" for k in ("n", "percentile") if v.get(k) is not None)
        return f"{v['function']}({v['column']}, {v['window']}{extra})"
    s = json.dumps(v, sort_keys=True, default=str)
    return s if len(s) <= 80 else s[:77] + "..."


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a spec into ``path -> value``; lists of named dicts are keyed by name."""
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for k in sorted(value):
            out.update(_flatten(value[k], f"{prefix}.{k}" if prefix else str(k)))
        if not value and prefix:
            out[prefix] = {}
    elif (
        isinstance(value, list)
        and value
        and all(isinstance(v, dict) and "name" in v for v in value)
        and len({v["name"] for v in value}) == len(value)
    ):
        for v in value:
            out[f"{prefix}[{v['name']}]"] = {k: x for k, x in v.items() if k != "name"} or v["name"]
    elif (
        isinstance(value, list)
        and value
        and all(isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) for v in value)
        and len({v[0] for v in value}) == len(value)
    ):  # a feature service's [[view, [features]], ...]
        for view, feats in value:
            out[f"{prefix}[{view}]"] = feats
        out[f"{prefix}.views"] = [v[0] for v in value]
    else:
        out[prefix] = value
    return out


def _diff(old: dict[str, Any], new: dict[str, Any]) -> list[FieldDiff]:
    fo, fn = _flatten(old), _flatten(new)
    return [FieldDiff(k, fo.get(k), fn.get(k)) for k in sorted(set(fo) | set(fn)) if fo.get(k) != fn.get(k)]


def _top(diffs: list[FieldDiff]) -> set[str]:
    return {d.path.split(".")[0].split("[")[0] for d in diffs}


def _dependents(records: dict[str, dict[str, Any]], table: str, name: str) -> list[str]:
    """Names (``kind name``) of objects in ``records`` that reference ``table/name``."""
    out = []
    for key, rec in records.items():
        spec = rec["spec"]
        t = key.split("/", 1)[0]
        uses = False
        if table == "entities" and t in ("feature_views", "embedding_views"):
            uses = name in spec.get("entities", [])
        elif table == "entities" and t == "context_services":
            uses = spec.get("entity") == name
        elif table == "sources" and t in ("feature_views", "embedding_views"):
            uses = spec.get("source") == name
        elif table == "sources" and t == "context_services":
            uses = (spec.get("recent_events") or [None])[0] == name
        elif table in ("feature_views", "realtime_views") and t == "feature_services":
            uses = any(v == name for v, _ in spec.get("features", []))
        elif table in ("feature_views", "realtime_views") and t == "realtime_views":
            uses = name in spec.get("sources", [])
        elif table == "feature_services" and t == "context_services":
            uses = spec.get("features") == name
        elif table == "embedding_views" and t == "context_services":
            uses = (spec.get("similar") or [None])[0] == name
        elif table == "knowledge" and t == "context_services":
            uses = (spec.get("knowledge") or [None])[0] == name
        if uses:
            out.append(f"{spec['kind'].replace('_', ' ')} {spec['name']}")
    return sorted(out)


def _view_forces(spec: dict[str, Any]) -> list[str]:
    out = []
    if spec.get("offline", True):
        out.append(REBACKFILL)
    if spec.get("online", True):
        out.append(REMATERIALIZE)
    return out


def _classify_change(table: str, old: dict[str, Any], new: dict[str, Any], c: Change) -> None:
    """Fill ``forces``/``breaking``/``reasons`` of a change from its old and new record."""
    so, sn = old["spec"], new["spec"]
    top = _top(c.diffs)

    def force(*ws: str) -> None:
        for w in ws:
            if w not in c.forces:
                c.forces.append(w)

    def breaks(reason: str) -> None:
        c.breaking = True
        c.reasons.append(reason)

    if table == "entities":
        if "join_keys" in top:
            force(REBACKFILL, REMATERIALIZE)
            breaks("join keys changed: every view of this entity is rebuilt and online keys change")
    elif table == "sources":
        old_fields = {f["name"]: f["dtype"] for f in so.get("schema") or []}
        new_fields = {f["name"]: f["dtype"] for f in sn.get("schema") or []}
        gone = [n for n in old_fields if n not in new_fields and sn.get("schema") is not None]
        retyped = [n for n in old_fields if n in new_fields and old_fields[n] != new_fields[n]]
        if gone or retyped:
            breaks(f"schema field(s) {', '.join(gone + retyped)} removed or retyped: producers and views break")
        if "timestamp_field" in top:
            breaks("timestamp_field changed: every event's time changes")
        if top & {"schema", "timestamp_field", "path", "format", "batch_source"}:
            force(REBACKFILL, REMATERIALIZE)
    elif table == "feature_views":
        core = top & {"entities", "source", "transform", "timestamp_field", "aggregation_interval_s"}
        if core:
            force(*_view_forces(sn))
            breaks(f"{', '.join(sorted(core))} changed: every feature value may change")
        for part in ("aggregations", "features"):
            oi = {a["name"]: a for a in so.get(part, [])}
            ni = {a["name"]: a for a in sn.get(part, [])}
            changed = [n for n in oi if n in ni and oi[n] != ni[n]]
            removed = [n for n in oi if n not in ni]
            if changed or removed:
                breaks(f"feature(s) {', '.join(changed + removed)} changed or removed")
            if changed or removed or any(n not in oi for n in ni):
                force(*_view_forces(sn))
        ot, nt = old.get("feature_types", {}), new.get("feature_types", {})
        retyped = [n for n in ot if n in nt and ot[n] != nt[n]]
        if retyped:
            force(*_view_forces(sn))
            breaks(f"type of feature(s) {', '.join(retyped)} changed")
        if "ttl_s" in top:
            force(REMATERIALIZE)
        if "online" in top:
            if sn.get("online"):
                force(REMATERIALIZE)
            else:
                breaks("online serving turned off: services reading this view lose it")
        if "offline" in top and sn.get("offline"):
            force(REBACKFILL)
    elif table == "realtime_views":
        oo = {f["name"]: f["dtype"] for f in so.get("output", [])}
        no = {f["name"]: f["dtype"] for f in sn.get("output", [])}
        bad = [n for n in oo if no.get(n) != oo[n]]
        if bad:
            breaks(f"output field(s) {', '.join(bad)} removed or retyped")
    elif table == "embedding_views":
        if top & {"embedder", "entities"}:
            breaks("embedder or entity changed: stored vectors are incompatible")
        if top & {"embedder", "entities", "source", "text", "attributes", "index"}:
            force(REINDEX)
    elif table == "knowledge":
        if "embedder" in top:
            breaks("embedder changed: stored vectors are incompatible")
        if top & {"embedder", "source", "text", "chunk_size", "chunk_overlap"}:
            force(REINDEX)
    elif table == "feature_services":
        of = [f"{v}.{n}" for v, ns in so.get("features", []) for n in ns]
        nf = set(f"{v}.{n}" for v, ns in sn.get("features", []) for n in ns)
        gone = [f for f in of if f not in nf]
        if gone:
            breaks(f"feature(s) {', '.join(gone[:5])}{' ...' if len(gone) > 5 else ''} removed: clients lose them")
    elif table == "context_services":
        if "entity" in top:
            breaks("entity changed: callers' ids mean something else")


def compute_plan(
    old: dict[str, dict[str, Any]],
    new: dict[str, dict[str, Any]],
    workspace: str,
    from_version: int,
) -> Plan:
    """Diff two registries given as ``"table/name" -> {"spec", "feature_types", ...}``."""
    changes: list[Change] = []

    def order(key: str) -> tuple[int, str]:
        t = key.split("/", 1)[0]
        return (TABLE_ORDER.index(t) if t in TABLE_ORDER else 99, key)

    for key in sorted(set(old) | set(new), key=order):
        table, name = key.split("/", 1)
        o, n = old.get(key), new.get(key)
        if o is None:
            assert n is not None
            c = Change("add", n["spec"]["kind"], name, table)
            if table == "feature_views":
                c.forces = _view_forces(n["spec"])
            elif table in ("embedding_views", "knowledge"):
                c.forces = [REINDEX]
            changes.append(c)
        elif n is None:
            c = Change("remove", o["spec"]["kind"], name, table)
            users = _dependents(old, table, name)
            if table in ("feature_views", "realtime_views") and users:
                c.breaking = True
                c.reasons.append(f"was used by {', '.join(users)}")
            elif table in ("feature_services", "context_services"):
                c.breaking = True
                c.reasons.append("clients calling it will get 'not found'")
            elif table in ("embedding_views", "knowledge"):
                c.breaking = True
                c.reasons.append("its vectors are no longer served")
            elif o["spec"]["kind"] in ("stream_source", "memory"):
                c.breaking = True
                c.reasons.append("producers pushing to it will be rejected")
            changes.append(c)
        else:
            cmp_o = {**o["spec"], "feature_types": o.get("feature_types", {})}
            cmp_n = {**n["spec"], "feature_types": n.get("feature_types", {})}
            diffs = _diff(cmp_o, cmp_n)
            if not diffs:
                continue
            c = Change("change", n["spec"]["kind"], name, table, diffs=diffs)
            _classify_change(table, o, n, c)
            if c.forces and table in ("entities", "sources"):
                c.affects = _dependents(new, table, name)
            changes.append(c)
    return Plan(workspace=workspace, from_version=from_version, changes=changes)
