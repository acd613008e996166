"""The similar items of a context: retrieval that knows the entity, then re-ranking by live features.

1. **Candidates**: the nearest items of the view to the interest vector, with the service's and the
   call's filter, and -- as one id filter (``$nin`` on the view's key) -- the items the entity has
   seen (``cs.Similar.exclude_seen``: items of its recent events and of ``seen_from``, as of the
   request time) and, for an ``as_of`` replay, the items the catalogue did not hold yet (first row
   of the view's source after ``as_of``: ``catalogue_after``).
2. **Re-ranking** (``cs.Rerank``): the candidates' feature values read in one batched read (online,
   or point-in-time from the offline log for a replay); every term normalised over the candidates
   (min-max, or reciprocal rank with ``normalize="rank"``), weighted and summed; ties by id, so the
   order is deterministic.
   ``cs.Rerank(also=cs.TopItems(feature, n))`` adds a second candidate source before scoring: the
   ``n`` highest items by a feature of the item entity not already excluded (``top_items``: a
   per-process ranking, refreshed every ``refresh_seconds`` online, point-in-time per UTC day in a
   replay), fetched from the view with the same filter and exclusions so they carry their real
   similarity to the interest vector. Items without a vector are not in the view, so not returned.
3. **Diversity** (``cs.MMR``): greedy maximal marginal relevance over the candidates' vectors.

Not versioned: an item's vector and attributes are the current ones in a replay (the view keeps one
vector per item); membership in the catalogue is point-in-time.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from ..definitions import MMR, EmbeddingView, FeatureView, Rerank, Similar, StreamSource, TopItems
from ..errors import InvalidInputError
from ..limits import SEEN_MAX, SIMILAR_K
from ..types import SimilarItem
from ..vocab.time import datetime_to_us
from .feature_columns import as_float, view_feature_columns
from .first_seen import first_seen, first_seen_us
from .first_seen import signature as _signature
from .pit_memo import pit_floats
from .scope import cache_scope
from .top_refresh import online_ranking

if TYPE_CHECKING:
    from .store import ContextStore

__all__ = [
    "Retrieval",
    "retrieve",
    "seen_items",
    "catalogue_after",
    "with_excluded",
    "rerank",
    "mmr",
    "top_items",
    "recent_items_query",
    "first_seen_us",
    "first_seen",
]


@dataclass(slots=True)
class Retrieval:
    items: list[SimilarItem]
    seen: int  # seen items left out
    unreleased: int  # items left out of a replay: not in the catalogue yet at as_of
    reranked: bool


def with_excluded(filter: Mapping[str, Any] | None, key: str, ids: Sequence[str]) -> dict[str, Any] | None:
    """``filter`` AND ``key`` not in ``ids``."""
    if not ids:
        return dict(filter) if filter else None
    out = dict(filter or {})
    spec = out.get(key)
    if spec is None:
        out[key] = {"$nin": list(ids)}
    elif isinstance(spec, Mapping):
        out[key] = (
            {**spec, "$nin": [*spec["$nin"], *ids]}
            if isinstance(spec.get("$nin"), list)
            else {
                **spec,
                "$nin": list(ids),
            }
        )
    elif isinstance(spec, (list, tuple)):
        out[key] = {"$in": list(spec), "$nin": list(ids)}
    else:
        out[key] = {"$eq": spec, "$nin": list(ids)}
    return out


def seen_items(
    store: ContextStore,
    opts: Similar,
    join_keys: dict[str, Any],
    events: Sequence[Mapping[str, Any]],
    features: Mapping[str, Any],
    before: datetime,
) -> list[str]:
    """Ids of the items the entity has seen before ``before``: its recent events' items, plus ``seen_from``."""
    key = opts.view.join_key
    ids = [str(e[key]) for e in events if e.get(key) is not None]
    src = opts.seen_from
    if isinstance(src, str):
        got = features.get(src)
        if got is not None and not isinstance(got, (str, bytes)):
            ids += [str(v) for v in list(got) if v is not None]
    elif isinstance(src, StreamSource):
        from .context_events import offline_recent_events, offline_seen_ids

        got_ids = offline_seen_ids(store, src, join_keys, key, SEEN_MAX, before)
        if got_ids is None:
            rows = offline_recent_events(store, src, join_keys, SEEN_MAX, before) or []
            got_ids = [r.get(key) for r in rows]
        ids += [str(v) for v in got_ids if v is not None]
    return list(dict.fromkeys(ids))[:SEEN_MAX]


