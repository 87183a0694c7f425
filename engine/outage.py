"""Riding out a Redis outage: retry with a capped backoff, one warning line per retry.

A Redis restart or failover makes every command fail for seconds or minutes. The
long-lived loops of a process (the RQ worker, its heartbeat, maintenance and starter
threads, a work horse reporting its step) must neither exit nor spin through it. Each
keeps an :class:`Outage`: it counts the failed tries in a row, says how long to wait
before the next one (redis-py's own exponential backoff, 0.5 s doubling up to 10 s),
logs one warning per retry without a traceback, and one line when Redis answers again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import redis
from redis.backoff import ExponentialBackoff

log = logging.getLogger(__name__)

# What "Redis is not answering" looks like in redis-py (BusyLoadingError, the server still
# loading its AOF after a restart, is a ConnectionError).
REDIS_DOWN: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)
FIRST_RETRY_SECONDS = 0.5
LONGEST_RETRY_SECONDS = 10.0

P = ParamSpec("P")
T = TypeVar("T")


class Outage:
    """The state of one loop's retries while Redis is away (not shared between threads)."""

    def __init__(
        self, what: str, *, first: float = FIRST_RETRY_SECONDS, longest: float = LONGEST_RETRY_SECONDS
    ) -> None:
        self.what = what
        self.backoff = ExponentialBackoff(cap=longest, base=first)
        self.attempts = 0
        self.since: float | None = None  # monotonic time of the first failure in a row

    def failed(self, exc: BaseException) -> float:
        """Count a failed try; returns the seconds to wait before the next one."""
        delay = float(self.backoff.compute(self.attempts))
        self.attempts += 1
        if self.since is None:
            self.since = time.monotonic()
        log.warning(
            "%s: Redis unavailable (%s), retry %d in %.1f s",
            self.what,
            exc or type(exc).__name__,
            self.attempts,
            delay,
            extra={"what": self.what, "attempt": self.attempts, "retry_in": delay},
        )
        return delay

    def recovered(self) -> bool:
        """Call after a try that got through: True, and one line, when it ended an outage."""
        if not self.attempts:
            return False
        down_for = time.monotonic() - (self.since or time.monotonic())
        log.warning(
            "%s: Redis answers again after %.1f s",
            self.what,
            down_for,
            extra={"what": self.what, "attempts": self.attempts, "down_seconds": round(down_for, 1)},
        )
        self.attempts = 0
        self.since = None
        return True

    def call(
        self,
        fn: Callable[P, T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``fn(*args, **kwargs)``, tried again after each backoff until Redis answers it.

        Any other error is raised at once. Use it only for calls that are safe to repeat.
        """
        return self.call_until(None, fn, *args, **kwargs)

    def call_until(
        self,
        deadline: float | None,
        fn: Callable[P, T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Like :meth:`call`, but gives up (raising Redis's error) once ``time.monotonic()``
        would pass ``deadline`` before the next try."""
        while True:
            try:
                result = fn(*args, **kwargs)
            except REDIS_DOWN as exc:
                delay = self.failed(exc)
                if deadline is not None and time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                continue
            self.recovered()
            return result
