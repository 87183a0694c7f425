"""Property test: random command sequences never reach an invalid state or lose an event."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import core
from engine.api import Engine
from engine.errors import CommandRefused, SwitchboardError
from engine.model import (
    ACTIVE_RUN_STATUSES,
    EventType,
    FailureCode,
    Run,
    RunStatus,
    StepError,
    StepStatus,
)
from engine.store import event_from_entry, task_member
from engine.workflow import Workflow
from tests.conftest import REDIS_URL, forget
from tests.engine_helpers import ALICE, BOB, Clock, approval, engine_for
from tests.test_core_properties import RUN_EVENT_FOR, RUN_STATUS_EVENTS, STEP_EVENT_FOR, STEP_STATUS_EVENTS

WORKFLOW = {
    "id": "prop",
    "name": "Property",
    "settings": {"drain_timeout": "30s"},
    "steps": [
        {
            "id": "a",
            "type": "action",
            "action": "worker.actions:echo",
            "retry": {"max_attempts": 2, "backoff": 5},
        },
        {
            "id": "b",
            "type": "action",
            "action": "worker.actions:echo",
            "retry": {"max_attempts": 2, "idempotent": True},
            "timeout": 20,
        },
        approval("gate", needs=["a"], expires_in="60s"),
        {"id": "nap", "type": "sleep", "needs": ["b"], "duration": "10s"},
        {"id": "join", "type": "action", "action": "worker.actions:echo", "needs": ["gate", "nap"]},
    ],
}
WORKER_STEPS = ("a", "b", "join")

commands = st.one_of(
    st.tuples(st.just("start"), st.sampled_from(WORKER_STEPS)),
    st.tuples(st.just("succeed"), st.sampled_from(WORKER_STEPS)),
    st.tuples(st.just("fail"), st.sampled_from(WORKER_STEPS), st.booleans()),
    st.tuples(st.just("lost"), st.sampled_from(WORKER_STEPS)),
    st.tuples(st.sampled_from(["pause", "resume", "stop", "drain"])),
    st.tuples(st.just("decide"), st.booleans()),
    st.tuples(st.just("tick"), st.integers(min_value=1, max_value=40)),
    st.tuples(st.just("replay")),
    st.tuples(st.just("recover"), st.sampled_from([None, None, "a", "gate"]), st.booleans()),
)

def perform(engine: Engine, clock: Clock, run_id: str, command: tuple[Any, ...]) -> None:
    run = engine.get_run(run_id)
    name = command[0]
    if name in ("start", "succeed", "fail", "lost"):
        step = run.steps[command[1]]
        if name == "start":
            engine.step_started(run_id, step.step_id, step.attempt, step.dispatch, "w1")
        elif name == "succeed":
            engine.step_finished(run_id, step.step_id, step.attempt, result={"ok": True})
        elif name == "fail":
            error = StepError(code=FailureCode.STEP_FAILED, message="x", retryable=command[2])
            engine.step_finished(run_id, step.step_id, step.attempt, error=error)
        else:
            engine.step_lost(run_id, step.step_id, step.attempt, "w1")
    elif name in ("pause", "resume"):
        getattr(engine, name)(run_id, ALICE)
    elif name in ("stop", "drain"):
        engine.stop(run_id, ALICE, mode="immediate" if name == "stop" else "graceful")
    elif name == "decide":
        engine.complete_task(run_id, "gate", BOB, approved=command[1])
    elif name == "tick":
        clock.advance(command[1])
        engine.fire_due_timers()
    elif name == "replay":
        engine.replay(run_id, BOB)  # refused unless finished; a new run, the original unchanged
    elif name == "recover":
        engine.recover(run_id, BOB, from_step=command[1], force=command[2])  # refused unless failed or stopped


def check_invariants(engine: Engine, run: Run) -> None:
    steps = run.steps.values()
    unfinished = [s for s in steps if not s.status.finished]
    if run.status.terminal:
        assert not unfinished, f"{run.status} run with unfinished steps {[s.step_id for s in unfinished]}"
        assert run.finished_at is not None
    if run.status is RunStatus.RUNNING:
        assert unfinished, "a running run whose steps are all finished should have completed"
    if run.status is RunStatus.DRAINING:
        assert any(s.status is StepStatus.RUNNING for s in steps), "draining with nothing in flight"
    if any(s.status is StepStatus.FAILED for s in steps):
        assert run.status is RunStatus.FAILED
    if run.status is RunStatus.FAILED:
        assert run.failure is not None
    for step in steps:
        if step.status is StepStatus.SKIPPED:
            assert step.reason is not None
        if step.status is StepStatus.QUEUED:
            assert step.job_id in engine.queue.get_job_ids()
    events = engine.events(run.run_id)
    assert events[0].type is EventType.RUN_QUEUED
    last_run_event = [e.type for e in events if e.type in RUN_STATUS_EVENTS][-1]
    assert last_run_event in RUN_EVENT_FOR[run.status], (run.status, last_run_event)
    for step in steps:
        about = [
            e.type for e in events if e.step_id == step.step_id and e.type.startswith(("step_", "task_"))
        ]
        last = next((t for t in reversed(about) if t in STEP_STATUS_EVENTS), None)
        assert last in STEP_EVENT_FOR[step.status], (step.step_id, step.status, about)
    # Indexes agree with the document.
    keys = engine.keys
    for status in RunStatus:
        member = engine.redis.zscore(keys.by_status(status), run.run_id) is not None
        assert member == (status is run.status), status
    active = engine.redis.zscore(keys.admitted(run.workflow_id), run.run_id) is not None
    assert active == (run.status in ACTIVE_RUN_STATUSES and run.status is not RunStatus.QUEUED)
    open_tasks = {s.step_id for s in run.open_tasks()}
    indexed = engine.redis.zscore(keys.pending_tasks, task_member(run.run_id, "gate")) is not None
    assert indexed == ("gate" in open_tasks)
    # The global feed has exactly the run's events, in the same order (replays add their own).
    entries: Any = engine.redis.xrange(keys.events)
    feed = [e for e in (event_from_entry(i, f) for i, f in entries) if e.run_id == run.run_id]
    assert [(e.type, e.step_id, e.data) for e in feed] == [(e.type, e.step_id, e.data) for e in events]


@settings(max_examples=60)
@given(st.lists(commands, min_size=1, max_size=25))
def test_random_command_sequences_keep_runs_valid(sequence: list[tuple[Any, ...]]) -> None:
    connection = redis.Redis.from_url(REDIS_URL)
    namespace = f"sbprop-{uuid.uuid4().hex[:10]}"
    clock = Clock()
    engine = engine_for(connection, namespace, WORKFLOW, clock=clock)
    try:
        run = engine.start("prop", {}, ALICE)
        check_invariants(engine, run)
        ending: tuple[Any, ...] | None = None  # the run's outcome, once it has finished
        for command in sequence:
            before = engine.get_run(run.run_id)
            events_before = len(engine.events(run.run_id))
            try:
                perform(engine, clock, run.run_id, command)
            except SwitchboardError:
                after = engine.get_run(run.run_id)
                assert after.version == before.version, "a refused command changed the run"
                assert len(engine.events(run.run_id)) == events_before
            after = engine.get_run(run.run_id)
            if after.version != before.version:
                assert len(engine.events(run.run_id)) > events_before, "a change without an event"
            check_invariants(engine, after)
            # Once finished, a run keeps its outcome, whatever comes next, but for an explicit
            # recovery: that records run_recovered and the run goes on (or ends again at once).
            recovered = [
                e for e in engine.events(run.run_id)[events_before:] if e.type is EventType.RUN_RECOVERED
            ]
            if recovered:
                assert command[0] == "recover" and before.status in (RunStatus.FAILED, RunStatus.STOPPED)
                assert recovered[0].actor == BOB and after.run_id == before.run_id
            if ending is not None and not recovered:
                assert outcome_of(after) == ending, f"{command} changed a finished run"
            ending = outcome_of(after) if after.status.terminal else None
    finally:
        forget(connection, [namespace])
        connection.close()


def outcome_of(run: Run) -> tuple[Any, ...]:
    steps = {sid: (st.status, st.result, st.error) for sid, st in run.steps.items()}
    return run.status, run.failure, run.finished_at, steps


def test_a_finished_run_refuses_what_would_change_its_outcome() -> None:
    """The engine's guard, on a run document that says completed with a step still running
    (as a bug or a hand-edited document could leave it): the late failure report would
    have turned it into a failed run."""
    clock = Clock()
    workflow = Workflow.model_validate(WORKFLOW)
    run = core.new_run(workflow, "f" * 16, {}, ALICE, clock.now).run
    run.status, run.finished_at = RunStatus.COMPLETED, clock.now
    run.steps["a"].status, run.steps["a"].attempt = StepStatus.RUNNING, 1
    error = StepError(code=FailureCode.STEP_FAILED, message="late")
    for command in (
        core.StepFinished("a", 1, error=error),
        core.StepLost("a", 1, "w1"),
        core.TimerFired("run_timeout", "", 0),
        core.Admit(BOB),
    ):
        with pytest.raises(CommandRefused, match=r"a finished run keeps its outcome.*You can replay it"):
            core.apply(workflow, run, command, clock.advance(1))
    with pytest.raises(CommandRefused, match="it is completed"):
        core.apply(workflow, run, core.Resume(BOB), clock.now)
    # A late report of a step that did finish is still recorded, and changes nothing else.
    run.steps["a"].status = StepStatus.SUCCEEDED
    late = core.apply(workflow, run, core.StepFinished("a", 1, error=error), clock.now)
    assert [e.type for e in late.events] == [EventType.STEP_RESULT_IGNORED]
    assert late.run.status is RunStatus.COMPLETED and late.run.steps["a"].status is StepStatus.SUCCEEDED