def catalogue_after(
    store: ContextStore, view: EmbeddingView, at: datetime, sig: tuple[Any, ...] | None = None
) -> list[str]:
    """Ids of the items whose first source row is after ``at``: unknown to a replay at ``at``."""
    ids, times = first_seen(store, view, sig)
    cut = int(np.searchsorted(times, datetime_to_us(at), side="right"))
    return ids[cut:]


def catalogue_known(
    store: ContextStore, view: EmbeddingView, at: datetime, sig: tuple[Any, ...] | None = None
) -> list[str]:
    """Ids of the items whose first source row is at or before ``at``: a replay's catalogue."""
    ids, times = first_seen(store, view, sig)
    return ids[: int(np.searchsorted(times, datetime_to_us(at), side="right"))]


def recent_items_query(store: ContextStore, view: str, ids: list[str]) -> list[float] | None:
    """The mean of the unit vectors of ``ids`` (newest seen items): its cosine to an item ranks like
    the sum of that item's cosines to each of them. None when none has a vector."""
    vecs = store.vectors.get_vectors(view, ids)
    if not vecs:
        return None
    m = np.stack([np.asarray(v, dtype=np.float64) for v in vecs.values()])
    m /= np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
    mean = m.mean(axis=0)
    if not np.isfinite(mean).all() or float(np.linalg.norm(mean)) == 0.0:
        return None
    return [float(x) for x in mean]


def retrieve(
    store: ContextStore,
    opts: Similar,
    vector: Sequence[float],
    *,
    k: int,
    filter: Mapping[str, Any] | None,
    seen: Sequence[str],
    as_of: datetime | None,
    served_at: datetime,
    rerank_with: Rerank | None,
) -> Retrieval:
    view = opts.view
    # the item source's signature, once per call (each first-seen lookup would stat the files again)
    sig = _signature(store, view) if as_of is not None or (rerank_with is not None and rerank_with.newness) else None
    later = catalogue_after(store, view, as_of, sig) if as_of is not None else []
    flt: dict[str, Any] = {**(opts.filter or {})}
    for col, spec in (filter or {}).items():  # the call's conditions AND the declared ones
        flt[col] = spec if col not in flt else _and(flt[col], spec)
    excluded = list(dict.fromkeys([*seen, *later]))
    want = max(k, rerank_with.candidates) if rerank_with is not None else k
    found = store.find_similar(
        view.name, vector=vector, k=min(want, SIMILAR_K.hi), filter=with_excluded(flt or None, view.join_key, excluded)
    ).items
    if rerank_with is not None and rerank_with.also:
        found = _merge(found, _also(store, view, rerank_with, vector, flt, excluded, as_of, served_at, sig))
    items = found[:k]
    if rerank_with is not None and found:
        items = rerank(store, view, found, rerank_with, as_of=as_of, served_at=served_at, sig=sig)[:k]
    return Retrieval(items, len(seen), len(later), rerank_with is not None)


def _merge(first: list[SimilarItem], more: list[SimilarItem]) -> list[SimilarItem]:
    have = {str(i.entity_id) for i in first}
    out = list(first)
    for i in more:
        if str(i.entity_id) not in have:
            have.add(str(i.entity_id))
            out.append(i)
    return out


