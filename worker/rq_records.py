"""RQ's records of a job's start, and of the success of the step job before it, in one script call.

Between two steps RQ's worker records the job it starts (its execution, the started
registry, the job's status and heartbeat, its own busy state) and the success of the job
it ran before (the job finished, its result, the finished registry, its counters, the
execution cleaned up). Its methods do that with some thirty commands built across a dozen
objects (the job saved whole, a registry object per registry), which cost a no-op step's
worker process most of its time. :func:`record` writes the same records with one script:
the key names come from RQ's own objects, the values from RQ's own helpers (timestamps,
the result's serialisation), and the script writes what RQ's methods write, in RQ 3.0's
layout (``tests/test_worker_pool.py`` reads them back through RQ's API). One difference,
on purpose: a finished job whose hash is gone (its run was stopped and the job expired
meanwhile) is not written back whole, only its result and registries are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis import Redis
from rq.executions import Execution, ExecutionRegistry
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import FinishedJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.utils import current_timestamp, now, utcformat
from rq.worker import Worker, WorkerStatus

from worker.horse import Finished

# KEYS: the worker's hash and its executions set; the job's hash, its execution's hash, its
# executions registry, its queue's started registry and intermediate list; then, for a
# success, the finished job's hash, result stream, queue's finished registry, dependents and
# dependencies keys, execution's hash, executions registry and queue's started registry.
# ARGV: see record().
RECORD = """
local worker, worker_executions = KEYS[1], KEYS[2]
if ARGV[11] == '1' then
  -- Worker.handle_job_success: counters, Job._handle_success, Job.cleanup, cleanup_execution
  local job, results, ttl = KEYS[8], KEYS[9], ARGV[16]
  redis.call('HINCRBY', worker, 'successful_job_count', 1)
  redis.call('HINCRBYFLOAT', worker, 'total_working_time', ARGV[14])
  if redis.call('EXISTS', job) == 1 then
    redis.call('HSET', job, 'status', ARGV[19], 'ended_at', ARGV[15])
  end
  redis.call('XADD', results, 'MAXLEN', '~', '10', '*', unpack(ARGV, 20))
  redis.call('EXPIRE', results, ttl)
  redis.call('ZADD', KEYS[10], ARGV[17], ARGV[12])
  redis.call('EXPIRE', job, ttl)
  redis.call('EXPIRE', KEYS[11], ttl)
  redis.call('EXPIRE', KEYS[12], ttl)
  redis.call('DEL', KEYS[13])
  redis.call('ZREM', KEYS[15], ARGV[13])
  redis.call('ZREM', KEYS[14], ARGV[18])
  redis.call('SREM', worker_executions, ARGV[13])
end
-- Execution.create, Worker.set_state and heartbeat, Job.heartbeat and prepare_for_execution;
-- not for a job that has ended already (RQ's JobStatus values): a horse that took the job
-- itself may have run and failed it before its worker got to record its start.
local job, execution, ttl = KEYS[3], KEYS[4], tonumber(ARGV[5])
local status = redis.call('HGET', job, 'status')
if status == 'failed' or status == 'finished' then
  return
end
redis.call('HSET', execution, 'id', ARGV[2], 'job_id', ARGV[1], 'created_at', ARGV[4],
  'last_heartbeat', ARGV[4], 'worker_name', ARGV[6])
redis.call('EXPIRE', execution, ttl)
redis.call('ZADD', KEYS[5], ARGV[8] + 60, ARGV[2])
redis.call('EXPIRE', KEYS[5], ttl + 60)
redis.call('ZADD', KEYS[6], ARGV[8], ARGV[3])
redis.call('SADD', worker_executions, ARGV[3])
redis.call('HSET', worker, 'state', ARGV[9], 'last_heartbeat', ARGV[7])
redis.call('EXPIRE', worker, ttl)
redis.call('EXPIRE', worker_executions, ttl)
redis.call('HSET', job, 'last_heartbeat', ARGV[7], 'status', ARGV[10], 'started_at', ARGV[7],
  'worker_name', ARGV[6])
redis.call('PERSIST', job)
if KEYS[7] ~= '' then redis.call('LREM', KEYS[7], 1, ARGV[1]) end
"""


@dataclass(frozen=True)
class Succeeded:
    """A step job its horse ran to success (as the horse reported it), not recorded in RQ yet."""

    job: Job
    execution: Execution
    finished: Finished


def mark_started(job: Job, worker_name: str, at: datetime | None = None) -> None:
    """The job as ``Job.prepare_for_execution`` leaves it, without writing it (:func:`record` does);
    ``at``: when it started, if not now (a job its horse took, heard of afterwards)."""
    job.worker_name = worker_name
    job.last_heartbeat = job.started_at = at or now()
    job._status = JobStatus.STARTED


def record(
    script: Any,
    worker: Worker,
    job: Job,
    execution: Execution,
    ttl: int,
    succeeded: Succeeded | None,
    intermediate: bool = True,
) -> None:
    """Write RQ's records of ``job`` started under ``execution`` (``ttl``: its heartbeat's;
    ``intermediate``: take it off its queue's intermediate list) and of ``succeeded``,
    through ``script`` (:data:`RECORD`, registered on the worker's connection)."""
    connection: Redis = worker.connection
    assert job.started_at is not None
    moment = current_timestamp()
    keys = [
        worker.key,
        worker.executions_key,
        job.key,
        execution.key,
        ExecutionRegistry(job_id=job.id, connection=connection).key,
        StartedJobRegistry(job.origin, connection=connection).key,
        Queue(job.origin, connection=connection).intermediate_queue_key if intermediate else "",
    ]
    args: list[Any] = [
        job.id,  # 1
        execution.id,
        execution.composite_key,
        execution.created_at.timestamp(),
        ttl,  # 5
        worker.name,
        utcformat(job.started_at),
        moment + ttl,  # the started registry's score
        WorkerStatus.BUSY.value,
        JobStatus.STARTED.value,  # 10
        "1" if succeeded else "0",
    ]
    worker._state = WorkerStatus.BUSY
    worker.last_heartbeat = job.started_at
    if succeeded is not None:
        done, ran, finished = succeeded.job, succeeded.execution, succeeded.finished
        result_ttl = done.get_result_ttl(worker.default_result_ttl)
        result = Result(
            job_id=done.id,
            type=Result.Type.SUCCESSFUL,
            connection=connection,
            return_value=finished.result,
            worker_name=worker.name,
            execution_id=ran.id,
            execution_started_at=ran.created_at,
            execution_ended_at=finished.ended_at,
        )
        keys += [
            done.key,  # 8
            Result.get_key(done.id),
            FinishedJobRegistry(done.origin, connection=connection).key,
            done.dependents_key,
            done.dependencies_key,
            ran.key,
            ExecutionRegistry(job_id=done.id, connection=connection).key,
            StartedJobRegistry(done.origin, connection=connection).key,  # 15
        ]
        args += [
            done.id,  # 12
            ran.composite_key,
            (finished.ended_at - finished.started_at).total_seconds(),
            utcformat(finished.ended_at),
            result_ttl,  # 16
            moment + result_ttl,  # the finished registry's score
            ran.id,
            JobStatus.FINISHED.value,
        ]
        for field, value in result.serialize().items():  # 20 on
            args += [field, value]
        done._status = JobStatus.FINISHED
    script(keys=keys, args=args)
