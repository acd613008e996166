"""``context-store push SOURCE FILE``, ``context-store worker`` and ``context-store stream watermarks``."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from ..errors import InvalidInputError
from ._common import echo_json, handle_errors, repo_options, store_from_ctx

__all__ = ["push", "worker", "stream", "read_records"]


def read_records(path: str) -> Any:
    """Records from a Parquet, CSV, JSON (a list, or Tecton's ``{"records": {src: [...]}}``) or
    JSON-lines file; ``-`` reads JSON from stdin."""
    import orjson

    if path == "-":
        data = sys.stdin.buffer.read()
        suffix = ".json"
    else:
        p = Path(path)
        if not p.is_file():
            raise InvalidInputError(f"no such file: {path}", field="FILE")
        suffix = p.suffix.lower()
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(p)
        if suffix == ".csv":
            import pyarrow.csv as pcsv

            return pcsv.read_csv(p)
        data = p.read_bytes()
    try:
        if suffix in (".jsonl", ".ndjson"):
            return [orjson.loads(line) for line in data.splitlines() if line.strip()]
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise InvalidInputError(f"{path}: not valid JSON: {e}", field="FILE") from None
    if isinstance(obj, dict) and isinstance(obj.get("records"), dict):
        recs = list(obj["records"].values())
        if len(recs) != 1:
            raise InvalidInputError("the file has records of several sources; push one at a time", field="records")
        obj = recs[0]
    if not isinstance(obj, list):
        raise InvalidInputError(f"{path}: expected a JSON list of records", field="FILE")
    return obj


@click.command("push")
@click.argument("source")
@click.argument("file", metavar="FILE")
@click.option("--dry-run", is_flag=True, help="Validate only; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--idempotency-key",
    default=None,
    help="A retry with the same key and FILE answers the first result and writes nothing (safe to retry).",
)
@repo_options
@handle_errors
def push(source: str, file: str, dry_run: bool, as_json: bool, idempotency_key: str | None) -> None:
    """Push the records of FILE (Parquet, CSV, JSON, JSON lines; '-' = stdin) to stream SOURCE.

    All or nothing: a bad record is reported with its index and field and nothing is written.
    """
    store = store_from_ctx()
    result = store.push(source, read_records(file), dry_run=dry_run, idempotency_key=idempotency_key)
    if as_json:
        echo_json(result.to_dict())
    elif dry_run:
        click.echo(f"{result.validated} records valid for {source} (dry run, nothing written)")
    else:
        note = "" if result.visible else " (durable; not yet applied online)"
        if result.replayed:
            note += " (a retry: the first push's result; nothing written)"
        if result.duplicates:
            note += f" ({result.duplicates} already ingested, dropped)"
        click.echo(f"pushed {result.accepted} records to {source}{note}")
        for r in result.rejected:
            click.echo(f"rejected record {r.index}: field '{r.field}': {r.message}", err=True)


@click.command("worker")
@click.option("--threads", "-n", default=1, show_default=True, type=click.IntRange(1, 64), help="Worker threads.")
@click.option("--source", "sources", multiple=True, help="Only these stream sources (default: all).")
@click.option(
    "--batch",
    default=2000,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Stream entries read per round (one entry = one push to one partition).",
)
@click.option(
    "--flush-interval",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.01, 3600),
    help="Seconds between offline-log appends (entries are acknowledged after them).",
)
@click.option(
    "--stop-timeout",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0.1, 600),
    help="Seconds a graceful stop (flush, release partitions) may take before the process exits anyway.",
)
@repo_options
@handle_errors
def worker(threads: int, sources: tuple[str, ...], batch: int, flush_interval: float, stop_timeout: float) -> None:
    """Run stream workers alone: apply Redis Stream events to online state and the offline log.

    Needs a Redis online store. Stops cleanly on Ctrl-C / SIGTERM (flushes, releases partitions) within
    --stop-timeout seconds; a second Ctrl-C / SIGTERM exits at once.
    """
    import logging

    from ..compute.stream.worker import run_workers

    if not logging.getLogger().handlers:  # a worker's partition moves and replays belong in its log
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = store_from_ctx()
    if not store.config.is_redis:
        raise click.ClickException(
            "stream workers need a Redis online store (--online-store redis://127.0.0.1:6379/0); "
            "with the embedded sqlite store, push applies events in-process"
        )
    stop = threading.Event()
    requested: list[int] = []  # stop signals received (appended by the handler: no lock taken)

    def _stop(signum: int, _frame: Any) -> None:
        # Takes no lock: a handler runs on the main thread between bytecodes, so a second signal arriving
        # while a first handler held ``stop``'s lock (``Event.set``) deadlocked the process for good -- seen
        # on ``serve``'s orphaned children (parent-death SIGTERM, then the teardown's signals). Bounded: with
        # Redis unreachable every call of the graceful stop waits out its socket timeout, so the deadline is a
        # kernel timer whose default action ends the process whatever Python is doing.
        # Exiting without the stop loses nothing acknowledged: an entry is XACKed only after its rows are in
        # the offline log, so whatever this process applied but did not flush stays pending in the stream
        # and the next owner of the partition replays it (the applied-offset fences and offline marks make
        # the replay a no-op where it already landed); its leases simply expire (lease_ms).
        requested.append(signum)
        if len(requested) > 1:
            os.write(2, b"context-store worker: second stop signal: exiting without finishing the graceful stop\n")
            os._exit(128 + signum)
        os.write(2, f"context-store worker: stopping (at most {stop_timeout:g} s)\n".encode())
        signal.setitimer(signal.ITIMER_REAL, stop_timeout)

    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # the stop deadline: SIGALRM's default action ends the process
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    pool = run_workers(
        store.stream_context(), threads, stop, sources=list(sources) or None, count=batch, flush_interval=flush_interval
    )
    click.echo(f"stream workers running ({threads} thread(s), workspace {store.workspace}); Ctrl-C to stop", err=True)
    while not requested:
        time.sleep(0.25)
        if not any(t.is_alive() for t in pool.threads):
            lost = next((w.stopped_by for w in pool.workers if w.stopped_by is not None), None)
            if lost is not None:  # another deployment holds (or took over) the namespace: one line, exit 1
                raise lost
            raise click.ClickException("every stream worker stopped; see the log above")
    stop.set()  # here, not in the handler (see ``_stop``)
    pool.stop(stop_timeout)


@click.group("stream")
def stream() -> None:
    """Stream operations: watermarks, lag and late counts per partition."""


def _when(t: Any) -> str:
    return "-" if t is None else t.strftime("%Y-%m-%dT%H:%M:%SZ")


@stream.command("watermarks")
@click.option(
    "--reset",
    "target",
    default=None,
    metavar="SOURCE[:PARTITION]",
    help="Set the watermark of every partition of SOURCE (or of one) to --to, default now.",
)
@click.option("--to", "to", default=None, metavar="TIME", help="ISO-8601 time for --reset (default: now).")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@repo_options
@handle_errors
def watermarks(target: str | None, to: str | None, as_json: bool) -> None:
    """Per stream source and partition: the watermark pushes decide lateness against, entries not
    yet applied (lag), and late (counted) / rejected (too late or before a cut-over) records."""
    if to is not None and target is None:
        raise InvalidInputError("--to needs --reset SOURCE[:PARTITION]", field="to")
    store = store_from_ctx()
    rows = store.reset_stream_watermark(target, to) if target is not None else store.stream_watermarks()
    if as_json:
        echo_json([r.__dict__ for r in rows])
        return
    if not rows:
        click.echo("no stream sources")
        return
    if target is not None:
        click.echo(f"reset {len(rows)} watermark(s) of {rows[0].source}")
    head = ("source", "partition", "watermark", "applied", "lag", "late", "rejected")
    table = [head] + [
        (
            r.source,
            str(r.partition),
            _when(r.watermark),
            _when(r.applied_watermark),
            str(r.lag),
            str(r.late),
            str(r.rejected),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