def _also(
    store: ContextStore,
    view: EmbeddingView,
    rr: Rerank,
    vector: Sequence[float],
    flt: Mapping[str, Any],
    excluded: Sequence[str],
    as_of: datetime | None,
    served_at: datetime,
    sig: tuple[Any, ...] | None = None,
) -> list[SimilarItem]:
    """The ``cs.TopItems`` candidates, read from the view with the filter and exclusions (so each
    carries its similarity to ``vector``)."""
    out: list[SimilarItem] = []
    skip = set(excluded)
    for src in rr.also:
        ranked = top_items(store, view, src, as_of=as_of, served_at=served_at, sig=sig)
        top = list(itertools.islice((i for i in ranked if i not in skip), src.n))  # stop at n
        if not top:
            continue
        f = dict(flt)
        spec = f.get(view.join_key)
        if spec is None:
            f[view.join_key] = {"$in": top}
        elif isinstance(spec, Mapping) and isinstance(spec.get("$in"), list):
            allowed = {str(x) for x in spec["$in"]}
            f[view.join_key] = {**spec, "$in": [i for i in top if i in allowed]}
        else:
            f[view.join_key] = _and(spec, {"$in": top})
        if f[view.join_key].get("$in") == []:
            continue
        # ``top`` holds no excluded id (``skip`` above): no ``$nin`` of the thousands of seen / later
        # ids to compile and mask a second time.
        got = store.find_similar(view.name, vector=vector, k=min(len(top), SIMILAR_K.hi), filter=f)
        out += got.items
    return out


# replay: (repo, item view, catalogue signature, feature, day) -> (computed at, ids ranked by the feature)
_TOP: dict[tuple[Any, ...], tuple[float, list[str]]] = {}
_top_lock = threading.Lock()
_TOP_KEEP = 2000  # ranked ids kept per entry: the top n left after excluding a user's seen items
_TOP_ENTRIES = 256
_DAY_US = 86_400 * 1_000_000


def top_items(
    store: ContextStore,
    view: EmbeddingView,
    src: TopItems,
    *,
    as_of: datetime | None,
    served_at: datetime,
    sig: tuple[Any, ...] | None = None,
) -> list[str]:
    """Ids of ``view``'s items by ``src.feature``, highest first (ties by id; missing values left
    out). Online: the current values, refreshed in the background every ``src.refresh_seconds``
    (``top_refresh``: the previous ranking is served meanwhile); replay: as of the start of
    ``as_of``'s UTC day, over the items known then (cached per day)."""
    if as_of is None:
        key = (cache_scope(store), view.name, src.feature, "online")
        return online_ranking(
            key, src.refresh_seconds, lambda at: _ranked(store, view, src.feature, None, at), served_at
        )
    if sig is None:
        sig = _signature(store, view)
    day = datetime_to_us(as_of) // _DAY_US * _DAY_US
    key = (*sig, src.feature, day)
    hit = _TOP.get(key)
    if hit is not None:
        return hit[1]
    with _top_lock:
        ranked = _ranked(store, view, src.feature, datetime.fromtimestamp(day / 1e6, tz=UTC), served_at, sig)
        if len(_TOP) >= _TOP_ENTRIES:
            for old in sorted(_TOP, key=lambda k: _TOP[k][0])[: len(_TOP) - _TOP_ENTRIES + 1]:
                _TOP.pop(old, None)
        _TOP[key] = (time.monotonic(), ranked)
        return ranked


def _ranked(
    store: ContextStore,
    view: EmbeddingView,
    feature: str,
    as_of: datetime | None,
    served_at: datetime,
    sig: tuple[Any, ...] | None = None,
) -> list[str]:
    """The items known at ``as_of`` (online: all) by ``feature`` as of ``as_of`` (online: ``served_at``)."""
    ids, times = first_seen(store, view, sig)
    known = ids[: int(np.searchsorted(times, datetime_to_us(as_of), side="right"))] if as_of is not None else ids
    at = as_of if as_of is not None else served_at
    x = _feature_values(store, [feature], known, as_of=as_of, served_at=at)[feature]
    ok = np.flatnonzero(np.isfinite(x))
    # highest first, ties by id (numpy sorts str by code point, like Python): no per-item Python sort
    order = ok[np.lexsort((np.asarray(known, dtype=str)[ok], -x[ok]))] if len(ok) else ok
    return [known[j] for j in order[:_TOP_KEEP].tolist()]


