"""Retention: a finished run is removed, with everything that names it, once it is old enough.

A finished run (completed, failed or stopped) is kept for its retention: the workflow's
``settings.retention`` if its current definition sets one, else ``SWITCHBOARD_RETENTION``
(30 days). Past that, :func:`purge_finished` removes it in one transaction per run
(:meth:`engine.store.RunStore.purge`): its document, its event stream, its entries in
every index, the idempotency and intake keys that point at it, and RQ's records of its
step jobs. Nothing of it is left, so Redis holds what the retention asks for and no more
(without this, about 21 KiB per run, forever).

Kept on purpose: workflow snapshots (``workflow:{digest}``, small and shared by every run of
a definition) and the other runs a purged run is linked to (a replay keeps its
``replay_of``, which then names a run that is gone). The global feed is trimmed by age
instead (:func:`trim_feed`): its entries only tell followers that a run has news.

A pass is bounded: it walks the finished-status indexes from the oldest entry (they are
scored by when the run entered the status), stops at runs finished less than the shortest
retention ago, and handles at most ``limit`` runs. Runs of a workflow with a longer
retention than the shortest are skipped (up to ``scan_limit`` entries per status and
pass), so with mixed retentions a run may be removed late, never early, and never without
a bound: the entries in front of it become due themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from engine.model import TERMINAL_RUN_STATUSES
from engine.store import RunStore, ts

log = logging.getLogger(__name__)

DEFAULT_RETENTION_SECONDS = 30 * 86400.0
PURGE_LIMIT = 1000  # runs removed per pass at most: a pass holds no worker for long
SCAN_LIMIT = 5000  # index entries looked at per status and pass at most
CHUNK = 100


def purge_finished(
    store: RunStore,
    retention_of: Callable[[str], float],
    shortest: float,
    now: datetime,
    limit: int = PURGE_LIMIT,
    scan_limit: int = SCAN_LIMIT,
) -> int:
    """Remove the finished runs older than their retention; returns how many were removed.

    ``retention_of`` gives a workflow id's retention in seconds, ``shortest`` the least
    of them (no run finished more recently than that can be due).
    """
    moment = ts(now)
    purged = 0
    for status in sorted(TERMINAL_RUN_STATUSES):
        offset = scanned = 0
        while purged < limit and scanned < scan_limit:
            page = store.finished_before(status, moment - shortest, offset, min(CHUNK, limit - purged))
            if not page:
                break
            scanned += len(page)
            runs = store.load_aligned([run_id for run_id, _ in page])
            for (run_id, finished), run in zip(page, runs, strict=True):
                due = run is None or finished + retention_of(run.workflow_id) <= moment
                if due and store.purge(run_id):
                    purged += 1
                else:
                    offset += 1  # kept: the next page starts after it
    if purged:
        log.info("finished runs removed", extra={"runs": purged})
    return purged


def trim_feed(store: RunStore, retention: float) -> int:
    """Drop global feed entries older than ``retention`` seconds; returns how many."""
    trimmed = store.trim_feed(retention)
    if trimmed:
        log.info("global feed trimmed", extra={"entries": trimmed})
    return trimmed
