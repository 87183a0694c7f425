"""Find steps that no worker will ever report on, and hand them back to the engine.

A worker killed with SIGKILL leaves its step ``running`` for good, and RQ itself only
notices when the job's entry in the started registry expires, minutes later. So the
reaper looks at the steps the engine believes are running or queued (through the index
of active runs, never a scan of all runs) and checks each against RQ's records:

- a running step whose worker has shut down, or whose liveness key has expired (no
  heartbeat for ``worker_lost_after`` seconds), or whose job ended without a report, is
  lost: ``engine.step_lost`` retries it (idempotent steps) or fails it with ``WORKER_LOST``;
- a queued step whose job vanished (Redis eviction), or was taken by a worker that died
  before the step started, is enqueued again under the same job id;
- a queued step whose job failed before the step started is reported as a failed
  attempt, which the step's retry policy may repeat.

Liveness is a key each worker's heartbeat thread keeps alive with a Redis expiry, so it
is judged on the Redis server's clock alone: workers on machines whose clocks disagree
are never declared dead for it. Every decision is re-checked by the engine inside its
transaction, so a stale view here (a step that finished in the meantime) does nothing.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from redis.client import Pipeline
from rq.job import Job, JobStatus
from rq.worker import Worker

from engine.api import Engine
from engine.errors import CommandRefused, NotFound
from engine.model import FailureCode, Run, RunStatus, StepError, StepState, StepStatus

log = logging.getLogger(__name__)

# Runs that can have running or queued steps (a paused run's running steps keep running).
RUNS_WITH_STEPS_IN_FLIGHT = (RunStatus.RUNNING, RunStatus.PAUSED, RunStatus.DRAINING)
JOB_ENDED = {JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED, JobStatus.FINISHED}
JOB_DIED = {JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}
BATCH = 100


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


def alive_key(engine: Engine, worker_name: str) -> str:
    """Exists while the worker named ``worker_name`` sends heartbeats (see ``worker.process``)."""
    return f"{engine.keys.prefix}worker:alive:{worker_name}"


def reap(engine: Engine) -> Reaped:
    """One pass over every run with steps in flight."""
    done = Reaped()
    for batch in _batches(_steps_in_flight(engine)):
        _reap_batch(engine, batch, done)
    if done:
        log.warning(
            "reaper acted",
            extra={"lost": done.lost, "requeued": done.requeued, "failed": done.failed},
        )
    return done


def _steps_in_flight(engine: Engine) -> Iterator[_InFlight]:
    for status in RUNS_WITH_STEPS_IN_FLIGHT:
        ids = engine.store.scan_index(engine.keys.by_status(status))
        while chunk := list(itertools.islice(ids, BATCH)):
            for run in engine.store.load_aligned(chunk):
                if run is None:
                    continue
                for st in run.steps.values():
                    if st.job_id and st.status in (StepStatus.RUNNING, StepStatus.QUEUED):
                        yield _InFlight(run, st)


def _batches(items: Iterator[_InFlight]) -> Iterator[list[_InFlight]]:
    while batch := list(itertools.islice(items, BATCH)):
        yield batch


def _reap_batch(engine: Engine, batch: list[_InFlight], done: Reaped) -> None:
    with engine.redis.pipeline(transaction=False) as pipe:
        for item in batch:
            pipe.hmget(Job.key_for(item.job_id), ["status", "worker_name"])
        jobs = {
            item.job_id: (_text(status), _text(name))
            for item, (status, name) in zip(batch, pipe.execute(), strict=True)
        }
        # The worker a step is bound to: the one running it, or the one that took its job.
        bound = {item.job_id: item.step.worker or jobs[item.job_id][1] for item in batch}
        workers = sorted({name for name in bound.values() if name})
        health = _worker_health(engine, pipe, workers)
    for item in batch:
        status, _ = jobs[item.job_id]
        worker = bound[item.job_id]
        dead = health.get(worker) if worker else None
        try:
            if item.step.status is StepStatus.RUNNING:
                _check_running(engine, item, status, dead, done)
            else:
                _check_queued(engine, item, status, dead, done)
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
    engine: Engine, item: _InFlight, job_status: str | None, dead: str | None, done: Reaped
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


def _worker_health(engine: Engine, pipe: Pipeline, names: list[str]) -> dict[str, str | None]:
    """For each worker name: None if alive, else why it counts as dead."""
    for name in names:
        pipe.hget(Worker.redis_worker_namespace_prefix + name, "death")
        pipe.exists(alive_key(engine, name))
    replies = pipe.execute()
    health: dict[str, str | None] = {}
    for name, death, alive in zip(names, replies[::2], replies[1::2], strict=True):
        if death:
            health[name] = "has shut down"
        elif not alive:
            health[name] = "stopped sending heartbeats"
        else:
            health[name] = None
    return health


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