def _and(a: Any, b: Any) -> Any:
    def ops(spec: Any) -> dict[str, Any]:
        if isinstance(spec, Mapping):
            return {("$" + str(o).lstrip("$")): v for o, v in spec.items()}
        return {"$in": list(spec)} if isinstance(spec, (list, tuple)) else {"$eq": spec}

    oa, ob = ops(a), ops(b)
    clash = set(oa) & set(ob)
    if clash:
        raise InvalidInputError(
            f"filter: {sorted(clash)[0]} is set by both the context service and the call", field="filter"
        )
    return {**oa, **ob}


def _minmax(x: np.ndarray) -> np.ndarray:
    """Min-max over the finite values; missing (NaN) scores 0, a constant column 0 everywhere."""
    ok = np.isfinite(x)
    out = np.zeros(len(x))
    if ok.any():
        lo, hi = float(x[ok].min()), float(x[ok].max())
        if hi > lo:
            out[ok] = (x[ok] - lo) / (hi - lo)
    return out


def _rank_score(x: np.ndarray, constant: float) -> np.ndarray:
    """Reciprocal rank over the finite values: ``1 / (constant + r)``, ``r`` = 1 for the highest (ties
    share the better rank, so equal values score equally); missing (NaN) scores 0."""
    ok = np.isfinite(x)
    out = np.zeros(len(x))
    if ok.any():
        v = x[ok]
        better = np.sort(-v)  # r = 1 + the number of strictly higher values
        r = 1 + np.searchsorted(better, -v, side="left")
        out[ok] = 1.0 / (constant + r)
    return out


def _feature_values(
    store: ContextStore,
    names: Sequence[str],
    ids: list[str],
    as_of: datetime | None,
    served_at: datetime,
    universe: Callable[[], list[str]] | None = None,
) -> dict[str, np.ndarray]:
    """``view.feature`` -> value per candidate (NaN: missing), one read per view. ``universe``: every
    id a replay at ``as_of`` may ask for (``pit_memo`` computes them all once ``as_of`` repeats)."""
    defs = store.definitions
    by_view: dict[str, list[str]] = {}
    for name in names:
        v, f = name.split(".", 1)
        by_view.setdefault(v, []).append(f)
    out: dict[str, np.ndarray] = {}
    for vname, feats in by_view.items():
        view = defs.feature_view(vname)
        if not isinstance(view, FeatureView) or len(view.join_keys) != 1:
            raise InvalidInputError(f"rerank: {vname!r} must be a feature view with one join key", field="rerank")
        unknown = [f for f in feats if f not in view.feature_names]
        if unknown:
            raise InvalidInputError(f"rerank: feature view {vname!r} has no feature {unknown[0]!r}", field="rerank")
        kf = view.join_key_fields[0]

        def conv(xs: list[str], kf: Any = kf) -> list[Any]:
            return [int(i) if kf.dtype.name == "int64" and i.lstrip("-").isdigit() else i for i in xs]

        keys = conv(ids)
        if as_of is None:
            for f, x in view_feature_columns(store.features, view, feats, keys, served_at).items():
                out[f"{vname}.{f}"] = x
        else:
            every = None if universe is None else (lambda u=universe, c=conv: c(u()))
            for f, x in pit_floats(store, view, feats, keys, as_of, _offline_floats, every).items():
                out[f"{vname}.{f}"] = x
    return out


def _offline_floats(
    store: ContextStore, view: FeatureView, feats: list[str], keys: list[Any], at: datetime
) -> dict[str, np.ndarray]:
    kf = view.join_key_fields[0]
    return {f: _floats(col) for f, col in _offline_values(store, view, feats, kf, keys, at).items()}


