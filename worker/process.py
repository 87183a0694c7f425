"""A worker process: an RQ worker on the engine's queue plus the engine's maintenance.

The RQ worker hands each job to a long-lived work horse (:mod:`worker.horse`), a child
process reused across jobs and replaced when it must die, so an immediate stop still kills
the step mid-flight (``send_stop_job_command``) without a fork per step. Beside it a
maintenance thread fires the engine's due timers (retries, sleeps, expiries, drain
timeouts) every half second and, under a lock shared by all workers, runs the reaper
that hands lost steps back to the engine; a starter thread starts the runs that webhooks
accepted (:mod:`engine.intake`); a heartbeat thread keeps the worker's liveness key alive
(:meth:`worker.keys.WorkerKeys.alive`). More worker processes on more machines scale it
out; any one of them keeps the timers, the reaper and the starts going.

None of them exits when Redis goes away: each loop waits it out with a capped backoff
(:mod:`engine.outage`), a work horse holds on to its step's result until Redis takes it,
and a worker whose records Redis lost (restarted empty) registers again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from multiprocessing.connection import Connection
from resource import struct_rusage
from typing import Any, NoReturn, ParamSpec, TypeVar
from uuid import uuid4

from redis.client import Pipeline, PubSub, PubSubWorkerThread
from rq import worker_registration
from rq.command import handle_command, parse_payload
from rq.exceptions import DeserializationError, InvalidJobOperation, NoSuchJobError
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.timeouts import JobTimeoutException
from rq.utils import now, utcformat
from rq.worker import Worker

from engine.api import STEP_JOB, ClaimedStep, Engine
from engine.background import LoopThread
from engine.errors import CommandRefused, NotFound
from engine.intake import Intake, Starter
from engine.outage import LONGEST_RETRY_SECONDS, REDIS_DOWN, Outage
from engine.redis_idioms import text
from engine.settings import Settings
from worker import jobs, rq_records
from worker.horse import Assignment, Ended, Finished, Horse, Report, Taken, TakeWindow, resident_bytes
from worker.housekeeping import housekeep
from worker.keys import WorkerKeys
from worker.reaper import reap, redis_uptime
from worker.settings import WorkerSettings, get_worker_settings

log = logging.getLogger(__name__)

EARLY_STOPS_KEPT = 64  # stop commands remembered for jobs a horse may have taken unannounced
# Steps a horse runs one after another by eager dispatch before it takes the queue's next
# job: a run's steps do not keep jobs queued before them waiting for longer than that.
CLAIMS_IN_A_ROW = 16

P = ParamSpec("P")
T = TypeVar("T")


def run_worker(
    settings: Settings,
    *,
    burst: bool = False,
    name: str | None = None,
    with_maintenance: bool = True,
) -> None:
    """Work on ``settings.queue`` until stopped (SIGTERM: finish the current step first).

    ``burst`` quits once the queue is empty; ``name`` must be unique among live workers
    (RQ picks one if not given; a dead worker's name may be taken over); ``with_maintenance``
    also fires timers, reaps lost steps and starts accepted runs.
    """
    options = get_worker_settings()
    engine = jobs.configure(settings)

    def horse_killed(job: Job, retpid: int, ret_val: int, rusage: struct_rusage) -> None:
        report_killed_horse(engine, job, worker.name, timed_out=worker.timed_out_job_id == job.id)

    worker = SwitchboardWorker(
        [engine.queue],
        connection=engine.redis,
        name=name,
        worker_ttl=options.worker_ttl,
        job_monitoring_interval=options.heartbeat_interval,
        work_horse_killed_handler=horse_killed,
        report_patience=options.report_patience,
        horse_max_jobs=options.horse_max_jobs,
        horse_max_rss=options.horse_max_memory_mb * 2**20,
    )
    if name is not None:
        worker.take_over_name(engine)  # before the heartbeat makes the name look alive
    helpers: list[LoopThread] = [Heartbeat(engine, options, worker.name)]
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
    """RQ's worker with a reused work horse, made to ride out Redis outages, and guarded on kills.

    **The horse.** Where RQ forks a horse per job, this worker keeps one
    (:class:`worker.horse.Horse`) and hands it each job it dequeues, or lets it take the
    next waiting job itself when a step ends (:meth:`_take_next`); RQ's records are
    RQ's (the worker marks the job started with its execution and watches the horse,
    heartbeats included; the horse runs the job under its timeout and records its end, or
    for a step that succeeded leaves that to the worker, which writes it with the next
    job's start: :meth:`_record_start`). A stop command for the running job kills
    the horse; a horse that ends without reporting is handled as RQ handles a killed horse
    (the step is reported lost); either way the next job gets a fresh horse. A horse is
    retired after ``horse_max_jobs`` jobs or once a job leaves it above ``horse_max_rss``
    bytes (0: never).

    **Outages.** RQ's work loop quits on any error it does not expect, and a Redis restart
    raises them everywhere: while it sends heartbeats for a running job, sets its state,
    prepares the next job. Here every Redis call of the loop goes through an
    :class:`Outage`: it is tried again after a backoff (0.5 s doubling to 10 s, one warning
    line per retry) until Redis answers, so the process never exits for it. In a work
    horse the same retries are bounded by ``report_patience``: RQ's bookkeeping before the
    step, and the step's own start and report (:mod:`worker.jobs`), wait for Redis that long.

    **Kills.** RQ clears ``horse_pid`` to 0 when a horse ends, a moment before it forgets
    the job. A stop command for that job arriving in between (an immediate stop racing the
    step's end) would have RQ kill ``os.getpgid(0)``: this worker's own process group, and
    with it everything started in that group (``switchboard up``, the test runner). Stop
    commands are matched against the job the horse runs under a lock, so a late one kills
    nothing, and never the horse's next job. One that comes early, for a job the horse took
    itself and has not reported yet, is kept a while and kills the horse once it does.
    """

    # RQ's own backoff, for the one case its dequeue loop catches itself (a blocking
    # dequeue cut off by the outage); the next heartbeat then waits in ours.
    max_connection_wait_time = LONGEST_RETRY_SECONDS
    # RQ's worker record is written several times per job; once a second is plenty.
    beat_at_most_every = 1.0
    # Past its timeout a step is ended by its horse's alarm; a horse that does not answer
    # the alarm (stuck in C code that blocks signals) is killed this much later.
    timeout_kill_grace = 5.0

    def __init__(
        self,
        *args: Any,
        report_patience: float = 300.0,
        horse_max_jobs: int = 0,
        horse_max_rss: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.report_patience = report_patience
        self.horse_max_jobs = horse_max_jobs
        self.horse_max_rss = horse_max_rss
        self.outage = Outage(f"worker {self.name}")
        self.pubsub_outage = Outage(f"stop commands of worker {self.name}")
        self.queue_class = patient(self.queue_class, self.outage)
        self.horse: Horse | None = None
        self._horse_lock = threading.Lock()  # the running job against stop commands (pubsub thread)
        self._running_job_id: str | None = None
        self._running_execution_id: str | None = None
        self.timed_out_job_id: str | None = None  # the job whose horse was killed for its timeout
        self._prepared_job_id: str | None = None  # in the horse: the job its worker prepared
        # Stop commands for jobs not running here, in case the horse took one and has not said so yet.
        self._stops_early: OrderedDict[str, bool] = OrderedDict()
        self.take_window = TakeWindow()  # until when the horse may take its next job itself
        self._handed_back: tuple[Job, Queue] | None = None  # a job the horse took but does not run
        self._last_beat = 0.0
        self._next_suspension_check = 0.0
        self._take_waiting = self.connection.register_script(TAKE_WAITING_JOB)
        self._record = self.connection.register_script(rq_records.RECORD)
        # A step job its horse reported successful, not recorded in RQ yet (in the worker).
        self._unrecorded: rq_records.Succeeded | None = None
        self._finished: Finished | None = None  # in the horse: the success of the job just run
        self._claimed: ClaimedStep | None = None  # in the horse: the step its last report started for it
        self._may_claim = False  # in the horse: whether the report of the job it runs may claim the next
        self._jobs_done = 0  # in the horse: the jobs it ran (the worker counts them in Horse.jobs)

    def _through_outage(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn`` tried until Redis answers; in a work horse for ``report_patience`` at most."""
        if self.is_horse:
            deadline = time.monotonic() + self.report_patience
            return self.outage.call_until(deadline, fn, *args, **kwargs)
        return self.outage.call(fn, *args, **kwargs)

    # -- the reused horse: worker side ---------------------------------------------------

    def execute_job(self, job: Job, queue: Queue) -> None:
        execution = Execution(uuid4().hex, job.id, self.connection, worker_name=self.name)
        execution._job = job
        rq_records.mark_started(job, self.name)  # the job as the horse gets it
        assignment = self._assignment(job, job_record(job), queue.name, execution.id, execution.created_at)
        self._set_take_window()
        with self._horse_lock:
            horse = self._ready_horse()
            self._now_running(horse, job.id, execution.id)
        if not horse.assign(assignment) and self._stopped_job_id != job.id:
            # It died idle (an OOM kill picks any process): the job never reached it.
            with self._horse_lock:
                horse = self._ready_horse()
                self._horse_pid = horse.pid
            horse.assign(assignment)
        self._through_outage(self._record_start, job, execution)
        self.monitor_work_horse(job, queue, execution)
        # Not idle yet: a next job already waiting is taken at once (``dequeue_job_and_maintain_ttl``).

    def _set_take_window(self) -> None:
        """Let the horse take its next jobs itself until the next suspension check, if it can.

        Only where this worker takes a waiting job itself (one queue: :meth:`_takes_waiting`),
        and not once it was asked to stop: the job the horse has then is its last.
        """
        if self._stop_requested or not self._takes_waiting():
            self.take_window.close()
        else:
            self.take_window.open_until(self._next_suspension_check)

    def _now_running(self, horse: Horse, job_id: str, execution_id: str) -> None:
        """Under the horse lock: ``horse`` runs ``job_id`` now; a stop that came for it already kills it."""
        self._running_job_id, self._running_execution_id = job_id, execution_id
        self._horse_pid = horse.pid
        if self._stops_early.pop(job_id, False):
            self._stopped_job_id = job_id
            self.kill_horse()

    def _ready_horse(self) -> Horse:
        """The live horse, forked now if there is none (first job, or the last one died)."""
        if self.horse is not None and not self.horse.alive():
            self.horse.reap()
            self.horse = None
        if self.horse is None:
            self.horse = Horse(self._serve)
            self.procline(f"Horse {self.horse.pid} since {time.time()}")
        return self.horse

    def monitor_work_horse(self, job: Job, queue: Queue, execution: Execution) -> None:
        """Watch the horse through ``job`` and each job it takes after it; record a job it dies on."""
        horse = self.horse
        assert horse is not None
        while True:
            outcome = self._watch(horse, job, execution)
            with self._horse_lock:
                self._running_job_id = self._running_execution_id = None
                self._horse_pid = 0
            self.executions.pop(execution.id, None)
            if isinstance(outcome, Ended):
                break
            if self._stopped_job_id == job.id:
                self._stopped_job_id = None  # the stop came after the job had ended
            if outcome.finished is not None:
                self._unrecorded = rq_records.Succeeded(job, execution, outcome.finished)
            self._after_job(horse, outcome)
            if outcome.taken is None:
                return
            taken = self._take_over(horse, outcome.taken, queue)
            if taken is None:
                return
            job, execution = taken
        self.horse = None
        log.warning(
            "work horse ended mid-job (%s)", outcome.why, extra={"worker": self.name, "job_id": job.id}
        )
        self._through_outage(self._record_horse_end, job, queue, execution, outcome)

    def _watch(self, horse: Horse, job: Job, execution: Execution) -> Report | Ended:
        """Wait for the horse's report on ``job`` or its end, beating meanwhile and enforcing the timeout."""
        job.started_at = now()
        while (outcome := horse.wait(self.job_monitoring_interval)) is None:
            working = (now() - job.started_at).total_seconds()
            if job.timeout and job.timeout > 0 and working > job.timeout + self.timeout_kill_grace:
                log.warning("step running past its timeout: killing its horse", extra={"job_id": job.id})
                self.timed_out_job_id = job.id
                self.kill_horse()
                continue
            self.maintain_heartbeats(job, execution)
        return outcome

    def _take_over(self, horse: Horse, taken: Taken, queue: Queue) -> tuple[Job, Execution] | None:
        """The job the horse took after its last one: running in the horse now, or handed back.

        RQ's records of its start are written as for a job this worker took (with the last
        job's success, :meth:`_record_start`). A job the horse does not run (not a step job)
        is this worker's next job instead (:meth:`dequeue_job_and_maintain_ttl`).
        """
        fields = taken.job or self._through_outage(self._read_job, taken.job_id)
        job = restored_job(self, taken.job_id, fields)
        if job is None or not taken.running:
            if job is not None:
                self._handed_back = job, queue
            return None
        rq_records.mark_started(job, self.name, at=taken.execution_created_at)  # the horse's moment
        execution = Execution(taken.execution_id, job.id, self.connection, worker_name=self.name)
        execution.created_at = taken.execution_created_at
        execution._job = job
        self._set_take_window()
        with self._horse_lock:
            self._now_running(horse, job.id, execution.id)
        self._through_outage(self._record_start, job, execution)
        return job, execution

    def _read_job(self, job_id: str) -> dict[bytes, bytes]:
        """A job's hash (a job the horse's report claimed: the horse never read it)."""
        fields: dict[bytes, bytes] = self.connection.hgetall(Job.key_for(job_id))  # type: ignore[assignment]
        return fields

    def _after_job(self, horse: Horse, report: Report) -> None:
        """Retire a horse that did its share of jobs or grew too large (a step that leaks)."""
        horse.jobs += 1
        why = self._worn_out(horse.jobs, report.rss)
        if why is not None:
            log.info("retiring work horse %s after %s", horse.pid, why, extra={"worker": self.name})
            horse.retire()
            self.horse = None

    def _worn_out(self, jobs: int, rss: int) -> str | None:
        """Why a horse that ran ``jobs`` jobs and is ``rss`` bytes resident must go; None if it may stay.

        The horse asks before it takes a job itself, its worker after each job it reports:
        a horse that took one was not worn out.
        """
        if self.horse_max_jobs and jobs >= self.horse_max_jobs:
            return f"{jobs} jobs"
        if self.horse_max_rss and rss > self.horse_max_rss:
            return f"{rss // 2**20} MiB resident"
        return None

    def _record_horse_end(self, job: Job, queue: Queue, execution: Execution, ended: Ended) -> None:
        """What RQ's monitor does after a horse ended without finishing its job."""
        try:
            status = job.get_status()
        except InvalidJobOperation:
            return  # the job is gone (it finished and expired)
        if self._stopped_job_id == job.id:
            self._handle_stopped_job(job, queue, execution)
        elif status not in (JobStatus.FINISHED, JobStatus.FAILED):
            job.ended_at = now()
            self.handle_work_horse_killed(job, ended.pid, ended.status, ended.rusage)
            why = f"Work-horse terminated unexpectedly ({ended.why})"
            self.handle_job_failure(job, queue=queue, exc_string=why, execution=execution)

    def handle_payload(self, message: dict[str, Any]) -> None:
        # Stop commands are checked against the job the horse runs now (see the class docstring).
        payload = parse_payload(message)
        if payload.get("command") in ("stop-job", "stop-execution"):
            self.stop_running(payload.get("job_id"), payload.get("execution_id"))
        else:
            handle_command(self, payload)

    def stop_running(self, job_id: str | None, execution_id: str | None = None) -> None:
        """Kill the horse if it runs ``job_id`` (or that execution) now; otherwise do nothing."""
        with self._horse_lock:
            running = self._running_job_id is not None and (
                job_id == self._running_job_id or execution_id == self._running_execution_id
            )
            if not running:
                # Maybe not yet: the horse may have taken the job and not said so yet.
                if job_id is not None:
                    self._stops_early[job_id] = True
                    if len(self._stops_early) > EARLY_STOPS_KEPT:
                        self._stops_early.popitem(last=False)
                log.info("stop command for a job not running here (yet)", extra={"job_id": job_id})
                return
            self._stopped_job_id = self._running_job_id
            self.kill_horse()

    def wait_for_horse(self) -> tuple[int | None, int | None, struct_rusage | None]:
        if self.horse is None:
            return None, None, None
        ended = self.horse.reap()
        self.horse = None
        return ended.pid, ended.status, ended.rusage

    def teardown(self) -> None:
        if not self.is_horse and self.horse is not None:
            self.horse.retire()
            self.horse = None
        if self._unrecorded is not None:
            with contextlib.suppress(*REDIS_DOWN):  # RQ's own cleanup ends the job's execution later
                self._record_unrecorded()
        super().teardown()

    # -- the reused horse: horse side ----------------------------------------------------

    def _serve(self, conn: Connection) -> NoReturn:
        """The horse's life: run each job as RQ's horse would, report, and go on with the next.

        The next job is the one the horse took itself, if its worker's window let it
        (:meth:`_take_next`), else the next one its worker assigns.
        """
        random.seed()
        self.setup_work_horse_signals()
        self._is_horse = True
        queues = {queue.name: queue for queue in self.queues}
        assignment = _assigned(conn)
        claims_in_a_row = 0
        while True:
            self._finished, self._claimed = None, None
            self._may_claim = claims_in_a_row < CLAIMS_IN_A_ROW
            try:
                self._perform(assignment, queues)
            except BaseException:
                # As a forked horse that failed outside its job: the worker records the job.
                log.exception("work horse failed outside its job", extra={"job_id": assignment.job_id})
                os._exit(1)
            self._jobs_done += 1
            rss = resident_bytes()
            taken = None
            if self._claimed is not None:
                claims_in_a_row += 1
                taken = self._claimed_job(self._claimed, assignment.queue_name)
            elif assignment.is_step and self._worn_out(self._jobs_done, rss) is None:
                claims_in_a_row = 0
                taken = self._take_next(queues[assignment.queue_name])
            conn.send(Report(rss=rss, finished=self._finished, taken=taken[0] if taken else None))
            next_assignment = taken[1] if taken else None
            assignment = next_assignment if next_assignment is not None else _assigned(conn)

    def _claims_next(self) -> bool:
        """Asked by a step's report: whether it may start the run's next step for this horse.

        Not after ``CLAIMS_IN_A_ROW`` claimed steps (the queue's next job comes first), nor
        when the worker's window is closed, nor for a horse that is to be retired after
        this step (the step must be the one it ends with).
        """
        if not self._may_claim or not self.take_window.is_open():
            return False
        return self._worn_out(self._jobs_done + 1, resident_bytes()) is None

    def _claimed_job(self, claimed: ClaimedStep, queue_name: str) -> tuple[Taken, Assignment]:
        """The step the last report started for this horse, as a job it took (:meth:`_take_next`)."""
        execution_id, created_at = uuid4().hex, now()
        handed = Taken(claimed.job_id, {}, execution_id, created_at, running=True)
        assignment = Assignment(
            claimed.job_id,
            {},
            queue_name,
            execution_id,
            created_at,
            timeout=claimed.job_timeout,
            claimed=claimed,
        )
        return handed, assignment

    def _take_next(self, queue: Queue) -> tuple[Taken, Assignment | None] | None:
        """The job waiting on ``queue``, taken by the horse itself while its worker's window is open.

        Steps of a run follow each other, so when one ends the next job is usually waiting:
        the horse takes it as its worker would (:meth:`_take_waiting_job`) and tells the
        worker in its report, which records the job's start while the horse runs it
        (the Assignment; None for a job that is not a step job, which the worker runs).
        Handing each job over from the worker cost a step a round trip to Redis and two
        hops between the processes. None if the window is closed, nothing waits, or Redis
        does not answer (the worker takes the next job then).
        """
        if not self.take_window.is_open():
            return None
        try:
            taken = self._take_waiting_job(queue, record_unrecorded=False)
        except REDIS_DOWN:
            return None  # a job moved off the queue by a lost reply is given back by the reaper
        if taken is None:
            return None
        job, fields = taken
        assignment = self._assignment(job, fields, queue.name, uuid4().hex, now())
        running = assignment.step is not None
        handed = Taken(job.id, fields, assignment.execution_id, assignment.execution_created_at, running)
        return handed, assignment if running else None

    def _assignment(
        self, job: Job, record: dict[bytes, bytes], queue_name: str, execution_id: str, created_at: datetime
    ) -> Assignment:
        """``job`` for a horse (``record``: its hash), with its step arguments if it runs directly."""
        timeout = int(job.timeout or self.queue_class.DEFAULT_TIMEOUT)
        step = self._step_arguments(job)
        return Assignment(job.id, record, queue_name, execution_id, created_at, step, timeout)

    def _perform(self, assignment: Assignment, queues: dict[str, Queue]) -> None:
        if assignment.is_step:
            self._perform_step(assignment, queues)
            return
        job, queue, execution = self._rebuild(assignment, queues)
        self.perform_job(job, queue, execution)

    def _perform_step(self, assignment: Assignment, queues: dict[str, Queue]) -> None:
        """A step job, run as RQ's ``perform_job`` runs a job, without rebuilding RQ's objects.

        A step job has no callbacks, retries or repeats, and its worker records its success
        (:meth:`handle_job_success`), so all the horse does is what ``perform_job`` does
        around the call: the job's timeout as an alarm (RQ's death penalty) and, if the call
        raises, RQ's own failure handling, on the job rebuilt then. Rebuilding RQ's job,
        queue and execution for every step, and RQ's bookkeeping around it, cost a no-op
        step about a tenth of its time. One difference: ``rq.get_current_job()`` is None
        inside the step (an action gets its run, step and attempt in its ``context``).
        """
        started_at = now()
        try:
            with self.death_penalty_class(assignment.timeout, JobTimeoutException, job_id=assignment.job_id):
                if assignment.claimed is not None:  # started by the last report already
                    started = assignment.claimed.started
                    result, claimed = jobs.run_started(started, self.name, self._claims_next)
                else:
                    assert assignment.step is not None
                    result, claimed = jobs.execute_step_claiming(
                        *assignment.step, worker=self.name, claim_next=self._claims_next
                    )
        except BaseException:  # as RQ's perform_job: whatever the job raised is the job's failure
            job, queue, execution = self._rebuild(assignment, queues)
            job.started_at = started_at
            self._finalize_failure(job, queue, execution, sys.exc_info())
            return
        self._finished = Finished(result, started_at, now())
        self._claimed = claimed

    def _rebuild(self, assignment: Assignment, queues: dict[str, Queue]) -> tuple[Job, Queue, Execution]:
        """RQ's job, queue and execution in the horse, as its worker prepared them."""
        job = self.job_class(assignment.job_id, connection=self.connection, serializer=self.serializer)
        if assignment.job:
            job.restore(assignment.job)
        else:  # a job its report claimed: the horse never read it
            job.refresh()
        rq_records.mark_started(job, self.name)  # as its worker marks a job it hands over
        self._prepared_job_id = job.id
        queue = queues.get(assignment.queue_name) or Queue(assignment.queue_name, connection=self.connection)
        execution = Execution(assignment.execution_id, job.id, self.connection, worker_name=self.name)
        execution.created_at = assignment.execution_created_at
        execution._job = job
        self.executions = {execution.id: execution}
        return job, queue, execution

    # -- the work loop's Redis calls ---------------------------------------------------------

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        if pipeline is not None:  # only queued on the caller's pipeline: nothing to retry here
            super().heartbeat(timeout, pipeline)
            return
        if timeout is None and time.monotonic() - self._last_beat < self.beat_at_most_every:
            return  # RQ beats several times per job; its record lives worker_ttl + 60 s
        self._through_outage(self._beat, timeout)

    def _beat(self, timeout: int | None) -> None:
        with self.connection.pipeline() as pipe:
            super().heartbeat(timeout, pipeline=pipe)
            recreated = pipe.execute()[0] == 1  # HSET made a new hash: Redis had lost ours
        self._last_beat = time.monotonic()
        if recreated:
            self.rejoin()

    def rejoin(self) -> None:
        """Write this worker's records again, as at its birth, after Redis lost them.

        A Redis restarted without its data, or an outage longer than the records' expiry,
        leaves a live worker unknown to RQ (``rq info``, the registry of workers).
        """
        log.warning("Redis lost this worker's records: registering it again", extra={"worker": self.name})
        with self.connection.pipeline() as pipe:
            pipe.hset(self.key, mapping=self.serialize())
            pipe.hset(self.key, "state", self.get_state())
            worker_registration.register(self, pipe)
            pipe.expire(self.key, self.worker_ttl + 60)
            pipe.execute()

    def set_state(self, state: str, pipeline: Pipeline | None = None) -> None:
        if pipeline is not None:
            super().set_state(state, pipeline)
            return
        if state == self._state:
            return  # RQ says idle after a job and again before the next dequeue
        self._through_outage(super().set_state, state)

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        """A job already waiting, taken and read in one round trip; otherwise RQ's blocking dequeue.

        RQ says idle, moves the job to its intermediate list, then reads it: three round trips
        before every job, and the worker is busy again a moment later. Steps of a run follow
        each other (the engine enqueues the next one before the horse reports), so the next job
        is usually waiting: one Lua call moves it as ``LMOVE`` does and returns its hash, and
        the worker stays busy. Only a worker about to wait says idle (in RQ's dequeue). The
        last job's success is recorded with the next job's start (:meth:`_record_start`),
        or before the worker waits.
        """
        if self._handed_back is not None:
            handed_back, self._handed_back = self._handed_back, None
            return handed_back
        if self._takes_waiting():
            taken = self._through_outage(self._take_waiting_job, self.queues[0])
            if taken is not None:
                return taken[0], self.queues[0]
        elif self._unrecorded is not None:
            self._through_outage(self._record_unrecorded)
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)

    def _takes_waiting(self) -> bool:
        """Whether a waiting job is taken in one script call (one queue, and ``LMOVE``: Redis 6.2)."""
        return len(self.queues) == 1 and self.get_redis_server_version() >= (6, 2, 0)

    def _take_waiting_job(
        self, queue: Queue, record_unrecorded: bool = True
    ) -> tuple[Job, dict[bytes, bytes]] | None:
        """The waiting job and its hash, or None (then the last step's success is recorded,
        unless ``record_unrecorded`` is False: in a horse, whose worker records it)."""
        keys = [queue.key, queue.intermediate_queue_key]
        args = [self.job_class.redis_job_namespace_prefix, self.name]
        while True:
            reply = self._take_waiting(keys, args)
            if not reply:
                if record_unrecorded:
                    self._record_unrecorded()
                return None
            job_id, values = reply
            fields = dict(zip(values[::2], values[1::2], strict=True))
            job = restored_job(self, text(job_id), fields)
            if job is None:
                continue  # passed over, as RQ's dequeue passes over a job whose hash is gone
            self.log.info("Worker %s: %s: %s", self.name, queue.name, job.id)
            return job, fields

    def handle_warm_shutdown_request(self) -> None:
        self.take_window.close()  # the job the horse has now is its last
        super().handle_warm_shutdown_request()

    def check_for_suspension(self, burst: bool) -> None:
        # ``rq suspend`` takes effect within a second, not one Redis call per job.
        if time.monotonic() < self._next_suspension_check:
            return
        self._next_suspension_check = time.monotonic() + self.beat_at_most_every
        self._through_outage(self._record_unrecorded)  # a suspended worker waits in there
        self._through_outage(super().check_for_suspension, burst)

    def run_maintenance_tasks(self) -> None:
        self._through_outage(super().run_maintenance_tasks)

    def _record_start(self, job: Job, execution: Execution) -> None:
        """RQ's records of the job's start, with the last job's success, in one script call,
        sent while the horse already starts the job (:mod:`worker.rq_records`).

        RQ's worker records the execution (and its own busy state), then its horse marks the
        job started (heartbeats, status, out of the intermediate list). The horse is this
        worker's own child now, so the worker does both; the horse needs none of it (it got
        the job as prepared), and a stop command for the job finds it running already.
        """
        ttl = self.get_heartbeat_ttl(job)
        single = len(self.queues) == 1
        rq_records.record(self._record, self, job, execution, ttl, self._unrecorded, intermediate=single)
        self._unrecorded = None
        self.executions[execution.id] = execution

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        if job.id == self._prepared_job_id:  # by the worker, with the execution
            self.procline(f"Processing {job.id} from {job.origin} since {time.time()}")
            return
        # In the work horse, before the step: wait (bounded) rather than fail the job.
        self._through_outage(super().prepare_job_execution, job, remove_from_intermediate_queue)

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        if not is_step_job(job):
            super().handle_execution_ended(job, queue, heartbeat_ttl)
            return
        job.ended_at = now()  # no callbacks to keep the job alive for: its end is recorded next

    def _step_arguments(self, job: Job) -> tuple[Any, ...] | None:
        """A step job's arguments, for its horse to run it directly (:meth:`_perform_step`);
        None for any other job, and for one whose data cannot be read (RQ's ``perform_job``
        fails it in the horse, as it fails any such job)."""
        return tuple(job.args) if self._success_recorded_here(job) else None

    def _success_recorded_here(self, job: Job) -> bool:
        """Whether this worker records the job's success rather than RQ's ``handle_job_success``.

        RQ first watches and reads the job's dependents (to enqueue them) and, for a result
        kept no time at all, reads the job's status and executions (to delete it): three to
        seven round trips. A step job has no dependents, repeats or rate limit (the engine
        enqueues what follows in the step's own transaction), so RQ's writes are all there
        is: its counters, the job finished with its result for ``result_ttl``, the execution
        cleaned up. The horse reports the success (:meth:`_perform_step`), and the worker
        writes them with the next job's start (:mod:`worker.rq_records`), while the horse
        starts that job, or by RQ's own methods before it waits for one: the step's end costs
        no round trip of its own. The engine has the step's outcome already; these are RQ's
        records of the job.
        """
        result_ttl = job.get_result_ttl(self.default_result_ttl)
        plain = not job.repeats_left and not job.has_rate_limit
        return is_engine_step_job(job) and result_ttl > 0 and plain

    def _record_unrecorded(self) -> None:
        """The last step's success on its own (when no job is taken right after it), by RQ's methods."""
        succeeded = self._unrecorded
        if succeeded is None:
            return
        job, execution, finished = succeeded.job, succeeded.execution, succeeded.finished
        result_ttl = job.get_result_ttl(self.default_result_ttl)
        job._result = finished.result
        job.started_at, job.ended_at = finished.started_at, finished.ended_at
        with self.connection.pipeline() as pipe:
            self.increment_successful_job_count(pipeline=pipe)
            self.increment_total_working_time(finished.ended_at - finished.started_at, pipe)
            job._handle_success(
                result_ttl,
                pipeline=pipe,
                worker_name=self.name,
                execution_id=execution.id,
                execution_started_at=execution.created_at,
                execution_ended_at=finished.ended_at,
            )
            job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
            self.cleanup_execution(job, pipeline=pipe, execution=execution)
            pipe.execute()
        job._status = JobStatus.FINISHED
        self._unrecorded = None

    def maintain_heartbeats(self, job: Job, execution: Execution) -> None:
        # Between polls of a running horse: a missed beat is retried at the next poll, and
        # the horse goes on with its step meanwhile.
        try:
            super().maintain_heartbeats(job, execution)
        except REDIS_DOWN as exc:
            log.warning(
                "heartbeat of a running job missed: Redis unavailable (%s)",
                exc,
                extra={"worker": self.name, "job_id": job.id},
            )

    def _pubsub_exception_handler(
        self, exc: Exception, pubsub: PubSub, pubsub_thread: PubSubWorkerThread
    ) -> None:
        # RQ's thread for stop commands: on a lost connection RQ logs an error every 2 s.
        # Wait for Redis here instead (redis-py subscribes again on the next read).
        if not isinstance(exc, REDIS_DOWN):
            super()._pubsub_exception_handler(exc, pubsub, pubsub_thread)
            return
        self.pubsub_outage.call(self.connection.ping)

    def register_death(self) -> None:
        # Shutting down during an outage: nothing to wait for. The liveness key expires
        # and the reaper hands back whatever this worker held.
        try:
            super().register_death()
        except REDIS_DOWN as exc:
            log.warning("could not record this worker's shutdown: Redis unavailable (%s)", exc)

    def unsubscribe(self) -> None:
        try:
            super().unsubscribe()
        except REDIS_DOWN:
            # Leaving during an outage: the subscription ends with its connection.
            if self.pubsub_thread is not None:
                self.pubsub_thread.stop()
                self.pubsub_thread.join(timeout=1)
            if self.pubsub is not None:
                self.pubsub.close()

    # -- names ---------------------------------------------------------------------------

    def take_over_name(self, engine: Engine) -> None:
        """Take this worker's name over from a dead worker that had it (a supervisor restart).

        RQ refuses a name whose record has no death date, which a worker killed outright,
        or one that could not record its shutdown while Redis was away, never gets. A live
        worker's name is still refused; a dead one's steps are handed back to the engine
        first, since the reaper would take them for this worker's from now on.
        """
        record = self.connection.hmget(self.key, ["death", "hostname", "pid"])
        death, hostname, pid = (text(value) for value in record)
        if record == [None, None, None] or death:
            return
        same_process_slot = hostname == self.hostname and pid is not None and not _process_alive(int(pid))
        if not same_process_slot and self.connection.exists(WorkerKeys(engine.keys.prefix).alive(self.name)):
            raise ValueError(f"There exists an active worker named {self.name!r} already")
        log.warning("taking over the name of a dead worker", extra={"worker": self.name, "pid": pid})
        reap(engine, dead_workers={self.name})
        self.connection.hset(self.key, "death", utcformat(now()))

    def kill_horse(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self.horse_pid <= 0:
            log.info("no work horse to kill", extra={"worker": self.name})
            return
        super().kill_horse(sig)


# The job at the head of a queue (KEYS[1]) moved to RQ's intermediate list (KEYS[2]) as
# RQ's non-blocking dequeue moves it, and its hash (ARGV[1]: the jobs' key prefix); false
# if the queue is empty. The job is marked as its taker's (ARGV[2]: the worker's name) at
# once, so a stop command for it finds the worker before RQ's records of its start are written.
TAKE_WAITING_JOB = """
local job_id = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
if not job_id then
    return false
end
local key = ARGV[1] .. job_id
local fields = redis.call('HGETALL', key)
if #fields > 0 then
    redis.call('HSET', key, 'worker_name', ARGV[2])
end
return {job_id, fields}
"""


def restored_job(worker: Worker, job_id: str, fields: dict[bytes, bytes]) -> Job | None:
    """RQ's job from its hash as a take read it; None if the hash is gone or is not a job's."""
    if not fields:
        return None
    job = worker.job_class(job_id, connection=worker.connection, serializer=worker.serializer)
    try:
        job.restore(fields)
    except NoSuchJobError:
        log.warning("a queued job's hash is not a job: passed over", extra={"job_id": job_id})
        return None
    job.redis_server_version = worker.get_redis_server_version()
    return job


def _assigned(conn: Connection) -> Assignment:
    """The next job from the worker; the horse leaves if it is retired or its worker is gone."""
    try:
        assignment: Assignment | None = conn.recv()
    except (EOFError, OSError):
        os._exit(0)  # the worker is gone
    if assignment is None:
        os._exit(0)  # retired
    return assignment


def is_step_job(job: Job) -> bool:
    """Whether ``job`` runs a step; False for a job whose data cannot be read (RQ fails it),
    which must not take the worker down with it."""
    try:
        return job.func_name == STEP_JOB
    except DeserializationError:
        return False


def is_engine_step_job(job: Job) -> bool:
    """Whether ``job`` is a step job as the engine makes them (run, step, attempt, dispatch).

    Only such a job runs directly in a horse (:meth:`SwitchboardWorker._perform_step`) and
    may be taken by one: any other is RQ's to run and fail, in the order RQ records them.
    """
    return is_step_job(job) and len(job.args) == 4


def job_record(job: Job) -> dict[bytes, bytes]:
    """The job as its Redis hash holds it (what ``Job.restore`` reads), for the horse to rebuild."""
    record: dict[bytes, bytes] = {}
    for key, value in job.to_dict(include_result=False).items():
        if isinstance(value, str):  # str enums too (the status): their value, as redis-py writes them
            value = value.encode()
        record[key.encode()] = value if isinstance(value, bytes) else str(value).encode()
    return record


def patient(queue_class: type[Queue], outage: Outage) -> type[Queue]:
    """``queue_class`` whose dequeue waits for Redis through ``outage``.

    RQ's dequeue loop catches a lost connection itself and logs an error for each try; a
    worker between two steps is often in that loop, now that a step takes milliseconds.
    Waiting here keeps it to the one warning per retry every other loop of a worker gives.
    A dequeue cut off midway may have moved its job to RQ's intermediate list without
    saying so: the reaper enqueues such a job again (:func:`worker.reaper.reap`).
    """

    class PatientQueue(queue_class):  # type: ignore[valid-type,misc]
        @classmethod
        def dequeue_any(cls, *args: Any, **kwargs: Any) -> Any:
            return outage.call(super().dequeue_any, *args, **kwargs)

    return PatientQueue


def _process_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process other than this one (a restarted worker may get its old pid)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def report_killed_horse(engine: Engine, job: Job, worker_name: str, timed_out: bool = False) -> None:
    """A horse died without reporting: tell the engine now, not at the next reap.

    Killed by its worker for running past its timeout, the step timed out (as when its
    alarm ends it); otherwise (an OOM kill, a segfault) it was lost.
    """
    if not is_engine_step_job(job):
        return
    run_id, step_id, attempt, _dispatch = job.args
    try:
        if timed_out:
            run = engine.get_run(run_id)
            error = jobs.timed_out(engine.workflow_of(run).step(step_id))
            engine.step_finished(run_id, step_id, attempt, error=error)
        else:
            engine.step_lost(run_id, step_id, attempt, worker_name)
    except (CommandRefused, NotFound) as exc:
        log.info("killed horse's step already moved on", extra={"job_id": job.id, "reason": str(exc)})


class Heartbeat(LoopThread):
    """Keeps this worker's liveness key alive, beat by beat, until stopped.

    The key expires ``worker_lost_after`` seconds after the last beat, by Redis's own
    clock: if this process dies, the reaper finds the key gone, and no machine's clock
    is compared with another's. Its own thread, so a long reaper pass cannot delay it.
    While Redis is away it keeps trying at its own pace (a beat is one cheap command), so
    the key is back within a beat of Redis's return.
    """

    def __init__(self, engine: Engine, options: WorkerSettings, worker_name: str) -> None:
        super().__init__(name="switchboard-heartbeat")
        self.redis = engine.redis
        self.key = WorkerKeys(engine.keys.prefix).alive(worker_name)
        self.interval = options.heartbeat_interval
        self.lifetime_ms = int(options.worker_lost_after * 1000)
        self.outage = Outage(f"heartbeat of worker {worker_name}", first=self.interval, longest=self.interval)
        self.beat()  # alive before the first job can be taken

    def beat(self) -> None:
        self.redis.set(self.key, "1", px=self.lifetime_ms)

    def stop(self) -> None:
        super().stop()
        with contextlib.suppress(*REDIS_DOWN):  # it expires by itself
            self.redis.delete(self.key)

    def run(self) -> None:
        pause: float = self.interval
        while not self.stopping.wait(pause):
            pause = self.interval
            try:
                self.beat()
            except REDIS_DOWN as exc:
                pause = self.outage.failed(exc)
                continue
            except Exception:
                log.exception("heartbeat failed")
                continue
            self.outage.recovered()


class Maintenance(LoopThread):
    """Fires due timers often and reaps lost steps now and then, until stopped.

    While Redis is away it backs off (up to a reaper interval between tries: each try is
    one cheap call), and for ``settle_after_outage`` seconds after Redis is back it lets
    the reaper judge only facts, not silence (see :func:`worker.reaper.reap`).
    """

    def __init__(self, engine: Engine, options: WorkerSettings, worker_name: str) -> None:
        super().__init__(name="switchboard-maintenance")
        self.engine = engine
        self.options = options
        self.worker_name = worker_name
        self.lock_key = WorkerKeys(engine.keys.prefix).reaper_lock
        self.outage = Outage(
            f"maintenance of worker {worker_name}",
            longest=min(LONGEST_RETRY_SECONDS, max(options.reaper_interval, options.maintenance_interval)),
        )
        self.redis_back_at: float | None = None  # monotonic time this thread saw Redis answer again

    def run(self) -> None:
        next_reap = time.monotonic() + self.options.reaper_interval
        pause = self.options.maintenance_interval
        while not self.stopping.wait(pause):
            pause = self.options.maintenance_interval
            try:
                self.fire_timers()
                if time.monotonic() >= next_reap:
                    next_reap = time.monotonic() + self.options.reaper_interval
                    self.reap_if_first()
            except REDIS_DOWN as exc:
                pause = self.outage.failed(exc)
                continue
            except Exception:
                # A bad run document, a bug: log it and try again next pass.
                log.exception("maintenance pass failed")
                continue
            if self.outage.recovered():
                self.redis_back_at = time.monotonic()

    def settling(self) -> bool:
        """Whether Redis came back (restarted, failed over, reachable again) too recently to judge silence."""
        settle = self.options.settle_after_outage
        if self.redis_back_at is not None and time.monotonic() - self.redis_back_at < settle:
            return True
        return redis_uptime(self.engine) < settle

    def fire_timers(self) -> None:
        limit = 100
        while self.engine.fire_due_timers(limit=limit) >= limit:
            pass  # a backlog: keep going until it is cleared

    def reap_if_first(self) -> None:
        """Reap unless another worker already did in this interval (the commands are idempotent anyway)."""
        lease_ms = max(int(self.options.reaper_interval * 900), 1)
        if self.engine.redis.set(self.lock_key, self.worker_name, nx=True, px=lease_ms):
            reap(self.engine, settling=self.settling(), hand_off_grace=self.options.hand_off_grace)
            housekeep(self.engine, self.worker_name, self.options.retention_interval)
