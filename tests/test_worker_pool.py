"""The reused work horse, through real worker processes (``python -m worker``) on the real Redis.

A worker forks one horse and hands it job after job; these tests watch the horse's pid
(steps report ``os.getpid()``) to see it reused, replaced after a stop, a crash or a
timeout, and retired when a step leaks or it has done its share of jobs.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from rq import Queue, Worker
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.results import Result

from engine.api import STEP_JOB, Engine
from engine.catalog import load_folder
from engine.model import FailureCode, Run, RunStatus, StepStatus
from tests.test_worker_e2e import OPERATOR, Harness, action, workflow
from worker import rq_records
from worker.process import CLAIMS_IN_A_ROW

PROBE = """
import os, signal, time

LEAKED = []


def pid(context=None, **args):
    return {"pid": os.getpid()}


def exits_on_first_attempt(code=0, context=None, **args):
    if context["attempt"] == 1:
        os._exit(code)  # no report, no exception: the process just ends
    return {"pid": os.getpid()}


def long(path, seconds=30, context=None, **args):
    with open(path, "w") as file:
        file.write(str(os.getpid()))
    time.sleep(seconds)
    return {"pid": os.getpid()}


def deaf(path, seconds=60, context=None, **args):
    signal.signal(signal.SIGALRM, signal.SIG_IGN)  # the job's alarm goes unheard
    return long(path, seconds)


def leak(mb=64, context=None, **args):
    LEAKED.append(b"\\x01" * (mb * 2**20))  # touched, so resident
    with open("/proc/self/statm") as statm:
        resident = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return {"pid": os.getpid(), "resident_mb": resident / 2**20}
