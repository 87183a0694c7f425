"""Find steps that no worker will ever report on, and hand them back to the engine.

A worker killed with SIGKILL leaves its step ``running`` for good, and RQ itself only
notices when the job's entry in the started registry expires, minutes later. So the
reaper looks at the steps the engine believes are running or queued (through the index
of active runs, never a scan of all runs) and checks each against RQ's records:

- a running step whose worker has shut down, or whose liveness key has expired (no
  heartbeat for ``worker_lost_after`` seconds), or whose job ended without a report and
  is no longer executing anywhere, is lost: ``engine.step_lost`` retries it (idempotent
  steps) or fails it with ``WORKER_LOST``;
- a queued step whose job vanished (Redis eviction), or was taken by a worker that died
  before the step started, is enqueued again under the same job id;
- a queued step whose job sits in no queue (left in RQ's intermediate list by a worker
  whose Redis went away between taking the job and starting it, or missing from a short
  queue) is enqueued again too, once two passes at least ``hand_off_grace`` seconds apart
  have seen it so: a step that never started is always safe to enqueue again, and the
  grace keeps the normal hand-off (``BLMOVE`` to the intermediate list, then start) from
  being mistaken for a loss;
- a queued step whose job failed before the step started is reported as a failed
  attempt, which the step's retry policy may repeat;
- a running step whose job is still queued in no queue was started by a report's claim
  (eager dispatch) whose worker never heard of it (its horse died, or the reply was lost):
  seen so in two passes at least ``hand_off_grace`` seconds apart, it is lost too.

Liveness is a key each worker's heartbeat thread keeps alive with a Redis expiry, so it
is judged on the Redis server's clock alone: workers on machines whose clocks disagree
are never declared dead for it. Right after Redis comes back from an outage (``settling``)
liveness keys may have expired while nobody could renew them, and workers are still
working through their backoff: then the reaper judges neither silence nor stuck hand-offs,
only facts (a job gone, a worker that shut down). Every decision is re-checked by the
engine inside its transaction, so a stale view here (a step that finished in the
meantime) does nothing.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

from redis.client import Pipeline
from rq.job import Job, JobStatus
from rq.worker import Worker

from engine.api import Engine
from engine.errors import CommandRefused, NotFound
from engine.model import FailureCode, Run, RunStatus, StepError, StepState, StepStatus
from engine.redis_idioms import text, texts
from worker.keys import WorkerKeys

log = logging.getLogger(__name__)

# Runs that can have running or queued steps (a paused run's running steps keep running).
RUNS_WITH_STEPS_IN_FLIGHT = (RunStatus.RUNNING, RunStatus.PAUSED, RunStatus.DRAINING)
JOB_ENDED = {JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED, JobStatus.FINISHED}
JOB_DIED = {JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}
BATCH = 100
# A queue longer than this is not read whole: a job missing from it is found once it is shorter.
QUEUE_SNAPSHOT_LIMIT = 1000


@dataclass
class Reaped:
    """What one pass did, for logs and tests."""

    lost: list[str] = field(default_factory=list)  # job ids of steps reported lost
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.lost or self.requeued or self.failed)


@dataclass(frozen=True)
class _InFlight:
    run: Run
    step: StepState

    @property
    def job_id(self) -> str:
        assert self.step.job_id is not None
        return self.step.job_id


@dataclass(frozen=True)
class _Pass:
    """What one pass knows besides the runs: how to judge, and where RQ's jobs wait."""

    settling: bool
    dead_workers: Collection[str]
    intermediate: set[str]  # job ids a worker has taken off the queue but not started yet
    queued: set[str]  # job ids in the queue, when it is short enough to read
    queue_known: bool  # False: the queue was too long to read, so absence from it says nothing
    handed_off: dict[str, str] = field(default_factory=dict)  # job id in no queue -> "run_id step_id"
    # job id of a running step whose job was never started -> the step, claimed unheard
    unheard: dict[str, _InFlight] = field(default_factory=dict)


