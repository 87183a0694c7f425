"""A worker process: an RQ worker on the engine's queue plus the engine's maintenance.

The RQ worker forks a work horse per job, so an immediate stop can kill the step
mid-flight (``send_stop_job_command``). Beside it a maintenance thread fires the
engine's due timers (retries, sleeps, expiries, drain timeouts) every half second and,
under a lock shared by all workers, runs the reaper that hands lost steps back to the
engine; a starter thread starts the runs that webhooks accepted (:mod:`engine.intake`);
a heartbeat thread keeps the worker's liveness key alive (:func:`worker.reaper.alive_key`).
More worker processes on more machines scale it out; any one of them keeps the
timers, the reaper and the starts going.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from resource import struct_rusage

from rq.job import Job
from rq.worker import Worker

from engine.api import STEP_JOB, Engine
from engine.errors import CommandRefused, NotFound
from engine.intake import Intake, Starter
from engine.settings import Settings
from worker import jobs
from worker.housekeeping import housekeep
from worker.reaper import alive_key, reap
from worker.settings import WorkerSettings, get_worker_settings

log = logging.getLogger(__name__)


def run_worker(
    settings: Settings,
    *,
    burst: bool = False,
    name: str | None = None,
    with_maintenance: bool = True,
) -> None:
    """Work on ``settings.queue`` until stopped (SIGTERM: finish the current step first).

    ``burst`` quits once the queue is empty; ``name`` must be unique among live workers
    (RQ picks one if not given); ``with_maintenance`` also fires timers, reaps lost steps
    and starts accepted runs.
    """
    options = get_worker_settings()
    engine = jobs.configure(settings)

    def horse_killed(job: Job, retpid: int, ret_val: int, rusage: struct_rusage) -> None:
        report_killed_horse(engine, job, worker.name)

    worker = SwitchboardWorker(
        [engine.queue],
        connection=engine.redis,
        name=name,
        worker_ttl=options.worker_ttl,
        job_monitoring_interval=options.heartbeat_interval,
        work_horse_killed_handler=horse_killed,
    )
    helpers: list[Heartbeat | Maintenance | Starter] = [Heartbeat(engine, options, worker.name)]
    if with_maintenance:
        helpers += [Maintenance(engine, options, worker.name), Starter(Intake(engine), worker.name)]
    for helper in helpers:
        helper.start()
    try:
        worker.work(burst=burst, logging_level=settings.log_level)
    finally:
        for helper in helpers:
            helper.stop()


class SwitchboardWorker(Worker):
    """RQ's forking worker, with a guard on killing the work horse.

    RQ clears ``horse_pid`` to 0 when a horse ends, a moment before it forgets the job.
    A stop command for that job arriving in between (an immediate stop racing the step's
    end) would have RQ kill ``os.getpgid(0)``: this worker's own process group, and with
    it everything started in that group (``switchboard up``, the test runner).
    """

    def kill_horse(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self.horse_pid <= 0:
            log.info("no work horse to kill", extra={"worker": self.name})
            return
        super().kill_horse(sig)


def report_killed_horse(engine: Engine, job: Job, worker_name: str) -> None:
    """A horse died without reporting (OOM kill, segfault): tell the engine now, not at the next reap."""
    if job.func_name != STEP_JOB:
        return
    run_id, step_id, attempt, _dispatch = job.args
    try:
        engine.step_lost(run_id, step_id, attempt, worker_name)
    except (CommandRefused, NotFound) as exc:
        log.info("killed horse's step already moved on", extra={"job_id": job.id, "reason": str(exc)})


class Heartbeat(threading.Thread):
    """Keeps this worker's liveness key alive, beat by beat, until stopped.

    The key expires ``worker_lost_after`` seconds after the last beat, by Redis's own
    clock: if this process dies, the reaper finds the key gone, and no machine's clock
    is compared with another's. Its own thread, so a long reaper pass cannot delay it.
    """

    def __init__(self, engine: Engine, options: WorkerSettings, worker_name: str) -> None:
        super().__init__(name="switchboard-heartbeat", daemon=True)
        self.redis = engine.redis
        self.key = alive_key(engine, worker_name)
        self.interval = options.heartbeat_interval
        self.lifetime_ms = int(options.worker_lost_after * 1000)
        self._stopping = threading.Event()
        self.beat()  # alive before the first job can be taken

    def beat(self) -> None:
        self.redis.set(self.key, "1", px=self.lifetime_ms)

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=5)
        self.redis.delete(self.key)

    def run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self.beat()
            except Exception:
                log.exception("heartbeat failed")  # Redis restarting: the next beat may land


class Maintenance(threading.Thread):
    """Fires due timers often and reaps lost steps now and then, until stopped."""

    def __init__(self, engine: Engine, options: WorkerSettings, worker_name: str) -> None:
        super().__init__(name="switchboard-maintenance", daemon=True)
        self.engine = engine
        self.options = options
        self.worker_name = worker_name
        self.lock_key = f"{engine.keys.prefix}worker:reaper-lock"
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=5)

    def run(self) -> None:
        next_reap = time.monotonic() + self.options.reaper_interval
        while not self._stopping.wait(self.options.maintenance_interval):
            try:
                self.fire_timers()
                if time.monotonic() >= next_reap:
                    next_reap = time.monotonic() + self.options.reaper_interval
                    self.reap_if_first()
            except Exception:
                # Redis restarting, a bad run document: log it and try again next pass.
                log.exception("maintenance pass failed")

    def fire_timers(self) -> None:
        limit = 100
        while self.engine.fire_due_timers(limit=limit) >= limit:
            pass  # a backlog: keep going until it is cleared

    def reap_if_first(self) -> None:
        """Reap unless another worker already did in this interval (the commands are idempotent anyway)."""
        lease_ms = max(int(self.options.reaper_interval * 900), 1)
        if self.engine.redis.set(self.lock_key, self.worker_name, nx=True, px=lease_ms):
            reap(self.engine)
            housekeep(self.engine, self.worker_name, self.options.retention_interval)