"""

POOL_WORKFLOWS = [
    workflow("pids", [action(f"p{i}", "probe:pid", [f"p{i - 1}"] if i else []) for i in range(6)]),
    workflow("long", [action("slow", "probe:long", args={"path": "{{ inputs.marker }}"})]),
    workflow(
        "exits",
        [
            action(
                "bye",
                "probe:exits_on_first_attempt",
                retry={"max_attempts": 2, "backoff": 0.1, "idempotent": True},
            ),
            action("after", "probe:pid", ["bye"]),
        ],
    ),
    workflow("deaf", [action("stuck", "probe:deaf", args={"path": "{{ inputs.marker }}"}, timeout=1)]),
    workflow("leaks", [action(f"l{i}", "probe:leak", [f"l{i - 1}"] if i else []) for i in range(4)]),
    # Longer than a horse runs by eager dispatch before it takes the queue's next job.
    workflow(
        "chain", [action(f"c{i}", "probe:pid", [f"c{i - 1}"] if i else []) for i in range(CLAIMS_IN_A_ROW + 4)]
    ),
    workflow("one", [action("only", "probe:pid")]),
    workflow(
        "claimable",
        [
            action("a0", "probe:pid"),
            action("a1", "probe:pid", ["a0"], retry={"max_attempts": 2, "backoff": 0.1, "idempotent": True}),
        ],
    ),
    workflow(
        "then_long",
        [action("first", "probe:pid"), action("slow", "probe:long", ["first"], args={"path": "{{ inputs.marker }}"})],
    ),
]


@pytest.fixture
def pool(tmp_path: Path, namespace: str, redis_conn: redis.Redis) -> Iterator[Harness]:
    """The end-to-end harness, with the probe actions and these workflows beside its own."""
    h = Harness(tmp_path, namespace, redis_conn)
    (tmp_path / "probe.py").write_text(PROBE)
    folder = tmp_path / "workflows"
    for definition in POOL_WORKFLOWS:
        (folder / f"{definition['id']}.yaml").write_text(yaml.safe_dump(definition))
    catalog = load_folder(folder)
    assert not catalog.errors, catalog.errors
    h.engine = Engine(redis_conn, catalog, key_prefix=f"{namespace}:", queue_name=namespace)
    yield h
    h.stop_workers()


def pids(run: Run) -> list[int]:
    return [st.result["pid"] for st in run.steps.values()]


def completed(pool: Harness, workflow_id: str, **inputs: Any) -> Run:
    run = pool.wait_until_finished(pool.start(workflow_id, **inputs).run_id)
    assert run.status is RunStatus.COMPLETED, run.failure
    return run


def wait_gone(pid: int, within: float) -> None:
    """Until process ``pid`` no longer exists (killed and reaped by its worker)."""
    deadline = time.monotonic() + within
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, f"process {pid} still exists after {within} s"
        time.sleep(0.05)


def marked_pid(marker: Path) -> int:
    deadline = time.monotonic() + 10
    while not marker.exists() or not marker.read_text():
        assert time.monotonic() < deadline, "the step never wrote its pid"
        time.sleep(0.05)
    return int(marker.read_text())


def test_one_horse_runs_step_after_step(pool: Harness) -> None:
    name = pool.start_worker()

    first, second = completed(pool, "pids"), completed(pool, "pids")

    horses = set(pids(first) + pids(second))
    assert len(horses) == 1, horses  # RQ's forking worker: a new pid per step
    assert horses != {pool.workers[name].pid}  # a child, not the worker itself


def test_an_immediate_stop_kills_the_horse_and_the_next_steps_get_a_fresh_one(pool: Harness) -> None:
    marker = pool.tmp / "long.pid"
    pool.start_worker()
    before = pids(completed(pool, "pids"))[0]
    run = pool.start("long", marker=str(marker))
    pool.wait_until_running(run.run_id, "slow")
    victim = marked_pid(marker)
    assert victim == before  # the same horse took the long step

    stopped = pool.engine.stop(run.run_id, OPERATOR)

    assert stopped.steps["slow"].status is StepStatus.CANCELLED
    wait_gone(victim, within=10)
    after = pids(completed(pool, "pids"))
    assert victim not in after and len(set(after)) == 1


def test_a_horse_that_exits_mid_step_is_reported_lost_and_replaced(pool: Harness) -> None:
    # os._exit(0): a clean exit status, yet no report. RQ's forking worker took status 0 for
    # success and left the step running until the reaper gave up on it; the reaper is made
    # too slow here to be the one that notices.
    pool.env["SWITCHBOARD_REAPER_INTERVAL"] = "600"
    name = pool.start_worker()

    run = pool.wait_until_finished(pool.start("exits").run_id, timeout=15)

    assert run.status is RunStatus.COMPLETED, run.failure
    assert run.steps["bye"].attempt == 2
    lost = [e for e in pool.engine.events(run.run_id) if e.type == "step_retry_scheduled"]
    assert [e.data["error"]["code"] for e in lost] == ["WORKER_LOST"]
    assert pool.workers[name].poll() is None  # the worker itself lives on


def test_a_step_deaf_to_its_timeout_is_killed_with_its_horse(pool: Harness) -> None:
    # The step ignores the alarm that ends a step at its timeout: its worker kills the horse
    # a few seconds later and reports the timeout itself. (RQ's forking worker waited a
    # minute; the engine's backstop timer, 10 s past the timeout, would have said only
    # "did not finish within its 1s timeout" and had the step killed.)
    marker = pool.tmp / "deaf.pid"
    pool.start_worker()
    run = pool.start("deaf", marker=str(marker))
    horse = marked_pid(marker)

    run = pool.wait_until_finished(run.run_id)

    error = run.steps["stuck"].error
    assert run.status is RunStatus.FAILED
    assert error is not None and error.code is FailureCode.STEP_TIMED_OUT
    assert error.message.endswith("1s timeout and was stopped."), error.message
    wait_gone(horse, within=10)
    assert horse not in pids(completed(pool, "pids"))


def test_a_horse_is_retired_after_its_share_of_jobs(pool: Harness) -> None:
    pool.env["SWITCHBOARD_HORSE_MAX_JOBS"] = "2"
    pool.start_worker()

    horses = pids(completed(pool, "pids"))

    assert horses[0] == horses[1] != horses[2] == horses[3] != horses[4] == horses[5]


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads resident memory from /proc")
def test_a_horse_that_leaks_is_replaced_after_the_step(pool: Harness) -> None:
    limit_mb = 200
    pool.env["SWITCHBOARD_HORSE_MAX_MEMORY_MB"] = str(limit_mb)
    pool.start_worker()
    fresh = pids(completed(pool, "pids"))[0]

    steps = list(completed(pool, "leaks").steps.values())  # 64 MiB more resident after each

    assert steps[0].result["pid"] == fresh
    for step, after in itertools.pairwise(steps):
        retired = step.result["resident_mb"] > limit_mb
        assert (after.result["pid"] != step.result["pid"]) is retired, [s.result for s in steps]
    assert any(step.result["resident_mb"] > limit_mb for step in steps[:-1]), [s.result for s in steps]


def test_rq_records_each_step_job_as_its_own_worker_would(pool: Harness) -> None:
    """The worker writes RQ's records of a job's start and of the last job's success itself
    (one script call, while its horse works): RQ's own API reads them as RQ's worker leaves them."""
    name = pool.start_worker()
    run = completed(pool, "pids")
    queue = Queue(pool.namespace, connection=pool.engine.redis)
    worker = Worker.find_by_key(Worker.redis_worker_namespace_prefix + name, connection=pool.engine.redis)
    assert worker is not None
    deadline = time.monotonic() + 5  # the last step's success is recorded before the worker waits
    while worker.successful_job_count < len(run.steps) and time.monotonic() < deadline:
        time.sleep(0.05)
        worker.refresh()
    assert worker.successful_job_count == len(run.steps)
    assert worker.total_working_time > 0
    finished = set(queue.finished_job_registry.get_job_ids())
    for step in run.steps.values():
        assert step.job_id is not None
        job = Job.fetch(step.job_id, connection=pool.engine.redis)
        assert job.get_status() is JobStatus.FINISHED
        assert job.worker_name == name
        assert job.started_at is not None and job.ended_at is not None and job.started_at <= job.ended_at
        result = job.latest_result()
        assert result is not None and result.type is Result.Type.SUCCESSFUL
        assert result.return_value == {"outcome": "succeeded"}
        assert step.job_id in finished
        assert not pool.engine.redis.exists(f"rq:executions:{step.job_id}")  # the execution was cleaned up
    assert queue.started_job_registry.get_job_ids() == []
    assert pool.engine.redis.lrange(queue.intermediate_queue_key, 0, -1) == []

    # And while a step runs: its start, as the worker recorded it.
    marker = pool.tmp / "long.pid"
    run = pool.start("long", marker=str(marker))
    pool.wait_until_running(run.run_id, "slow")
    marked_pid(marker)
    job_id = pool.engine.get_run(run.run_id).steps["slow"].job_id
    assert job_id is not None
    job = Job.fetch(job_id, connection=pool.engine.redis)
    assert job.get_status() is JobStatus.STARTED and job.worker_name == name
    assert queue.started_job_registry.get_job_ids() == [job_id]
    [execution] = job.get_executions()
    assert execution.worker_name == name
    worker.refresh()
    assert worker.get_state() == "busy"
    assert worker.get_current_job_id() in (None, job_id)  # RQ 3 keeps executions, not a current job
    assert pool.engine.redis.ttl(job.key) == -1  # persisted while it runs
    assert pool.engine.redis.lrange(queue.intermediate_queue_key, 0, -1) == []
    pool.engine.stop(run.run_id, OPERATOR)


def test_a_step_job_that_raises_is_failed_by_rq_and_the_horse_goes_on(pool: Harness) -> None:
    """What a step job raises (here: called with arguments it does not take) is the job's
    failure, recorded by RQ's own failure handling as for any job; the horse goes on."""
    pool.start_worker()
    before = pids(completed(pool, "pids"))[0]
    queue = Queue(pool.namespace, connection=pool.engine.redis)
    job = queue.enqueue(STEP_JOB, "no-such-run", "s0", job_id=f"{pool.namespace}-malformed")

    deadline = time.monotonic() + 10
    while job.get_status(refresh=True) is not JobStatus.FAILED:
        assert time.monotonic() < deadline, f"the job is {job.get_status()}"
        time.sleep(0.05)
    assert job.id in queue.failed_job_registry.get_job_ids()
    failure = job.latest_result()
    assert failure is not None and failure.type is Result.Type.FAILED
    assert "TypeError" in (failure.exc_string or "")
    assert pids(completed(pool, "pids")) == [before] * 6  # the same horse, still serving


