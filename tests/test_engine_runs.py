"""The run state machine through the engine's command API, on a real Redis."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from bot.home import home_view
from engine.errors import AlreadyDecided, AmbiguousRunId, CommandRefused, InvalidInput, NotAllowed, NotFound
from engine.model import FailureCode, RunStatus, SkipReason, StepError, StepStatus
from tests.engine_helpers import (
    ALICE,
    BOB,
    CAROL,
    Clock,
    action,
    approval,
    engine_for,
    finish_step,
    start_step,
    statuses,
)

PARALLEL = {
    "id": "par",
    "name": "Parallel",
    "steps": [
        action("a"),
        action("b"),
        action("c"),
        action("join", needs=["a", "b", "c"]),
    ],
}

GATED = {
    "id": "gated",
    "name": "Gated",
    "inputs": {"service": {"type": "string", "required": True}},
    "steps": [
        approval("approve", fields={"service": "{{ inputs.service }}", "note": "x"}, editable=["note"]),
        action("deploy", needs=["approve"], args={"note": "{{ steps.approve.result.note }}"}),
        {
            "id": "on-reject",
            "type": "notify",
            "needs": ["approve"],
            "if": "{{ not steps.approve.result.approved }}",
            "notify": {"text": "rejected {{ inputs.service }}"},
        },
    ],
}


def queued_job_ids(engine: Any) -> list[str]:
    return list(engine.queue.get_job_ids())


def test_parallel_branches_are_enqueued_together_and_join_waits(
    redis_conn: redis.Redis, namespace: str
) -> None:
    engine = engine_for(redis_conn, namespace, PARALLEL)
    run = engine.start("par", {}, ALICE)
    assert run.status is RunStatus.RUNNING
    assert statuses(run) == {"a": "queued", "b": "queued", "c": "queued", "join": "pending"}
    assert sorted(queued_job_ids(engine)) == sorted(str(run.steps[s].job_id) for s in "abc")
    for step_id in "abc":
        run = finish_step(engine, run, step_id, {"from": step_id})
    assert run.steps["join"].status is StepStatus.QUEUED
    run = finish_step(engine, run, "join")
    assert run.status is RunStatus.COMPLETED
    types = [e.type for e in engine.events(run.run_id)]
    assert types[0] == "run_queued" and types[-1] == "run_completed"


def test_a_step_after_one_that_finishes_at_once_opens_once(redis_conn: redis.Redis, namespace: str) -> None:
    """A notify step finishes in the transition that starts it, and the run advances from it
    right there: the approval after it opens once, and no step is started twice."""
    chained = {
        "id": "chained",
        "name": "Chained",
        "steps": [
            {"id": "note", "type": "notify", "notify": {"text": "{{ steps.gate.status }}"}},
            approval("gate", needs=["note"]),
            {"id": "after", "type": "notify", "needs": ["note"], "notify": {"text": "x"}},
            action("work", needs=["after"]),
        ],
    }
    engine = engine_for(redis_conn, namespace, chained)
    run = engine.start("chained", {}, ALICE)
    assert statuses(run) == {"note": "succeeded", "gate": "waiting", "after": "succeeded", "work": "queued"}
    assert run.steps["gate"].attempt == 1 and run.steps["work"].attempt == 1
    kinds = [(e.type.value, e.step_id) for e in engine.events(run.run_id)]
    assert kinds.count(("task_opened", "gate")) == 1 and ("step_queued", "gate") not in kinds
    assert kinds.count(("step_queued", "work")) == 1
    assert queued_job_ids(engine) == [run.steps["work"].job_id]


def test_fail_fast_cancels_in_flight_siblings_and_blocks_the_rest(
    redis_conn: redis.Redis, namespace: str
) -> None:
    engine = engine_for(redis_conn, namespace, PARALLEL)
    run = engine.start("par", {}, ALICE)
    run = start_step(engine, run, "b")  # b is executing when a fails; c never started
    run = finish_step(engine, run, "a", error=StepError(code=FailureCode.STEP_FAILED, message="boom"))
    assert run.status is RunStatus.FAILED
    assert run.failure is not None and run.failure.code is FailureCode.STEP_FAILED
    assert run.failure.step_id == "a" and run.failure.message == "boom"
    assert run.steps["a"].status is StepStatus.FAILED
    assert run.steps["b"].status is StepStatus.CANCELLED
    assert run.steps["c"].status is StepStatus.SKIPPED and run.steps["c"].reason is SkipReason.BLOCKED
    assert run.steps["join"].status is StepStatus.SKIPPED and run.steps["join"].reason is SkipReason.BLOCKED
    assert run.steps["c"].job_id not in queued_job_ids(engine)  # never started: taken off the queue
    events = engine.events(run.run_id)
    skipped = [e for e in events if e.type == "step_completed" and e.data.get("skipped")]
    assert {e.step_id for e in skipped} == {"c", "join"}
    assert all(e.data["reason"] == "blocked" for e in skipped)
    assert [e.step_id for e in events if e.type == "step_cancelled"] == ["b"]
    # The cancelled step's late report is kept in the audit trail but changes nothing.
    later = engine.step_finished(run.run_id, "b", 1, result={"late": True})
    assert later.steps["b"].status is StepStatus.CANCELLED
    assert engine.events(run.run_id)[-1].type == "step_result_ignored"


def test_approval_with_edits_feeds_downstream_templates(redis_conn: redis.Redis, namespace: str) -> None:
    engine = engine_for(redis_conn, namespace, GATED)
    run = engine.start("gated", {"service": "api"}, ALICE)
    task = run.steps["approve"].task
    assert task is not None and task.fields == {"service": "api", "note": "x"}
    assert [t.task.task_id for t in engine.pending_tasks()] == ["approve"]
    run = engine.complete_task(run.run_id, "approve", BOB, True, {"note": "ship it"})
    assert run.steps["approve"].result == {"note": "ship it", "approved": True}
    assert run.steps["deploy"].args == {"note": "ship it"}
    assert run.steps["on-reject"].status is StepStatus.SKIPPED
    assert run.steps["on-reject"].reason is SkipReason.CONDITION
    assert engine.pending_tasks() == []


def test_rejection_ends_the_branch_but_an_if_step_decides_for_itself(
    redis_conn: redis.Redis, namespace: str
) -> None:
    engine = engine_for(redis_conn, namespace, GATED)
    run = engine.start("gated", {"service": "api"}, ALICE)
    run = engine.complete_task(run.run_id, "approve", BOB, False, comment="not today")
    assert run.steps["approve"].result == {"note": "x", "approved": False}
    assert run.steps["approve"].task is not None and run.steps["approve"].task.comment == "not today"
    assert run.steps["deploy"].status is StepStatus.SKIPPED
    assert run.steps["deploy"].reason is SkipReason.BLOCKED
    assert "rejected by bob" in (run.steps["deploy"].detail or "")
    assert run.steps["on-reject"].status is StepStatus.SUCCEEDED
    assert run.status is RunStatus.COMPLETED


def test_task_rules_are_enforced_by_the_engine(redis_conn: redis.Redis, namespace: str) -> None:
    restricted = {**GATED, "id": "restricted", "settings": {"approvers": ["slack:U0BOB", "api:*"]}}
    engine = engine_for(redis_conn, namespace, GATED, restricted)
    run = engine.start("restricted", {"service": "api"}, CAROL)
    with pytest.raises(NotAllowed, match="alice may not decide"):
        engine.complete_task(run.run_id, "approve", ALICE, True)
    with pytest.raises(NotAllowed, match="started run"):
        engine.complete_task(run.run_id, "approve", CAROL, True)  # api:* matches, but it is the starter
    with pytest.raises(InvalidInput, match="does not let you edit service: its editable fields are note") as edit:
        engine.complete_task(run.run_id, "approve", BOB, True, {"service": "db", "note": "ok"})
    assert list(edit.value.problems) == ["result.service"]
    with pytest.raises(NotFound, match="no task 'nope'"):
        engine.complete_task(run.run_id, "nope", BOB, True)
    engine.complete_task(run.run_id, "approve", BOB, True)
    with pytest.raises(AlreadyDecided) as decided:
        engine.complete_task(run.run_id, "approve", BOB, False)
    assert decided.value.decided_by == "bob"
    assert "already approved by bob" in str(decided.value)


def test_pause_holds_queued_steps_and_resume_dispatches_them_again(
    redis_conn: redis.Redis, namespace: str
) -> None:
    engine = engine_for(redis_conn, namespace, PARALLEL)
    run = engine.start("par", {}, ALICE)
    run = start_step(engine, run, "a")
    run = engine.pause(run.run_id, BOB)
    assert run.status is RunStatus.PAUSED
    # b's job reaches a worker while paused: it must not start.
    b = run.steps["b"]
    held = engine.step_started(run.run_id, "b", b.attempt, b.dispatch, "worker-2")
    assert not held.proceed and "paused" in held.message
    assert held.run.steps["b"].status is StepStatus.PENDING
    # a was already executing: it may finish, but nothing new is scheduled.
    run = engine.step_finished(run.run_id, "a", 1, result={})
    assert run.steps["a"].status is StepStatus.SUCCEEDED
    with pytest.raises(CommandRefused, match="You can resume it or stop it"):
        engine.pause(run.run_id, BOB)
    run = engine.resume(run.run_id, BOB)
    assert run.status is RunStatus.RUNNING
    assert run.steps["b"].status is StepStatus.QUEUED and run.steps["b"].dispatch == 2
    assert run.steps["b"].job_id in queued_job_ids(engine)
    # The old job of b is stale now.
    stale = engine.step_started(run.run_id, "b", 1, 1, "worker-3")
    assert not stale.proceed


def test_immediate_stop_cancels_in_flight_and_skips_the_rest(redis_conn: redis.Redis, namespace: str) -> None:
    engine = engine_for(redis_conn, namespace, PARALLEL)
    run = engine.start("par", {}, ALICE)
    run = start_step(engine, run, "a")
    run = engine.stop(run.run_id[:8], BOB)
    assert run.status is RunStatus.STOPPED
    assert run.failure is not None and run.failure.code is FailureCode.RUN_STOPPED
    assert "bob" in run.failure.message
    assert run.steps["a"].status is StepStatus.CANCELLED
    assert run.steps["a"].error is not None and run.steps["a"].error.code is FailureCode.RUN_STOPPED
    assert {run.steps[s].reason for s in ("b", "c", "join")} == {SkipReason.STOPPED}
    assert queued_job_ids(engine) == []
    with pytest.raises(CommandRefused, match="You can replay it"):
        engine.stop(run.run_id, BOB)


def test_graceful_stop_drains_then_stops(redis_conn: redis.Redis, namespace: str) -> None:
    engine = engine_for(redis_conn, namespace, PARALLEL)
    run = engine.start("par", {}, ALICE)
    run = start_step(engine, run, "a")
    run = engine.stop(run.run_id, BOB, mode="graceful")
    assert run.status is RunStatus.DRAINING
    assert run.steps["b"].status is StepStatus.PENDING  # queued but not started: taken back
    queued = queued_job_ids(engine)
    assert not any(job_id.startswith(f"sb-{run.run_id}-{s}-") for job_id in queued for s in "bc")
    assert [r.run_id for r in engine.command_center().stopping_gracefully] == [run.run_id]
    with pytest.raises(CommandRefused, match="already stopping gracefully"):
        engine.stop(run.run_id, BOB, mode="graceful")
    run = engine.step_finished(run.run_id, "a", 1, result={"done": True})
    assert run.status is RunStatus.STOPPED
    assert run.steps["a"].status is StepStatus.SUCCEEDED
    assert run.failure is not None and run.failure.code is FailureCode.RUN_STOPPED
    assert run.steps["join"].reason is SkipReason.STOPPED


def test_drain_timeout_escalates_to_immediate(redis_conn: redis.Redis, namespace: str) -> None:
    clock = Clock()
    slow = {**PARALLEL, "settings": {"drain_timeout": "30s"}}
    engine = engine_for(redis_conn, namespace, slow, clock=clock)
    run = engine.start("par", {}, ALICE)
    run = start_step(engine, run, "a")
    engine.stop(run.run_id, BOB, mode="graceful")
    clock.advance(29)
    assert engine.fire_due_timers() == 0
    clock.advance(2)
    assert engine.fire_due_timers() == 1
    run = engine.get_run(run.run_id)
    assert run.status is RunStatus.STOPPED
    assert run.failure is not None and run.failure.code is FailureCode.DRAIN_TIMEOUT
    assert run.steps["a"].status is StepStatus.CANCELLED


def test_task_expiry_rejects_or_fails(redis_conn: redis.Redis, namespace: str) -> None:
    clock = Clock()
    rejecting = {
        "id": "rej",
        "name": "r",
        "steps": [approval("ok", expires_in="10m"), action("after", needs=["ok"])],
    }
    failing = {
        "id": "fail",
        "name": "f",
        "steps": [approval("ok", expires_in="10m", on_expire="fail"), action("after", needs=["ok"])],
    }
    engine = engine_for(redis_conn, namespace, rejecting, failing, clock=clock)
    rejected = engine.start("rej", {}, ALICE)
    failed = engine.start("fail", {}, ALICE)
    clock.advance(601)
    assert engine.fire_due_timers() == 2
    rejected = engine.get_run(rejected.run_id)
    assert rejected.status is RunStatus.COMPLETED
    assert rejected.steps["ok"].result == {"approved": False, "expired": True}
    assert rejected.steps["after"].reason is SkipReason.BLOCKED
    failed = engine.get_run(failed.run_id)
    assert failed.status is RunStatus.FAILED
    assert failed.failure is not None and failed.failure.code is FailureCode.APPROVAL_EXPIRED
    assert engine.pending_tasks() == []


def test_retry_waits_for_backoff_then_dispatches_a_new_attempt(
    redis_conn: redis.Redis, namespace: str
) -> None:
    clock = Clock()
    flaky = {"id": "flaky", "name": "f", "steps": [action("a", retry={"max_attempts": 3, "backoff": "5s"})]}
    engine = engine_for(redis_conn, namespace, flaky, clock=clock)
    run = engine.start("flaky", {}, ALICE)
    error = StepError(code=FailureCode.STEP_FAILED, message="flaky", retryable=True)
    run = finish_step(engine, run, "a", error=error)
    assert run.status is RunStatus.RUNNING
    assert run.steps["a"].status is StepStatus.PENDING and run.steps["a"].attempt == 2
    clock.advance(5)
    assert engine.fire_due_timers() == 1
    run = engine.get_run(run.run_id)
    assert run.steps["a"].status is StepStatus.QUEUED
    assert run.steps["a"].job_id in queued_job_ids(engine)
    run = finish_step(
        engine, run, "a", error=StepError(code=FailureCode.STEP_FAILED, message="no", retryable=False)
    )
    assert run.status is RunStatus.FAILED  # not retryable: no third attempt
    assert run.steps["a"].attempt == 2


def test_lost_worker_retries_only_idempotent_steps(redis_conn: redis.Redis, namespace: str) -> None:
    wf = {
        "id": "lost",
        "name": "l",
        "steps": [
            action("safe", retry={"max_attempts": 2, "idempotent": True, "backoff": 1}),
            action("unsafe", retry={"max_attempts": 2}),
        ],
    }
    engine = engine_for(redis_conn, namespace, wf)
    run = engine.start("lost", {}, ALICE)
    run = start_step(engine, run, "safe", worker="w-dead")
    run = engine.step_lost(run.run_id, "safe", 1, "w-dead")
    assert run.steps["safe"].status is StepStatus.PENDING and run.steps["safe"].attempt == 2
    run = start_step(engine, run, "unsafe", worker="w-dead")
    run = engine.step_lost(run.run_id, "unsafe", 1, "w-dead")
    assert run.status is RunStatus.FAILED
    assert run.failure is not None and run.failure.code is FailureCode.WORKER_LOST


def test_sleep_and_wait_event_steps(redis_conn: redis.Redis, namespace: str) -> None:
    clock = Clock()
    wf = {
        "id": "waits",
        "name": "w",
        "inputs": {"pr": {"type": "integer", "required": True}},
        "steps": [
            {"id": "nap", "type": "sleep", "duration": "1m"},
            {"id": "merged", "type": "wait_event", "event": {"name": "pr.merged", "key": "{{ inputs.pr }}"}},
        ],
    }
    engine = engine_for(redis_conn, namespace, wf, clock=clock)
    run = engine.start("waits", {"pr": "42"}, ALICE)
    assert run.inputs == {"pr": 42}  # typed inputs are coerced from text
    assert engine.deliver_event("pr.merged", "41", {}, CAROL) == []
    assert engine.deliver_event("pr.merged", "42", {"sha": "abc"}, CAROL) == [run.run_id]
    assert engine.deliver_event("pr.merged", "42", {"sha": "abc"}, CAROL) == []  # delivered once
    clock.advance(60)
    engine.fire_due_timers()
    run = engine.get_run(run.run_id)
    assert run.status is RunStatus.COMPLETED
    assert run.steps["merged"].result == {"sha": "abc"}


def test_template_errors_fail_the_step_with_a_clear_message(redis_conn: redis.Redis, namespace: str) -> None:
    wf = {"id": "typo", "name": "t", "steps": [action("a", args={"x": "{{ inputs.nope }}"})]}
    engine = engine_for(redis_conn, namespace, wf)
    run = engine.start("typo", {}, ALICE)
    assert run.status is RunStatus.FAILED
    assert run.failure is not None and run.failure.code is FailureCode.TEMPLATE_ERROR
    assert "a.args.x" in run.failure.message and "nope" in run.failure.message


def test_inputs_are_validated_with_every_problem_named(redis_conn: redis.Redis, namespace: str) -> None:
    engine = engine_for(redis_conn, namespace, GATED)
    with pytest.raises(InvalidInput) as bad:
        engine.start("gated", {"servce": "api"}, ALICE)
    assert set(bad.value.problems) == {"servce", "service"}
    assert "unknown input" in bad.value.problems["servce"]
    with pytest.raises(NotFound, match="Known workflows: gated"):
        engine.start("gatd", {}, ALICE)


def test_replay_starts_a_linked_run_with_overridden_inputs(redis_conn: redis.Redis, namespace: str) -> None:
    engine = engine_for(redis_conn, namespace, GATED)
    run = engine.start("gated", {"service": "api"}, ALICE)
    with pytest.raises(CommandRefused, match="only completed, failed or stopped"):
        engine.replay(run.run_id, BOB)
    engine.stop(run.run_id, BOB)
    replay = engine.replay(run.run_id, BOB, {"service": "db"})
    assert replay.replay_of == run.run_id and replay.inputs == {"service": "db"}
    assert replay.started_by == BOB
    assert engine.get_run(run.run_id).replays == [replay.run_id]
    assert engine.events(run.run_id)[-1].data == {"replay_run_id": replay.run_id}


def test_concurrency_limit_queues_runs_until_a_slot_frees(redis_conn: redis.Redis, namespace: str) -> None:
    wf = {**GATED, "id": "one-at-a-time", "settings": {"concurrency": 1}}
    engine = engine_for(redis_conn, namespace, wf)
    first = engine.start("one-at-a-time", {"service": "a"}, ALICE)
    second = engine.start("one-at-a-time", {"service": "b"}, ALICE)
    assert first.status is RunStatus.RUNNING and second.status is RunStatus.QUEUED
    assert engine.command_center().counts["running"] == 2  # queued runs count as running now
    engine.stop(first.run_id, BOB)
    assert engine.get_run(second.run_id).status is RunStatus.RUNNING


def test_run_ids_resolve_by_unique_prefix(redis_conn: redis.Redis, namespace: str) -> None:
    engine = engine_for(redis_conn, namespace, GATED)
    run = engine.start("gated", {"service": "api"}, ALICE)
    assert engine.get_run(run.run_id[:8]).run_id == run.run_id
    assert engine.get_run(run.run_id.upper()).run_id == run.run_id
    with pytest.raises(NotFound, match="at least 8 characters"):
        engine.get_run(run.run_id[:5])
    with pytest.raises(NotFound):
        engine.get_run("0000000000000000")
    engine.store.redis.zadd(engine.keys.run_ids, {run.run_id[:8] + "ffffffff": 0})  # a look-alike id
    with pytest.raises(AmbiguousRunId, match="type more characters"):
        engine.get_run(run.run_id[:8])


def test_list_runs_filters_and_pages(redis_conn: redis.Redis, namespace: str) -> None:
    clock = Clock()
    engine = engine_for(redis_conn, namespace, GATED, PARALLEL, clock=clock)
    started = []
    for i in range(7):
        clock.advance(1)
        started.append(engine.start("gated" if i % 2 else "par", {"service": "s"} if i % 2 else {}, ALICE))
    engine.stop(started[0].run_id, BOB)
    newest_first = [r.run_id for r in reversed(started)]
    page = engine.list_runs(limit=3)
    assert [r.run_id for r in page.runs] == newest_first[:3]
    seen = [r.run_id for r in page.runs]
    while page.next_offset is not None:
        page = engine.list_runs(limit=3, offset=page.next_offset)
        seen.extend(r.run_id for r in page.runs)
    assert seen == newest_first
    gated = engine.list_runs(workflow_id="gated")
    assert {r.run_id for r in gated.runs} == {r.run_id for r in started if r.workflow_id == "gated"}
    stopped = engine.list_runs(status=RunStatus.STOPPED)
    assert [r.run_id for r in stopped.runs] == [started[0].run_id]
    both = engine.list_runs(status=RunStatus.RUNNING, workflow_id="par")
    assert {r.run_id for r in both.runs} == {r.run_id for r in started[2::2]}
    assert [r.run_id for r in engine.list_runs(prefix=started[3].run_id[:10]).runs] == [started[3].run_id]
    recent = engine.list_runs(since=started[5].created_at)
    assert [r.run_id for r in recent.runs] == newest_first[:2]


def test_command_center_sections_and_counts(redis_conn: redis.Redis, namespace: str) -> None:
    clock = Clock()
    engine = engine_for(redis_conn, namespace, GATED, PARALLEL, clock=clock)
    waiting = engine.start("gated", {"service": "a"}, ALICE)
    paused = engine.pause(engine.start("par", {}, ALICE).run_id, BOB)
    draining = engine.start("par", {}, ALICE)
    start_step(engine, draining, "a")
    engine.stop(draining.run_id, BOB, mode="graceful")
    failed = engine.start("par", {}, ALICE)
    finish_step(engine, failed, "a", error=StepError(code=FailureCode.STEP_FAILED, message="x"))
    old_stop = engine.start("par", {}, ALICE)
    engine.stop(old_stop.run_id, BOB)
    clock.advance(25 * 3600)  # the old stop leaves "failed recently"; the others stay
    failed_again = engine.start("par", {}, ALICE)
    finish_step(engine, failed_again, "b", error=StepError(code=FailureCode.STEP_FAILED, message="y"))
    center = engine.command_center()
    assert center.counts == {
        "pending": 1, "questions": 0, "draining": 1, "running": 2, "failed": 1, "failed_runs": 1, "stopped_runs": 0
    }
    assert [(t.run.run_id, t.task.task_id) for t in center.awaiting_approval] == [(waiting.run_id, "approve")]
    # App Home shows the waiting tasks grouped by workflow, then by run.
    contexts = [b["elements"][0]["text"] for b in home_view(center)["blocks"] if b["type"] == "context"]
    assert [text for text in contexts if "· run `" in text] == [f"*Gated* · run `{waiting.run_id[:8]}`"]
    assert [r.run_id for r in center.stopping_gracefully] == [draining.run_id]
    assert {r.run_id for r in center.running_now} == {waiting.run_id, paused.run_id}
    assert [r.run_id for r in center.failed_recently] == [failed_again.run_id]
    assert failed.run_id not in {r.run_id for r in center.failed_recently}
