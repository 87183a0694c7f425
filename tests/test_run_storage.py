"""How a run is stored: its head and a hash of its steps, a transition writing only the steps it read.

A private redis-server (``own_redis``) lets MONITOR see every command the engine sends, and
nothing of other tests.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from engine.api import Engine
from engine.model import Run, RunStatus, StepStatus
from tests.engine_helpers import ALICE, engine_for, finish_step, start_step
from tests.redis_servers import RedisServer

STEPS = 30
CHAIN = {
    "id": "chain",
    "name": "Chain",
    "steps": [
        {"id": f"s{i}", "type": "action", "action": "worker.actions:echo", "needs": [f"s{i - 1}"] if i else []}
        for i in range(STEPS)
    ],
}


@contextmanager
def monitored(server: RedisServer, sent_only: bool = False) -> Iterator[list[list[str]]]:
    """Every command Redis executes meanwhile, split into words, as MONITOR reports them;
    ``sent_only``: only those clients sent, not those their scripts ran."""
    commands: list[list[str]] = []
    ready, done = threading.Event(), threading.Event()

    def listen() -> None:
        with server.client().monitor() as monitor:
            ready.set()
            for line in monitor.listen():
                if line["command"] == "ECHO monitor-end":
                    done.set()
                    return
                if not (sent_only and line["client_type"] == "lua"):
                    commands.append(line["command"].split(" "))

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert ready.wait(5)
    try:
        yield commands
    finally:
        server.client().echo("monitor-end")
        assert done.wait(5), "MONITOR never saw the end marker"
        thread.join(5)


def steps_read(commands: list[list[str]], steps_key: str) -> list[str]:
    """The step ids read from a run's steps hash (HMGET, also inside a script); "*" for HGETALL."""
    read: list[str] = []
    for words in commands:
        names = [w.strip('"') for w in words]
        if names[0].upper() == "HGETALL" and names[1] == steps_key:
            read.append("*")
        elif names[0].upper() == "HMGET" and names[1] == steps_key:
            read += names[2:]
    return read


def steps_written(commands: list[list[str]], steps_key: str) -> list[str]:
    """The step ids each HSET on a run's steps hash wrote, in order."""
    written: list[str] = []
    for words in commands:
        if words[0].upper() == "HSET" and words[1].strip('"') == steps_key:
            written += [field.strip('"') for field in words[2::2]]
    return written


def test_a_step_of_a_long_run_writes_the_steps_it_concerns(own_redis: RedisServer) -> None:
    engine = engine_for(own_redis.client(), "store", CHAIN)
    run = engine.start("chain", {}, ALICE)
    steps_key = engine.keys.run_steps(run.run_id)
    fields: Any = own_redis.client().hkeys(steps_key)
    assert sorted(k.decode() for k in fields) == sorted(f"s{i}" for i in range(STEPS))
    run = finish_step(engine, run, "s0")
    with monitored(own_redis) as commands:
        run = finish_step(engine, run, "s1")
    written = steps_written(commands, steps_key)
    # Starting s1 writes s1; its report writes s1, reads its need s0... and opens s2.
    assert set(written) <= {"s0", "s1", "s2"}, written
    assert "s1" in written and "s2" in written
    assert len(written) <= 5, written  # not the 30 steps of the run
    assert run.steps.status("s2") is StepStatus.QUEUED
    read = steps_read(commands, steps_key)
    assert "*" not in read and set(read) <= {"s0", "s1", "s2"}, read  # the run's 30 steps are not all read


def test_what_a_transition_computed_is_what_is_stored(redis_conn: redis.Redis, namespace: str) -> None:
    engine = engine_for(redis_conn, namespace, CHAIN)
    run = engine.start("chain", {}, ALICE)
    for i in range(STEPS):
        run = finish_step(engine, run, f"s{i}", result={"i": i})
        stored = engine.get_run(run.run_id)
        assert stored.model_dump() == run.model_dump()
    assert run.status is RunStatus.COMPLETED
    assert [engine.get_run(run.run_id).steps[f"s{i}"].result for i in range(STEPS)] == [
        {"i": i} for i in range(STEPS)
    ]


