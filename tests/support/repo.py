"""Build small feature repos in a temp dir for tests (no dependency on ../shared)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def make_repo(
    root: Path, definitions: str, data: dict[str, pa.Table] | None = None, config: dict[str, Any] | None = None
) -> Path:
    """Write ``features.py`` (dedented), parquet files under ``data/`` and an optional yaml config."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "features.py").write_text(textwrap.dedent(definitions))
    for name, table in (data or {}).items():
        path = root / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
    if config:
        import yaml

        (root / "context_store.yaml").write_text(yaml.safe_dump(config))
    return root
