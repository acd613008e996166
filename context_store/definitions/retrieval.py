"""How a context service retrieves and ranks its similar items: ``cs.Similar``, ``cs.Rerank``, ``cs.MMR``.

``cs.Similar(items, k=10)`` leaves out the items the entity has already seen (``exclude_seen``):
the items of its recent events, plus those of ``seen_from`` -- a list feature of the context's
feature service (``"user_seen.item_id_last_distinct_1000_lifetime"``: online and point-in-time for
free) or a ``cs.StreamSource`` whose events of the entity are read before the request time.
``cs.Rerank`` re-orders the candidates by live features of the item entity, and ``cs.MMR`` trades
relevance for diversity. Per-call ``k`` and ``filter`` override the declared ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from .embedding import EmbeddingView
from .sources import StreamSource

__all__ = ["Similar", "Rerank", "MMR", "TopItems", "SECTIONS", "DEFAULT_BUDGET", "check_budget"]

# The sections of a rendered context, and the default share of the token budget each may claim
# before the others (unused shares go to whoever still has lines: see serving/context_text.py).
SECTIONS = ("features", "recent_events", "memories", "similar", "knowledge")
DEFAULT_BUDGET: dict[str, float] = {
    "features": 0.25,
    "recent_events": 0.2,
    "memories": 0.1,
    "similar": 0.35,
    "knowledge": 0.1,
}


def _fail(what: str, msg: str) -> NoReturn:
    from ..errors import DefinitionError
    from .base import caller_location

    raise DefinitionError(msg, location=caller_location(), obj=what)


class MMR:
    """Maximal marginal relevance: pick ``lambda_ * relevance - (1 - lambda_) * max cosine to the picked``."""

    def __init__(self, lambda_: float = 0.7) -> None:
        if isinstance(lambda_, bool) or not isinstance(lambda_, (int, float)) or not 0.0 <= lambda_ <= 1.0:
            _fail("cs.MMR", f"lambda_ must be a number in [0, 1], got {lambda_!r}")
        self.lambda_ = float(lambda_)

    def spec(self) -> dict[str, Any]:
        return {"mmr": self.lambda_}


class TopItems:
    """A second candidate source for ``cs.Rerank(also=...)``: the ``n`` items with the highest value
    of ``feature`` (``"view.feature"`` of a feature view keyed by the item entity), so that items
    far from the interest vector but high on the feature (e.g. popular now) can be re-ranked too.
    Online: the current values, recomputed per process every ``refresh_seconds`` in the background
    (a call that finds the list due gets the current one at once; so a served list is at most
    ``refresh_seconds`` plus one refresh old; ``0``: computed on every call). In an ``as_of``
    replay: point-in-time from the offline log, as of the start of ``as_of``'s UTC day (cached per
    day; never after ``as_of``)."""

    def __init__(self, feature: str, n: int = 100, *, refresh_seconds: float = 60.0) -> None:
        if not isinstance(feature, str) or feature.count(".") != 1 or not all(feature.split(".")):
            _fail("cs.TopItems", f"feature: {feature!r} is not 'view.feature'")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 100:
            _fail("cs.TopItems", f"n must be an int in 1..100, got {n!r}")
        if (
            isinstance(refresh_seconds, bool)
            or not isinstance(refresh_seconds, (int, float))
            or not math.isfinite(refresh_seconds)
            or refresh_seconds < 0
        ):
            _fail("cs.TopItems", f"refresh_seconds must be a finite number >= 0, got {refresh_seconds!r}")
        self.feature = feature
        self.n = n
        self.refresh_seconds = float(refresh_seconds)

    def spec(self) -> dict[str, Any]:
        return {"top_items": self.feature, "n": self.n, "refresh_seconds": self.refresh_seconds}


NORMALIZE = ("minmax", "rank")


class Rerank:
    """Candidates re-scored by ``similarity * sim + sum(weight * feature)``; ``features`` are
    ``"view.feature"`` of feature views keyed by the item entity, read in one batched online read (as
    of the replay time for ``as_of``). ``candidates``: how many nearest items are re-ranked; ``also``:
    more candidates from other sources (``cs.TopItems``), merged with the nearest ones before scoring.

    ``normalize``: how each term is put on one scale over the candidates. ``"minmax"`` (default):
    ``(x - min) / (max - min)``; ``"rank"``: reciprocal-rank fusion, ``1 / (rank_constant + r)`` with
    ``r`` = 1 for the candidate highest on that term -- robust when the terms come from different
    sources (a cosine and a heavy-tailed count: min-max lets the largest count squash the rest).
    A missing value scores 0 either way.

    ``newness``: the weight of how recently each candidate first appeared in the item view's source
    (its first row: for an interaction-trained view, its first interaction), normalised like the other
    terms. Point-in-time by construction: a replay only holds items first seen before ``as_of``, and
    that first time never changes later. On MovieLens it lifted HR@10 on the validation cut-offs
    (evals/results/recs_tuning.md): users rate the films of the day.
    Default 0: off, and left out of the spec."""

    def __init__(
        self,
        features: Mapping[str, float] | None = None,
        *,
        similarity: float = 1.0,
        diversity: MMR | None = None,
        candidates: int = 50,
        also: TopItems | Sequence[TopItems] = (),
        normalize: str = "minmax",
        rank_constant: float = 10.0,
        newness: float = 0.0,
    ) -> None:
        if normalize not in NORMALIZE:
            _fail("cs.Rerank", f"normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}")
        if (
            isinstance(rank_constant, bool)
            or not isinstance(rank_constant, (int, float))
            or not math.isfinite(rank_constant)
            or rank_constant < 0
        ):
            _fail("cs.Rerank", f"rank_constant must be a finite number >= 0, got {rank_constant!r}")
        extra = [also] if isinstance(also, TopItems) else also
        if (
            isinstance(extra, (str, bytes))
            or not isinstance(extra, Sequence)
            or not all(isinstance(x, TopItems) for x in extra)
        ):
            _fail("cs.Rerank", "also must be a cs.TopItems or a list of them")
        feats = dict(features or {})
        for name, w in feats.items():
            if not isinstance(name, str) or name.count(".") != 1 or not all(name.split(".")):
                _fail("cs.Rerank", f"features: {name!r} is not 'view.feature'")
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                _fail("cs.Rerank", f"features: the weight of {name!r} must be a finite number, got {w!r}")
        if isinstance(similarity, bool) or not isinstance(similarity, (int, float)) or not math.isfinite(similarity):
            _fail("cs.Rerank", f"similarity must be a finite number, got {similarity!r}")
        if isinstance(newness, bool) or not isinstance(newness, (int, float)) or not math.isfinite(newness):
            _fail("cs.Rerank", f"newness must be a finite number, got {newness!r}")
        if diversity is not None and not isinstance(diversity, MMR):
            _fail("cs.Rerank", "diversity must be a cs.MMR")
        if isinstance(candidates, bool) or not isinstance(candidates, int) or not 1 <= candidates <= 100:
            _fail("cs.Rerank", f"candidates must be an int in 1..100, got {candidates!r}")
        self.features = {k: float(v) for k, v in feats.items()}
        self.similarity = float(similarity)
        self.diversity = diversity
        self.candidates = candidates
        self.also: tuple[TopItems, ...] = tuple(extra)
        self.normalize = normalize
        self.rank_constant = float(rank_constant)
        self.newness = float(newness)

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "features": dict(self.features),
            "similarity": self.similarity,
            "diversity": self.diversity.spec() if self.diversity else None,
            "candidates": self.candidates,
        }
        if self.also:  # only when set: existing definitions keep their spec
            out["also"] = [x.spec() for x in self.also]
        if self.normalize != "minmax":
            out["normalize"] = {"method": self.normalize, "rank_constant": self.rank_constant}
        if self.newness:  # only when set: existing definitions keep their spec
            out["newness"] = self.newness
        return out


class Similar:
    """The similar items of a context: ``cs.Similar(items, k=10, exclude_seen=True, seen_from=..., filter=...)``.

    ``recent_items=n``: the query is the entity's last ``n`` seen items (its recent events' items and
    ``seen_from``, newest first) instead of its interest vector -- item-kNN from its recent items: a
    candidate's similarity is the mean of its cosines to those items (one search with the mean of
    their unit vectors). An entity with none of them in the view falls back to its interest vector."""

    def __init__(
        self,
        view: EmbeddingView,
        k: int = 10,
        *,
        exclude_seen: bool = True,
        seen_from: StreamSource | str | None = None,
        filter: Mapping[str, Any] | None = None,
        rerank: Rerank | None = None,
        recent_items: int | None = None,
    ) -> None:
        if not isinstance(view, EmbeddingView):
            _fail("cs.Similar", "view must be a cs.EmbeddingView")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 100:
            _fail("cs.Similar", f"k must be an int in 1..100, got {k!r}")
        if not isinstance(exclude_seen, bool):
            _fail("cs.Similar", "exclude_seen must be True or False")
        if seen_from is not None and not isinstance(seen_from, (StreamSource, str)):
            _fail("cs.Similar", "seen_from must be a cs.StreamSource or a 'view.feature' list feature")
        if filter is not None and not isinstance(filter, Mapping):
            _fail("cs.Similar", "filter must be a dict of {attribute: value | {op: value}}")
        if rerank is not None and not isinstance(rerank, Rerank):
            _fail("cs.Similar", "rerank must be a cs.Rerank")
        if recent_items is not None and (
            isinstance(recent_items, bool) or not isinstance(recent_items, int) or not 1 <= recent_items <= 1000
        ):
            _fail("cs.Similar", f"recent_items must be None or an int in 1..1000, got {recent_items!r}")
        self.view = view
        self.k = k
        self.exclude_seen = exclude_seen
        self.seen_from = seen_from
        self.filter = dict(filter) if filter else None
        self.rerank = rerank
        self.recent_items = recent_items

    def spec(self) -> dict[str, Any]:
        src = self.seen_from
        extra: dict[str, Any] = {"recent_items": self.recent_items} if self.recent_items else {}
        return {
            **extra,
            "view": self.view.name,
            "k": self.k,
            "exclude_seen": self.exclude_seen,
            "seen_from": src.name if isinstance(src, StreamSource) else src,
            "filter": self.filter,
            "rerank": self.rerank.spec() if self.rerank else None,
        }


def check_budget(budget: Mapping[str, float] | None) -> dict[str, float] | None:
    """Section -> share of ``max_tokens`` (shares of the named sections; the rest keep the defaults)."""
    if budget is None:
        return None
    if not isinstance(budget, Mapping) or not budget:
        raise ValueError("budget must be a dict of {section: share}")
    out = dict(DEFAULT_BUDGET)
    for name, share in budget.items():
        if name not in SECTIONS:
            raise ValueError(f"budget: unknown section {name!r}; sections: {', '.join(SECTIONS)}")
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
            raise ValueError(f"budget: the share of {name!r} must be a number in [0, 1], got {share!r}")
        out[name] = float(share)
    return out
