"""The server process's own logging: one non-blocking handler on the root logger.

Request handlers run on the event loop; a handler that writes to a slow stderr (a pipe nobody reads
fast, a terminal rendering a rich traceback) stalls every request of the process. So the root logger
gets a ``QueueHandler`` (an in-memory append) and a ``QueueListener`` thread does the writing.
Third-party handlers (the mcp SDK installs a RichHandler through ``logging.basicConfig``) are removed;
uvicorn is started with ``log_config=None`` so its loggers propagate here too.

What is logged: real 5xx with their traceback (``server/errors.py``, ``fastpath.py``); 4xx are one
line at INFO (off by default), never a traceback.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys

__all__ = ["configure_server_logging", "LOG_FORMAT"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_listener: logging.handlers.QueueListener | None = None


def configure_server_logging(level: str = "warning") -> None:
    """Route every log record of this process through a queue to stderr (idempotent per process)."""
    global _listener
    root = logging.getLogger()
    root.setLevel(level.upper())
    if _listener is not None:
        return
    # Unbounded: a full queue would block the logging thread, the very stall this avoids. Records are
    # small (formatted once in QueueHandler.prepare) and the listener drains them continuously.
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    out = logging.StreamHandler(sys.stderr)
    out.setFormatter(logging.Formatter(LOG_FORMAT))
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(logging.handlers.QueueHandler(records))
    _listener = logging.handlers.QueueListener(records, out, respect_handler_level=True)
    _listener.start()
    atexit.register(_listener.stop)  # flush what is queued on a normal exit