def test_a_run_stored_whole_by_an_earlier_version_goes_on_and_is_stored_split(
    redis_conn: redis.Redis, namespace: str
) -> None:
    engine = engine_for(redis_conn, namespace, CHAIN)
    run = finish_step(engine, engine.start("chain", {}, ALICE), "s0", result={"first": True})
    # As the earlier version stored it: one document holding every step, and no steps hash.
    whole = engine.get_run(run.run_id).model_dump_json()
    redis_conn.set(engine.keys.run(run.run_id), whole)
    redis_conn.delete(engine.keys.run_steps(run.run_id))
    old = engine.get_run(run.run_id)
    assert old.steps["s0"].result == {"first": True}
    assert old.steps.status("s1") is StepStatus.QUEUED

    run = finish_step(engine, old, "s1")
    head: Any = Run.model_validate_json(redis_conn.get(engine.keys.run(run.run_id)) or b"{}", context={"steps": {}})
    assert head.steps.statuses()["s2"] is StepStatus.QUEUED  # the head holds statuses only now
    assert redis_conn.hlen(engine.keys.run_steps(run.run_id)) == STEPS
    for i in range(2, STEPS):
        run = finish_step(engine, run, f"s{i}")
    finished = engine.get_run(run.run_id)
    assert finished.status is RunStatus.COMPLETED
    assert finished.steps["s0"].result == {"first": True}


def test_a_purged_run_leaves_no_steps_hash(redis_conn: redis.Redis, namespace: str) -> None:
    engine: Engine = engine_for(redis_conn, namespace, CHAIN)
    run = engine.start("chain", {}, ALICE)
    for i in range(STEPS):
        run = finish_step(engine, run, f"s{i}")
    assert redis_conn.exists(engine.keys.run_steps(run.run_id))
    assert engine.store.purge(run.run_id)
    assert not redis_conn.exists(engine.keys.run(run.run_id), engine.keys.run_steps(run.run_id))


def test_a_worker_s_start_and_report_of_a_step_cost_a_round_trip_each(own_redis: RedisServer) -> None:
    engine = engine_for(own_redis.client(), "store", CHAIN)
    run = finish_step(engine, engine.start("chain", {}, ALICE), "s0")
    with monitored(own_redis, sent_only=True) as commands:
        run = finish_step(engine, run, "s1")
    sent = [words[0].upper() for words in commands if words[0].upper() != "HELLO"]  # the end marker's client
    # The process committed the run last: it is not read back, the commit checks its head.
    assert sent == ["EVALSHA", "EVALSHA"], sent
    assert run.steps.status("s2") is StepStatus.QUEUED
    assert engine.get_run(run.run_id).model_dump() == run.model_dump()


def test_a_change_by_another_process_in_between_is_seen(redis_conn: redis.Redis, namespace: str) -> None:
    worker_side, operator_side = engine_for(redis_conn, namespace, CHAIN), engine_for(redis_conn, namespace, CHAIN)
    run = start_step(worker_side, worker_side.start("chain", {}, ALICE), "s0")
    operator_side.stop(run.run_id, ALICE)
    run = worker_side.step_finished(run.run_id, "s0", run.steps["s0"].attempt, result={"late": True})
    assert run.status is RunStatus.STOPPED
    assert run.steps.status("s1") is StepStatus.SKIPPED  # not enqueued on a stale picture
    assert engine_for(redis_conn, namespace, CHAIN).get_run(run.run_id).model_dump() == run.model_dump()


