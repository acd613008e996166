"""Catalog search: a lexical score over names, feature names, tags, descriptions and owners, blended with a
semantic score from the workspace's embedder.

The workspace's embedder is the one its embedding views, knowledge collections and declared memories use
(the most used; a built-in memory does not count: it is there without being asked for). A workspace that
declares none is searched lexically only, so ``search`` never loads a model the workspace does not use.
Item texts are embedded once per catalog, i.e. per registry version (``catalog.catalog_of``).

Scores are in [0, 1]: ``lexical`` = the weighted share of query words found (a word in the name counts
most, rare words more than common ones (IDF), question words not at all; items with more of the words
first), ``semantic`` = the cosine above a noise floor, rescaled; with
an embedder the score is their mean. An item whose name is the query scores 1.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from ..definitions import Memory
from ..errors import InvalidInputError
from ..limits import CATALOG_K, CATALOG_K_DEFAULT, CONTEXT_QUERY_CHARS
from .catalog import CatalogHit, CatalogItem

if TYPE_CHECKING:
    from ..registry.repo import RepoDefinitions

__all__ = ["CatalogIndex", "workspace_embedder", "tokens", "SEMANTIC_FLOOR"]

_log = logging.getLogger("context_store.catalog")

SEMANTIC_FLOOR = 0.2  # cosines below this are noise for MiniLM (unrelated short texts) and for hash collisions
_WEIGHTS = {"name": 3.0, "features": 2.0, "tags": 2.0, "kind": 1.0, "description": 1.0, "owner": 1.0}
_TOP = max(_WEIGHTS.values())
_WORD = re.compile(r"[a-z0-9]+")
# Words of a question that match everything and mean nothing here (dropped unless the query is only these).
_STOP = frozenset(
    "a an and are as at be by do does for from has have how i in is it me much many my of on or per the this "
    "to was what when where which who with".split()
)


def tokens(text: str) -> list[str]:
    """Lowercase words (``_``, ``.``, ``-`` split words: ``amount_sum_1d`` -> amount, sum, 1d), a plural's
    ``s`` dropped so "transactions" finds "transaction"."""
    return [
        w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in _WORD.findall(text.lower())
    ]


def workspace_embedder(defs: RepoDefinitions) -> str | None:
    """The embedder the workspace declares (most used), or None: lexical search only."""
    names = [v.embedder for v in defs.embedding_views.values()] + [k.embedder for k in defs.knowledge.values()]
    names += [m.embedder for m in defs.sources.values() if isinstance(m, Memory) and m.location != "<built-in>"]
    return Counter(names).most_common(1)[0][0] if names else None


def _fields(item: CatalogItem) -> dict[str, set[str]]:
    return {
        "name": set(tokens(item.name)),
        "features": {t for f in item.features for t in tokens(f.name)},
        "tags": {t for k, v in item.tags.items() for t in tokens(f"{k} {v}")},
        "kind": set(tokens(item.kind)),
        "description": set(tokens(item.description)),
        "owner": set(tokens(item.owner or "")),
    }


def _text(item: CatalogItem) -> str:
    """What is embedded for an item: its name in words, description, kind, features and tags."""
    feats = ", ".join(f.name.replace("_", " ") for f in item.features[:30])
    tags = ", ".join(f"{k} {v}" for k, v in item.tags.items())
    parts = [f"{item.name.replace('_', ' ')}: {item.description}".rstrip(": "), item.kind.replace("_", " ")]
    return ". ".join(p for p in (*parts, f"features: {feats}" if feats else "", f"tags: {tags}" if tags else "") if p)


def _check(query: object, k: object) -> tuple[str, int]:
    if not isinstance(query, str) or not query.strip():
        raise InvalidInputError("query must be a non-empty string", field="query")
    if len(query) > CONTEXT_QUERY_CHARS:
        raise InvalidInputError(f"query must be at most {CONTEXT_QUERY_CHARS} characters", field="query")
    if k not in CATALOG_K:
        raise InvalidInputError(f"k must be an integer between {CATALOG_K.lo} and {CATALOG_K.hi}", field="k")
    assert isinstance(k, int)
    return query.strip(), k


class CatalogIndex:
    """Scores catalog items against a query; item vectors are computed here, once."""

    def __init__(self, items: list[CatalogItem], defs: RepoDefinitions) -> None:
        self.items = items
        self._fields = [_fields(i) for i in items]
        self.embedder = workspace_embedder(defs)
        self._vectors: np.ndarray | None = None
        if self.embedder is not None and items:
            self._vectors = self._embed([_text(i) for i in items])

    def _embed(self, texts: list[str]) -> np.ndarray | None:
        from ..embedders import get_embedder

        assert self.embedder is not None
        try:
            return np.asarray(get_embedder(self.embedder).embed(texts), dtype=np.float32)
        except Exception as e:  # a missing model or extra: lexical search still answers
            _log.warning("catalog search is lexical only: embedder %s unavailable (%s)", self.embedder, e)
            self.embedder = None
            return None

    def _match(self, fields: dict[str, set[str]], w: str) -> float:
        """The weight of the best field holding ``w`` (a word sharing a prefix of 3+ letters: 3/4 of it)."""
        best = 0.0
        for f, toks in fields.items():
            if w in toks:
                best = max(best, _WEIGHTS[f])
            elif len(w) >= 3 and any(t.startswith(w) or (len(t) >= 4 and w.startswith(t)) for t in toks):
                best = max(best, _WEIGHTS[f] * 0.75)  # "spend" ~ "spending", "refunds" ~ "refund"
        return best

    def lexical(self, query: str) -> list[float]:
        words = [w for w in dict.fromkeys(tokens(query)) if w not in _STOP] or list(dict.fromkeys(tokens(query)))
        if not words:
            return [0.0] * len(self.items)
        matches = [[self._match(fields, w) for w in words] for fields in self._fields]
        # A word most items have ("user") tells less than a rare one ("spend"): weighted by IDF.
        n = len(self.items)
        idf = [math.log(1 + n / max(1, sum(1 for m in matches if m[j] > 0))) for j in range(len(words))]
        top = _TOP * sum(idf)
        out = []
        for m in matches:
            total = sum(x * i for x, i in zip(m, idf, strict=True))
            # Items matching more of the words rank first: "usual amount" prefers both words in a description
            # to one of them as a feature name.
            coverage = sum(1 for x in m if x > 0) / len(words)
            out.append(min(total / top * (0.5 + 0.5 * coverage), 1.0))
        return out

    def semantic(self, query: str) -> list[float] | None:
        if self._vectors is None:
            return None
        q = self._embed([query])
        if q is None:
            return None
        cos = self._vectors @ q[0]
        return [max(0.0, (float(c) - SEMANTIC_FLOOR) / (1.0 - SEMANTIC_FLOOR)) for c in cos]

    def search(self, query: str, k: int = CATALOG_K_DEFAULT) -> list[CatalogHit]:
        """The ``k`` best items with a score above 0, best first (ties: catalog order)."""
        query, k = _check(query, k)
        lex = self.lexical(query)
        sem = self.semantic(query)
        scores = lex if sem is None else [(a + b) / 2 for a, b in zip(lex, sem, strict=True)]
        words = list(dict.fromkeys(tokens(query)))
        scores = [1.0 if tokens(it.name) == words else s for it, s in zip(self.items, scores, strict=True)]  # the name
        ranked = sorted((i for i, s in enumerate(scores) if s > 0), key=lambda i: -scores[i])
        return [CatalogHit(self.items[i], scores[i]) for i in ranked[:k]]
