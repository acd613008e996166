"""Rows written as Lance data files by many processes, made visible by one commit (the Ray backfill).

A ``FragmentTarget`` says where a table lives and which schema its rows take; any process that
can reach the location (a local directory, or an object store with ``storage_options``) writes
its share with ``write_fragments`` and hands back the fragments' metadata (JSON text: small,
picklable, no Lance type leaves ``stores/``). ``LanceOfflineStore.commit_fragments`` then makes
them part of the table in one commit; until then no reader sees them.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import pyarrow as pa

from .lance import _import_lance, conform, table_uri

__all__ = ["FragmentTarget", "write_fragments"]


class FragmentTarget(NamedTuple):
    location: str  # the offline store's location (directory or URI)
    table_name: str
    schema: pa.Schema  # every fragment's schema: the table's, or the new one of a full rewrite
    storage_options: dict[str, str]

    @property
    def uri(self) -> str:
        return table_uri(self.location, self.table_name)


def write_fragments(target: FragmentTarget, data: pa.Table) -> list[str]:
    """``data`` (conformed to ``target.schema``) as new data files of the table, in row order, not
    yet in any version; returns each fragment's metadata as JSON for ``commit_fragments``."""
    if data.num_rows == 0:
        return []
    lance = _import_lance()  # not LanceDB: a worker that only writes files skips its import
    rows = conform(target.schema, data, target.table_name)
    frags = lance.fragment.write_fragments(
        rows, target.uri, schema=target.schema, storage_options=target.storage_options or None
    )
    return [json.dumps(f.to_json()) for f in frags]