def test_a_refusal_is_judged_on_the_run_as_stored(redis_conn: redis.Redis, namespace: str) -> None:
    worker_side, operator_side = engine_for(redis_conn, namespace, CHAIN), engine_for(redis_conn, namespace, CHAIN)
    run = worker_side.stop(worker_side.start("chain", {}, ALICE).run_id, ALICE)  # committed here: stopped
    recovered = operator_side.recover(run.run_id, ALICE)
    s0 = recovered.steps["s0"]
    assert recovered.status is RunStatus.RUNNING and s0.status is StepStatus.QUEUED
    # Stopped, as this process last wrote it, the run would refuse the start: it is running now.
    started = worker_side.step_started(run.run_id, "s0", s0.attempt, s0.dispatch, "worker-1")
    assert started.proceed, started.message
    assert started.run.steps.status("s0") is StepStatus.RUNNING


def test_a_worker_new_to_a_run_reads_it_once_for_a_step(own_redis: RedisServer) -> None:
    starter = engine_for(own_redis.client(), "store", CHAIN)
    worker_side = engine_for(own_redis.client(), "store", CHAIN)  # as a work horse
    finish_step(worker_side, starter.start("chain", {}, ALICE), "s0")  # scripts loaded, and so on
    run = starter.start("chain", {}, ALICE)  # new to the worker's side
    with monitored(own_redis, sent_only=True) as commands:
        finish_step(worker_side, run, "s0")
    sent = [words[0].upper() for words in commands if words[0].upper() != "HELLO"]
    # Read once with the step to start; its commit reads what the report needs (s1 may start).
    assert sent == ["EVAL", "EVALSHA", "EVALSHA"], sent


def test_a_report_that_claims_the_next_step_starts_it_in_the_same_round_trip(own_redis: RedisServer) -> None:
    """Eager dispatch: a worker's report starts the step it makes ready for that worker, in
    its own commit; the step's job is RQ's as any step's, but left in no queue."""
    client = own_redis.client()
    engine = engine_for(client, "store", CHAIN)
    run = start_step(engine, engine.start("chain", {}, ALICE), "s0", worker="worker-1")
    claimed = engine.step_finished_then_next(run.run_id, "s0", 1, "worker-1", result={"n": 0})
    assert claimed is not None
    for n in (1, 2):
        step = claimed.started.step
        assert step.step_id == f"s{n}" and step.status is StepStatus.RUNNING and step.worker == "worker-1"
        assert claimed.job_id == step.job_id and claimed.job_timeout > 0
        assert claimed.job_id.encode() not in client.lrange(engine.queue.key, 0, -1)  # taken back off it
        assert client.exists(f"rq:job:{claimed.job_id}")
        assert client.hget(f"rq:job:{claimed.job_id}", "worker_name") == b"worker-1"  # for a stop command
        with monitored(own_redis, sent_only=True) as commands:
            claimed = engine.step_finished_then_next(run.run_id, f"s{n}", 1, "worker-1", result={"n": n})
        sent = [words[0].upper() for words in commands if words[0].upper() != "HELLO"]
        assert sent == ["EVALSHA"], sent  # the report and the next step's start: one commit
        assert claimed is not None
    stored = engine_for(client, "store", CHAIN).get_run(run.run_id)
    assert [stored.steps.status(f"s{i}") for i in range(4)] == [StepStatus.SUCCEEDED] * 3 + [StepStatus.RUNNING]
    assert stored.steps["s2"].result == {"n": 2}


def test_a_report_on_a_paused_run_claims_nothing(redis_conn: redis.Redis, namespace: str) -> None:
    engine = engine_for(redis_conn, namespace, CHAIN)
    run = start_step(engine, engine.start("chain", {}, ALICE), "s0")
    engine.pause(run.run_id, ALICE)
    assert engine.step_finished_then_next(run.run_id, "s0", 1, "worker-1") is None
    run = engine.get_run(run.run_id)
    assert run.steps.status("s0") is StepStatus.SUCCEEDED
    assert run.steps.status("s1") is not StepStatus.RUNNING  # it starts on resume, by any worker
