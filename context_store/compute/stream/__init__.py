"""Streaming: push ingest, Redis Streams workers, exactly-once effect, late events, cut-over.

- ``context.StreamContext``: the typed parts everything here works on (applied definitions,
  config, online and offline stores, an ``sinks.EmbeddingSink`` opened on first use).
- ``ingestor.Ingestor(ctx).push(source, rows, dry_run=False, timeout=5.0, wait=True) -> PushResult``
  validates (``validate``: all or nothing, errors name ``records[i].field``) and ingests. Embedded
  (sqlite): applied in-process before returning. Redis: one ``XADD`` per touched partition in one
  MULTI/EXEC (durable), then waits until the workers applied it (read-after-write); with no live
  worker the pusher drains its partitions itself.
  The Redis path is ``redis_push.RedisPusher``: ``push_script`` (one atomic script per push: entries,
  dedup, admission), then a wait on ``applied`` (workers' announcements, stamped with their
  definitions' registry version) or the per-view applied offsets.
- ``worker.StreamWorker(ctx)`` / ``worker.run_workers(ctx, n, stop_event)``: consumer group
  ``cs-workers`` over ``cs:{ws}:{s:<source>}:p<k>``; partitions leased to one worker at a time;
  a new owner ``XAUTOCLAIM``s the previous owner's pending entries and replays them.
- ``processor.process_batch``: the per-batch logic (offset fences, cut-over, watermark/lateness,
  ``compute.transform.apply_transform``, online ``apply_events``, rows for ``fv__``/``src__``).
- Exactly-once effect: online state and the per-(view, partition) applied offset commit together
  (``OnlineStore.apply_events`` token; see docs/online-state.md); offline rows carry
  ``_partition``/``_offset`` so a replay appends nothing twice; entries are acknowledged only after
  both. ``kill -9`` at any point: the successor replays the pending entries, and the fences drop
  what was already applied.
- ``cutover``: the batch/stream hand-over of a stream view's backfill (batch ``ts < C``, stream ``ts >= C``).
- ``stats.STATS``: process-wide counters (pushed, applied, late, too late, before cut-over, duplicates, ...).
"""
