"""``context-store status [--json]``: per view freshness against its expected_freshness, and stream lag."""

from __future__ import annotations

import click

from ._common import echo_json, handle_errors, repo_options, store_from_ctx

__all__ = ["status"]


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}s"


@click.command("status")
@repo_options
@click.option("--json", "as_json", is_flag=True, help="Print the GET /v1/status/views JSON.")
@handle_errors
def status(as_json: bool) -> None:
    """Per view: freshness (now - newest event time applied online), expected_freshness, SLO breach,
    stream lag (entries, seconds of the oldest unread entry) and late/rejected counts."""
    import time
    from datetime import UTC, datetime

    store = store_from_ctx()
    now = time.time()
    rows = store.view_status(now)
    if as_json:
        when = datetime.fromtimestamp(now, UTC).isoformat()
        echo_json({"workspace": store.workspace, "now": when, "views": [r.to_dict() for r in rows]})
        return
    if not rows:
        click.echo("no views with online state")
        return
    head = ("view", "kind", "freshness", "expected", "slo", "newest event", "lag", "lag_s", "late", "rejected")
    table = [head]
    for r in rows:
        lag_s = [p.seconds for p in r.lag if p.seconds is not None]
        table.append(
            (
                r.view,
                r.kind,
                _s(r.freshness_seconds),
                _s(r.expected_freshness_seconds),
                "BREACHED" if r.slo_breached else ("ok" if r.expected_freshness_seconds is not None else "-"),
                r.newest_event_time.isoformat(timespec="seconds") if r.newest_event_time else "-",
                str(sum(p.entries for p in r.lag)) if r.lag else "-",
                _s(max(lag_s)) if lag_s else "-",
                str(r.late),
                str(r.rejected),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
