"""The offline store protocol: append-only Arrow tables with time-range reads and idempotent range rewrites.

Table names: ``vocab.tables`` (``fv__{view}``: a feature view's input rows after its transform;
``src__{source}``: raw stream events). Values go in and out as Arrow only: no backend type
leaves ``stores/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import pyarrow as pa

if TYPE_CHECKING:
    from .fragments import FragmentTarget

__all__ = ["FragmentSink", "OfflineStore", "sql_equals"]


def sql_equals(schema: pa.Schema, column: str, value: str) -> str | None:
    """A SQL predicate ``column = value`` for a table of ``schema``, the value a quoted literal of
    the column's type (a hostile value stays one literal); None when no row can match (no such
    column, or the value is not of the column's type)."""
    i = schema.get_field_index(column)
    if i < 0 or "`" in column:
        return None
    t = schema.field(i).type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return f"`{column}` = '" + value.replace("'", "''") + "'"
    if pa.types.is_integer(t):
        try:
            n = int(value)
        except ValueError:
            return None
        return f"`{column}` = {n}" if str(n) == value else None
    return None


@runtime_checkable
class OfflineStore(Protocol):
    def append(self, table_name: str, data: pa.Table) -> int:
        """Append rows (creating the table on first use); returns the rows written.

        Safe to call from several processes at once; readers see whole appends only.
        """
        ...

    def overwrite_range(
        self, table_name: str, data: pa.Table, ts_column: str, start_us: int | None, end_us: int | None
    ) -> int:
        """Replace the rows with ``start_us <= ts < end_us`` (None = unbounded) by ``data``.

        Running it twice with the same data gives the same table (idempotent backfills).
        """
        ...

    def version(self, table_name: str) -> int | None:
        """The table's latest committed version (None: no such table)."""
        ...

    def delete_where(self, table_name: str, predicate: str) -> int:
        """Delete the rows matching the SQL ``predicate``; returns how many."""
        ...

    def purge(self, table_name: str) -> None:
        """Make deleted rows leave the disk: rewrite files holding them and drop older versions
        (right to erasure; ``delete_where`` alone only hides rows)."""
        ...

    def revert(self, table_name: str, to_version: int, latest: int) -> bool:
        """Make ``to_version``'s data current again if the table is still at ``latest`` (else False)."""
        ...

    def read(
        self,
        table_name: str,
        columns: list[str] | None = None,
        ts_column: str | None = None,
        start_us: int | None = None,
        end_us: int | None = None,
        filter: Any = None,
    ) -> pa.Table:
        """Rows (optionally ``start_us <= ts_column < end_us`` and a ``filter``: a SQL predicate
        string or a ``pyarrow.compute`` expression). Raises NotFoundError for an unknown table."""
        ...

    def change_token(self, table_name: str) -> str | None:
        """A cheap opaque token that changes whenever the table does (None: no such table or
        unknown). Lets a rerun (a no-op ``materialize``) skip tables it already loaded unopened."""
        ...

    def schema(self, table_name: str) -> pa.Schema: ...

    def count(self, table_name: str) -> int: ...

    def exists(self, table_name: str) -> bool: ...

    def tables(self) -> list[str]: ...

    def drop(self, table_name: str) -> None: ...

    def compact(self, table_name: str) -> None:
        """Merge small appends (stream micro-batches) into fewer files; readers are unaffected."""
        ...

    def index_key(self, table_name: str, column: str, min_rows: int) -> bool:
        """Index ``column`` (an entity key) when the table has at least ``min_rows`` rows, so a read
        of a few entities' rows finds them without a scan; the same rows in the same order. True if
        an index was built."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class FragmentSink(Protocol):
    """A store whose tables other processes can write data files for, made visible by one commit
    (``stores/offline/fragments.py``; the Ray backfill)."""

    def fragment_target(self, table_name: str, schema: pa.Schema, whole_table: bool) -> FragmentTarget:
        """Where and in which schema workers write ``table_name``'s new rows."""
        ...

    def commit_fragments(
        self,
        target: FragmentTarget,
        fragments: Sequence[str],
        ts_column: str,
        start_us: int | None,
        end_us: int | None,
    ) -> None:
        """Make ``fragments`` the table's rows in ``[start, end)`` (None = unbounded)."""
        ...
