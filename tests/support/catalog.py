"""The context repo (``tests.support.context``) with owners, tags and descriptions, for the catalog tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.context import DEFINITIONS, build_context_repo

__all__ = ["CATALOG_DEFINITIONS", "build_catalog_repo", "RISK", "GROWTH"]

RISK = "risk-team@example.com"
GROWTH = "growth"

# Each replacement must apply exactly once (checked below), so a change to the context repo fails loudly here.
_EDITS = [
    (
        'user = cs.Entity("user", join_keys=["user_id"])',
        f'user = cs.Entity("user", join_keys=["user_id"], description="A customer of the shop", owner="{GROWTH}")',
    ),
    (
        'description="Spending of a user",',
        f'description="Spending of a user", owner="{RISK}", tags={{"team": "risk", "tier": "gold"}},',
    ),
    (
        'ttl="3650d",',
        'ttl="3650d", description="Segment and interest vector of a user", '
        f'owner="{GROWTH}", tags={{"team": "growth", "pii": "yes"}},',
    ),
    (
        'attributes=["title", "category"],',
        'attributes=["title", "category"], description="Product titles as vectors", tags={"team": "growth"},',
    ),
    (
        'description="Features of a user")',
        f'description="Features of a user", owner="{RISK}", tags={{"team": "risk"}})',
    ),
    (
        'chunk_size=200, chunk_overlap=20, embedder="hash-64")',
        'chunk_size=200, chunk_overlap=20, embedder="hash-64", description="Help center articles: refunds, shipping")',
    ),
]


def _definitions() -> str:
    text = DEFINITIONS
    for old, new in _EDITS:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


CATALOG_DEFINITIONS = _definitions()


def build_catalog_repo(root: Path, config: dict[str, Any] | None = None) -> Path:
    """The context repo (data included) with the catalog's definitions."""
    build_context_repo(root, config)
    (root / "features.py").write_text(CATALOG_DEFINITIONS)
    return root