def test_a_job_whose_data_cannot_be_read_is_failed_and_the_worker_goes_on(pool: Harness) -> None:
    queue = Queue(pool.namespace, connection=pool.engine.redis)
    job = queue.enqueue(STEP_JOB, "no-such-run", "s0", 1, 1, job_id=f"{pool.namespace}-garbled")
    pool.engine.redis.hset(job.key, "data", b"not a pickle")
    pool.start_worker()

    deadline = time.monotonic() + 10
    while job.get_status(refresh=True) is not JobStatus.FAILED:
        assert time.monotonic() < deadline, f"the job is {job.get_status()}"
        time.sleep(0.05)
    assert job.id in queue.failed_job_registry.get_job_ids()
    completed(pool, "pids")  # the worker goes on


def test_a_queued_id_whose_hash_is_not_a_job_is_passed_over(pool: Harness) -> None:
    queue = Queue(pool.namespace, connection=pool.engine.redis)
    bogus = f"{pool.namespace}-bogus"
    pool.engine.redis.hset(Job.key_for(bogus), "status", "queued")  # no data: not a job
    pool.engine.redis.rpush(queue.key, bogus)
    pool.start_worker()
    completed(pool, "pids")  # taken after the bogus id, by a worker still running
    assert pool.engine.redis.lrange(queue.key, 0, -1) == []


