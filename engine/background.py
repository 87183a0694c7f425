"""Background work of a process: threads that loop until stopped, asyncio tasks that log their crash.

A worker runs its heartbeat, maintenance and intake starter beside RQ's work loop; the
web process runs a standby starter, the metrics feed and counters; the Slack side its
feed, outbox and App Home refresher. Each must stop when asked, promptly and in order,
and a crash must be a log line rather than a silent end.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)

STOP_JOIN_SECONDS = 5.0


class LoopThread(threading.Thread):
    """A daemon thread whose :meth:`run` loops until :meth:`stop` is called.

    ``run`` waits on ``self.stopping`` (``self.stopping.wait(pause)``) between passes, so
    a stop takes effect within one pass; :meth:`stop` then joins, for at most
    ``STOP_JOIN_SECONDS``, so a stuck pass cannot hold up the process's shutdown.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=STOP_JOIN_SECONDS)


def start_task(work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """Run ``work`` as a named asyncio task whose crash is logged (see :func:`log_crash`)."""
    task = asyncio.create_task(work, name=name)
    task.add_done_callback(log_crash)
    return task


def log_crash(task: asyncio.Task[Any]) -> None:
    """Done callback: an exception that ended ``task`` is logged with its traceback, never lost."""
    if not task.cancelled() and task.exception() is not None:
        log.error("background task died", extra={"task": task.get_name()}, exc_info=task.exception())
