"""Fixtures of the serving tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from context_store.serving.similar import VectorService
from tests.support import vectors
from tests.support.vectors import VectorServiceFactory


@pytest.fixture
def build() -> Iterator[VectorServiceFactory]:
    """Factory: ``tests.support.vectors.build`` (items view + help knowledge base); every service closed at teardown."""
    made: list[VectorService] = []

    def make(root: Path, items: pa.Table | None = None, **kwargs: Any) -> VectorService:
        vs = vectors.build(root, items, **kwargs)
        made.append(vs)
        return vs

    yield make
    for vs in made:
        vs.close()