def test_a_step_s_report_starts_the_next_step_on_the_same_horse_up_to_a_bound(pool: Harness) -> None:
    """Eager dispatch: the run's next step runs at once on the horse that ended the one
    before, ahead of a job queued earlier, but for no more than CLAIMS_IN_A_ROW steps in a row."""
    long_run = pool.start("chain")  # its first step, then the other run's, wait on the queue
    other = pool.start("one")
    pool.start_worker()

    long_run = pool.wait_until_finished(long_run.run_id)
    other = pool.wait_until_finished(other.run_id)

    assert long_run.status is RunStatus.COMPLETED and other.status is RunStatus.COMPLETED
    assert len(set(pids(long_run) + pids(other))) == 1
    cut = long_run.steps[f"c{CLAIMS_IN_A_ROW}"]  # the first step, then as many claimed
    after_cut = long_run.steps[f"c{CLAIMS_IN_A_ROW + 1}"]
    only = other.steps["only"]
    assert cut.finished_at is not None and only.started_at is not None and after_cut.started_at is not None
    assert cut.finished_at <= only.started_at <= after_cut.started_at, (cut, only, after_cut)


def test_an_immediate_stop_kills_a_step_its_horse_claimed(pool: Harness) -> None:
    """A step started by the report of the step before (never queued) is stopped as any."""
    marker = pool.tmp / "then_long.pid"
    pool.start_worker()
    run = pool.start("then_long", marker=str(marker))
    pool.wait_until_running(run.run_id, "slow")
    victim = marked_pid(marker)
    assert victim == pool.engine.get_run(run.run_id).steps["first"].result["pid"]  # claimed, same horse

    stopped = pool.engine.stop(run.run_id, OPERATOR)

    assert stopped.steps["slow"].status is StepStatus.CANCELLED
    wait_gone(victim, within=1)  # the promise: killed within a second
    after = pids(completed(pool, "pids"))
    assert victim not in after


def test_a_step_claimed_for_a_worker_that_never_heard_of_it_is_lost_and_retried(pool: Harness) -> None:
    """A report's claim landed, but its worker never learnt of it (the horse died right
    after, or the reply was lost): the step runs nowhere, its job sits unstarted in no
    queue. The reaper finds it lost after the hand-off grace, and the retry runs it."""
    pool.env["SWITCHBOARD_REAPER_INTERVAL"] = "0.3"
    pool.env["SWITCHBOARD_HAND_OFF_GRACE"] = "0.5"
    run = pool.start("claimable")
    name = f"{pool.namespace}-w1"  # the worker the claim names, started after it
    a0 = run.steps["a0"]
    assert pool.engine.step_started(run.run_id, "a0", a0.attempt, a0.dispatch, name).proceed
    claimed = pool.engine.step_finished_then_next(run.run_id, "a0", a0.attempt, name, result={"pid": 0})
    assert claimed is not None and claimed.started.step.step_id == "a1"
    pool.start_worker()

    run = pool.wait_until_finished(run.run_id, timeout=15)

    assert run.status is RunStatus.COMPLETED, run.failure
    assert run.steps["a1"].attempt == 2
    retried = [e for e in pool.engine.events(run.run_id) if e.type == "step_retry_scheduled"]
    assert [e.data["error"]["code"] for e in retried] == ["WORKER_LOST"]


def test_the_start_of_a_job_that_has_ended_already_is_not_recorded(redis_conn: redis.Redis, namespace: str) -> None:
    """A horse that took a job itself may fail it before its worker records the job's start:
    the record must not bring the job back to started."""
    queue = Queue(namespace, connection=redis_conn)
    job = queue.enqueue(STEP_JOB, "run", "s0", 1, 1, job_id=f"{namespace}-ended")
    job.set_status(JobStatus.FAILED)
    worker = Worker([queue], connection=redis_conn, name=f"{namespace}-records")
    execution = Execution("e1", job.id, redis_conn, worker_name=worker.name)
    rq_records.mark_started(job, worker.name)

    rq_records.record(redis_conn.register_script(rq_records.RECORD), worker, job, execution, 60, None)

    assert Job.fetch(job.id, connection=redis_conn).get_status() is JobStatus.FAILED
    assert queue.started_job_registry.get_job_ids() == []
    redis_conn.delete(job.key)