def _floats(col: Any) -> np.ndarray:
    """An Arrow column as ``as_float`` of each value, in numpy (a replay's top items read thousands of
    values: no per-value Python objects). Integer and float columns convert exactly as ``float()``
    does (int64 -> float64 rounds to nearest); nulls -> NaN; other types -> ``as_float`` per value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = col.type
    if not (pa.types.is_integer(t) or pa.types.is_boolean(t) or t in (pa.float32(), pa.float64())):
        return np.array([as_float(v) for v in col.to_pylist()], dtype=np.float64)
    zero = False if pa.types.is_boolean(t) else 0
    # a copy: a float64 column converts zero-copy to a read-only array, and nulls are written below
    x = np.array(pc.fill_null(col, zero).to_numpy(zero_copy_only=False), dtype=np.float64)
    if col.null_count:
        x[~np.asarray(pc.is_valid(col).to_numpy(zero_copy_only=False), dtype=bool)] = np.nan
    return x


def _offline_values(
    store: ContextStore, view: FeatureView, feats: list[str], kf: Any, keys: list[Any], at: datetime
) -> dict[str, Any]:
    import pyarrow as pa

    from ..compute.training import compute_view_features

    spine = pa.table(
        {
            kf.name: pa.array(keys, type=kf.dtype.to_arrow()),
            "__t": pa.array([at] * len(keys), type=pa.timestamp("us", tz="UTC")),
        }
    )
    t = np.full(len(keys), datetime_to_us(at), dtype=np.int64)
    cols = compute_view_features(store.definitions, store.offline, view, feats, spine, t)
    return {f: cols[f] for f in feats}


def rerank(
    store: ContextStore,
    view: EmbeddingView,
    items: list[SimilarItem],
    rr: Rerank,
    *,
    as_of: datetime | None,
    served_at: datetime,
    sig: tuple[Any, ...] | None = None,
) -> list[SimilarItem]:
    """``items`` re-ordered by the weighted, normalised similarity and features (then MMR); each
    item's ``rank_score`` is its combined score."""
    ids = [str(i.entity_id) for i in items]

    def norm(x: np.ndarray) -> np.ndarray:
        return _rank_score(x, rr.rank_constant) if rr.normalize == "rank" else _minmax(x)

    score = rr.similarity * norm(np.array([i.score for i in items], dtype=np.float64))
    known = None if as_of is None else (lambda: catalogue_known(store, view, as_of, sig))
    for name, values in _feature_values(store, list(rr.features), ids, as_of, served_at, known).items():
        score = score + rr.features[name] * norm(values)
    if rr.newness:
        score = score + rr.newness * norm(first_seen_us(store, view, ids, sig))
    order = sorted(range(len(items)), key=lambda j: (-score[j], ids[j]))
    if rr.diversity is not None:
        order = mmr(store, view, ids, score, order, rr.diversity)
    return [
        SimilarItem(items[j].entity_id, items[j].score, items[j].attributes, rank_score=float(score[j])) for j in order
    ]


def mmr(
    store: ContextStore, view: EmbeddingView, ids: list[str], score: np.ndarray, order: list[int], div: MMR
) -> list[int]:
    """Greedy MMR over the candidates (relevance: the combined score, normalised); ``order`` breaks ties."""
    vecs = store.vectors.get_vectors(view.name, ids)
    if len(vecs) < 2:
        return order
    dim = len(next(iter(vecs.values())))
    m = np.stack([np.asarray(vecs.get(i, np.zeros(dim)), dtype=np.float64) for i in ids])
    m /= np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
    rel = _minmax(score)
    rank = {j: r for r, j in enumerate(order)}
    left, picked = list(order), []
    max_sim = np.full(len(ids), -np.inf)
    while left:
        penalty = np.where(np.isfinite(max_sim), max_sim, 0.0)
        best = max(left, key=lambda j: (div.lambda_ * rel[j] - (1 - div.lambda_) * penalty[j], -rank[j]))
        picked.append(best)
        left.remove(best)
        max_sim = np.maximum(max_sim, m @ m[best])
    return picked