def reap(
    engine: Engine,
    *,
    settling: bool = False,
    dead_workers: Collection[str] = (),
    hand_off_grace: float = 4.0,
) -> Reaped:
    """One pass over every run with steps in flight.

    ``settling``: Redis has just come back; judge no worker by its silence and no job by
    its absence from the queues. ``dead_workers``: names known dead although their
    liveness key may still exist (a worker restarted under the same name).
    """
    done = Reaped()
    state = _snapshot(engine, settling, dead_workers)
    for batch in _batches(_steps_in_flight(engine)):
        _reap_batch(engine, batch, state, done)
    _requeue_stuck(engine, state, hand_off_grace, done)
    if done:
        log.warning(
            "reaper acted",
            extra={"lost": done.lost, "requeued": done.requeued, "failed": done.failed},
        )
    return done


def redis_uptime(engine: Engine) -> float:
    """Seconds since the Redis server started: a restart shows as a small number."""
    info = engine.redis.info("server")
    return float(info["uptime_in_seconds"])


def _snapshot(engine: Engine, settling: bool, dead_workers: Collection[str]) -> _Pass:
    queue = engine.queue
    with engine.redis.pipeline(transaction=False) as pipe:
        pipe.lrange(queue.intermediate_queue_key, 0, -1)
        pipe.llen(queue.key)
        pipe.lrange(queue.key, 0, QUEUE_SNAPSHOT_LIMIT - 1)
        intermediate, length, queued = pipe.execute()
    return _Pass(
        settling,
        dead_workers,
        intermediate=set(texts(intermediate)),
        queued=set(texts(queued)),
        queue_known=length <= QUEUE_SNAPSHOT_LIMIT,
    )


def _steps_in_flight(engine: Engine) -> Iterator[_InFlight]:
    for status in RUNS_WITH_STEPS_IN_FLIGHT:
        for run in engine.queries.runs_with_status(status):
            for st in run.steps.values():
                if st.job_id and st.status in (StepStatus.RUNNING, StepStatus.QUEUED):
                    yield _InFlight(run, st)


def _batches(items: Iterator[_InFlight]) -> Iterator[list[_InFlight]]:
    while batch := list(itertools.islice(items, BATCH)):
        yield batch


def _reap_batch(engine: Engine, batch: list[_InFlight], state: _Pass, done: Reaped) -> None:
    with engine.redis.pipeline(transaction=False) as pipe:
        for item in batch:
            pipe.hmget(Job.key_for(item.job_id), ["status", "worker_name"])
        jobs = {
            item.job_id: (text(status), text(name))
            for item, (status, name) in zip(batch, pipe.execute(), strict=True)
        }
        # The worker a step is bound to: the one running it, or the one that took its job.
        bound = {item.job_id: item.step.worker or jobs[item.job_id][1] for item in batch}
        workers = sorted({name for name in bound.values() if name})
        health = _worker_health(engine, pipe, workers, state)
    executing: set[str] | None = None  # read only when needed, after the job statuses
    for item in batch:
        status, _ = jobs[item.job_id]
        worker = bound[item.job_id]
        dead = health.get(worker) if worker else None
        try:
            if item.step.status is StepStatus.QUEUED:
                _check_queued(engine, item, status, dead, state, done)
                continue
            if dead is None and status == JobStatus.QUEUED and _in_no_queue(item.job_id, state):
                state.unheard[item.job_id] = item  # judged once the grace is over (_requeue_stuck)
                continue
            if dead is None and status in JOB_ENDED:
                # Ended, yet the step still runs: lost, unless another execution of the same
                # job (enqueued twice) is the one running it and will report.
                if executing is None:
                    executing = set(engine.queue.started_job_registry.get_job_ids(cleanup=False))
                if item.job_id in executing:
                    continue
            _check_running(engine, item, status, dead, done)
        except (CommandRefused, NotFound) as exc:
            log.info("reaper decision overtaken", extra={"job_id": item.job_id, "reason": str(exc)})


def _check_running(
    engine: Engine, item: _InFlight, job_status: str | None, dead: str | None, done: Reaped
) -> None:
    st = item.step
    if dead is None and job_status not in JOB_ENDED and job_status is not None:
        return
    why = f"worker {st.worker} {dead}" if dead else f"its job ended without a report ({job_status or 'gone'})"
    log.warning("step lost", extra={"run_id": item.run.run_id, "step_id": st.step_id, "reason": why})
    assert st.worker is not None
    engine.step_lost(item.run.run_id, st.step_id, st.attempt, st.worker)
    done.lost.append(item.job_id)


