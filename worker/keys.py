"""Redis keys of the worker processes, under the engine's prefix so tests and tenants stay apart.

RQ keeps its own records of workers and jobs under ``rq:``; these are what Switchboard's
workers add beside them: liveness judged on Redis's clock, the reaper's notes, and the
leases that let one worker of many do a shared chore per interval.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerKeys:
    prefix: str

    def alive(self, worker_name: str) -> str:
        """Exists while the worker named ``worker_name`` sends heartbeats (``worker.process.Heartbeat``);
        it expires ``worker_lost_after`` seconds after the last beat, on Redis's clock."""
        return f"{self.prefix}worker:alive:{worker_name}"

    @property
    def stuck_jobs(self) -> str:
        """Hash: job id of a queued step seen in no queue -> when a reaper pass first saw it."""
        return f"{self.prefix}worker:stuck-jobs"

    @property
    def reaper_lock(self) -> str:
        """Held by the worker reaping in this interval (``worker.process.Maintenance``)."""
        return f"{self.prefix}worker:reaper-lock"

    @property
    def housekeeping_lease(self) -> str:
        """Held by the worker that ran the last housekeeping pass, for one interval."""
        return f"{self.prefix}worker:housekeeping-lease"
