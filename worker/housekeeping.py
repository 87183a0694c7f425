"""Housekeeping: the engine's retention pass, once per interval across all workers.

Every worker's maintenance thread calls :func:`housekeep` now and then; a lease in Redis
lets one of them do the work per ``retention_interval``, so adding workers adds no load.
A pass removes the finished runs past their retention (:mod:`engine.retention`), trims the
global feed by age and forgets intake starters of workers long gone
(:meth:`engine.intake.Intake.drop_idle_consumers`). Each part is bounded, so a pass is short
even with a backlog; what is left is taken by the next one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from engine.api import Engine
from engine.intake import Intake
from worker.keys import WorkerKeys

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Housekept:
    """What one pass did, for logs and tests."""

    runs: int
    feed_entries: int
    starters: int


def housekeep(engine: Engine, worker_name: str, interval: float) -> Housekept | None:
    """Run a pass unless another worker ran one less than ``interval`` seconds ago (then None)."""
    lease = WorkerKeys(engine.keys.prefix).housekeeping_lease
    if not engine.redis.set(lease, worker_name, nx=True, px=max(int(interval * 1000), 1)):
        return None
    done = Housekept(
        runs=engine.purge_finished(),
        feed_entries=engine.trim_feed(),
        starters=Intake(engine).drop_idle_consumers(),
    )
    log.debug("housekeeping pass", extra={"worker": worker_name, **vars(done)})
    return done