def _check_queued(
    engine: Engine,
    item: _InFlight,
    job_status: str | None,
    dead: str | None,
    state: _Pass,
    done: Reaped,
) -> None:
    st = item.step
    run_id = item.run.run_id
    taken_by_the_dead = job_status == JobStatus.STARTED and dead is not None
    if job_status is None or taken_by_the_dead:
        # The step never started, so running it (again) is always safe.
        if engine.requeue_step(run_id, st.step_id):
            done.requeued.append(item.job_id)
    elif job_status in JOB_DIED:
        error = StepError(
            code=FailureCode.STEP_FAILED,
            message=f"The job for this step ended ({job_status}) before the step could start.",
            retryable=True,
        )
        engine.step_finished(run_id, st.step_id, st.attempt, error=error)
        done.failed.append(item.job_id)
    elif job_status == JobStatus.QUEUED and _in_no_queue(item.job_id, state):
        state.handed_off[item.job_id] = f"{run_id} {st.step_id}"


def _in_no_queue(job_id: str, state: _Pass) -> bool:
    """Taken off the queue but not started, or (as far as a short queue shows) never on it."""
    return job_id in state.intermediate or (state.queue_known and job_id not in state.queued)


def _requeue_stuck(engine: Engine, state: _Pass, grace: float, done: Reaped) -> None:
    """Enqueue again the queued steps whose job has sat in no queue for two passes ``grace``
    apart; report lost the running steps whose job has sat so unstarted (claimed unheard).

    Each pass notes, on Redis's clock, when it first saw such a job; the note goes when
    the job moves on. While Redis settles after an outage nothing is judged and the
    notes are dropped, so the grace starts over once workers have caught up.
    """
    key = WorkerKeys(engine.keys.prefix).stuck_jobs
    if state.settling:
        engine.redis.delete(key)
        return
    seen: dict[bytes, bytes] = engine.redis.hgetall(key)  # type: ignore[assignment]
    first_seen = {text(job_id): float(at) for job_id, at in seen.items()}
    seconds, micros = engine.redis.time()
    now = seconds + micros / 1e6
    stuck = [*state.handed_off, *state.unheard]
    gone = [job_id for job_id in first_seen if job_id not in stuck]
    with engine.redis.pipeline(transaction=False) as pipe:
        if gone:
            pipe.hdel(key, *gone)
        for job_id in stuck:
            pipe.hsetnx(key, job_id, now)
        pipe.execute()
    for job_id, item in state.unheard.items():
        if job_id not in first_seen or now - first_seen[job_id] < grace:
            continue
        st = item.step
        log.warning("step claimed but never run: lost", extra={"run_id": item.run.run_id, "job_id": job_id})
        assert st.worker is not None
        with contextlib.suppress(CommandRefused, NotFound):
            engine.step_lost(item.run.run_id, st.step_id, st.attempt, st.worker)
            done.lost.append(job_id)
        engine.redis.hdel(key, job_id)
    intermediate = engine.queue.intermediate_queue
    for job_id, where in state.handed_off.items():
        if job_id not in first_seen or now - first_seen[job_id] < grace:
            continue
        run_id, step_id = where.split(" ", 1)
        # Out of RQ's intermediate list first, or RQ's own cleanup would later mark the job
        # (running again by then) failed as "stuck in intermediate queue".
        intermediate.remove(job_id)
        engine.redis.delete(intermediate.get_first_seen_key(job_id))
        try:
            if engine.requeue_step(run_id, step_id):
                log.warning("job in no queue enqueued again", extra={"run_id": run_id, "job_id": job_id})
                done.requeued.append(job_id)
        except NotFound:
            pass
        engine.redis.hdel(key, job_id)


def _worker_health(engine: Engine, pipe: Pipeline, names: list[str], state: _Pass) -> dict[str, str | None]:
    """For each worker name: None if alive (or not judged while Redis settles), else why it is dead."""
    keys = WorkerKeys(engine.keys.prefix)
    for name in names:
        pipe.hget(Worker.redis_worker_namespace_prefix + name, "death")
        pipe.exists(keys.alive(name))
    replies = pipe.execute()
    health: dict[str, str | None] = {}
    for name, death, alive in zip(names, replies[::2], replies[1::2], strict=True):
        if name in state.dead_workers:
            health[name] = "was restarted under the same name"
        elif death:
            health[name] = "has shut down"
        elif not alive and not state.settling:
            health[name] = "stopped sending heartbeats"
        else:
            health[name] = None
    return health
