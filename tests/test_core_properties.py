"""Property test of the pure state machine: ``core.apply`` on random commands, no Redis, no store.

``engine.core`` promises it can be checked without I/O; this does, fast enough to run
thousands of commands in seconds. A hypothesis state machine sends every kind of command
(worker reports on time and stale, operator commands, decisions by allowed and refused
people, events, the clock moving timers) and plays the store's part in memory: it keeps
the queue of step jobs, the timers and the waits each outcome asks for. After each
command it checks what every outcome must satisfy: statuses move only along the
documented graphs, a finished run changes only by an explicit recovery (which keeps what
succeeded and continues attempt numbering), the events say what changed, tasks open and
close with their events, a job id is never handed out twice, and a step is on the queue
exactly when the run says it is queued. :mod:`tests.test_engine_properties` checks the same runs through the real
store on Redis.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from math import ceil
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from engine import core
from engine.errors import SwitchboardError
from engine.model import (
    Actor,
    ActorKind,
    EventType,
    FailureCode,
    Run,
    RunStatus,
    StepError,
    StepStatus,
)
from engine.views import TaskOutcome, describe
from engine.workflow import Workflow

ALICE = Actor(kind=ActorKind.SLACK, id="U0ALICE", name="alice")  # starts the run: may not decide it
BOB = Actor(kind=ActorKind.SLACK, id="U0BOB", name="bob")
RUN_ID = "0123456789abcdef"
START = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)

WORKFLOW = Workflow.model_validate(
    {
        "id": "pure",
        "name": "Pure",
        "settings": {"drain_timeout": "30s", "timeout": "600s"},
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
                "retry": {"max_attempts": 3, "idempotent": True},
                "timeout": 20,
            },
            {
                "id": "gate",
                "type": "human_task",
                "needs": ["a"],
                "task": {
                    "title": "Ship {{ inputs.service }}?",
                    "fields": {"version": "1"},
                    "editable": ["version"],
                    "expires_in": "60s",
                },
            },
            {
                "id": "sign",
                "type": "human_task",
                "needs": ["b"],
                "task": {"task_type": "edit", "title": "Sign", "expires_in": "90s", "on_expire": "fail"},
            },
            {"id": "nap", "type": "sleep", "needs": ["b"], "duration": "10s"},
            {
                "id": "hook",
                "type": "wait_event",
                "needs": ["a"],
                "event": {"name": "deploy", "key": "{{ inputs.service }}", "timeout": "45s"},
            },
            {"id": "tell", "type": "notify", "needs": ["hook"], "notify": {"text": "deployed"}},
            {
                # Without a version input its template fails the run (TEMPLATE_ERROR).
                "id": "render",
                "type": "action",
                "action": "worker.actions:echo",
                "needs": ["nap"],
                "args": {"v": "{{ inputs.version }}"},
            },
            {
                "id": "join",
                "type": "action",
                "action": "worker.actions:echo",
                "needs": ["gate", "sign", "render"],
            },
            {
                "id": "cleanup",
                "type": "action",
                "action": "worker.actions:echo",
                "needs": ["gate"],
                "if": "{{ not steps.gate.result.approved }}",
            },
        ],
    }
)
WORKER_STEPS = ("a", "b", "render", "join", "cleanup")
TASKS = ("gate", "sign")
REPORT_OK = st.sampled_from([True, True, True, False])  # most steps succeed, or few runs get far
DECIDERS = st.sampled_from([BOB, BOB, ALICE])  # alice started the run: refused
EDITS = st.sampled_from([{}, {}, {"version": "2"}, {"bogus": 1}])  # only gate's version is editable
KEYS = st.sampled_from(["api", "web"])

# Run statuses change only along core's documented graph (several edges may be taken in one command).
ACTIVE = {RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.PAUSED, RunStatus.DRAINING}
TERMINAL = {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.STOPPED}
RUN_EDGES = {
    (RunStatus.QUEUED, RunStatus.RUNNING),
    (RunStatus.RUNNING, RunStatus.PAUSED),
    (RunStatus.PAUSED, RunStatus.RUNNING),
    (RunStatus.RUNNING, RunStatus.DRAINING),
    (RunStatus.PAUSED, RunStatus.DRAINING),
} | {(active, end) for active in ACTIVE for end in TERMINAL}

# A step's status between two commands: queued -> running -> succeeded | failed | cancelled,
# back to pending for a retry or a hold, skipped (with a reason) if it can never start.
_ENDED = {StepStatus.SUCCEEDED, StepStatus.FAILED}
STEP_EDGES: dict[StepStatus, set[StepStatus]] = {
    # started (a timer, a task, an event), or done at once (notify), or never (skipped, template error)
    StepStatus.PENDING: {StepStatus.QUEUED, StepStatus.WAITING, StepStatus.SKIPPED, *_ENDED},
    # taken by a worker, held (paused, draining), reported from the queue, or skipped by the run's end
    StepStatus.QUEUED: {StepStatus.RUNNING, StepStatus.PENDING, StepStatus.SKIPPED, *_ENDED},
    StepStatus.RUNNING: {StepStatus.PENDING, StepStatus.CANCELLED, *_ENDED},  # pending: a retry
    StepStatus.WAITING: {StepStatus.CANCELLED, *_ENDED},
    StepStatus.SUCCEEDED: set(),
    StepStatus.FAILED: set(),
    StepStatus.CANCELLED: set(),
    StepStatus.SKIPPED: set(),
}

# The last event about a step (or the run) that changed its status (None: it never started).
STEP_EVENT_FOR: dict[StepStatus, set[EventType | None]] = {
    StepStatus.PENDING: {None, EventType.STEP_HELD, EventType.STEP_RETRY_SCHEDULED, EventType.STEP_RESET},
    StepStatus.QUEUED: {EventType.STEP_QUEUED},
    StepStatus.RUNNING: {EventType.STEP_STARTED},
    StepStatus.WAITING: {EventType.STEP_STARTED, EventType.TASK_OPENED},
    StepStatus.SUCCEEDED: {EventType.STEP_COMPLETED},
    StepStatus.SKIPPED: {EventType.STEP_COMPLETED},
    StepStatus.FAILED: {EventType.STEP_FAILED},
    StepStatus.CANCELLED: {EventType.STEP_CANCELLED},
}
STEP_STATUS_EVENTS = set().union(*STEP_EVENT_FOR.values()) - {None}
RUN_EVENT_FOR: dict[RunStatus, set[EventType]] = {
    RunStatus.QUEUED: {EventType.RUN_QUEUED},
    RunStatus.RUNNING: {EventType.RUN_STARTED, EventType.RUN_RESUMED, EventType.RUN_RECOVERED},
    RunStatus.PAUSED: {EventType.RUN_PAUSED},
    RunStatus.DRAINING: {EventType.RUN_DRAINING},
    RunStatus.COMPLETED: {EventType.RUN_COMPLETED},
    RunStatus.FAILED: {EventType.RUN_FAILED},
    RunStatus.STOPPED: {EventType.RUN_STOPPED},
}
RUN_STATUS_EVENTS = set().union(*RUN_EVENT_FOR.values())
TASK_CLOSING_EVENTS = {EventType.TASK_COMPLETED, EventType.TASK_EXPIRED, EventType.STEP_CANCELLED}
_VOLATILE = {"updated_at", "version"}
# How a task ended, as the view tells it, beside its step's status: the pairs that may occur.
TASK_OUTCOMES = {
    (StepStatus.WAITING, TaskOutcome.OPEN),
    (StepStatus.SUCCEEDED, TaskOutcome.APPROVED),
    (StepStatus.SUCCEEDED, TaskOutcome.REJECTED),
    (StepStatus.SUCCEEDED, TaskOutcome.REJECTED_ON_EXPIRY),
    (StepStatus.FAILED, TaskOutcome.EXPIRED),
    (StepStatus.CANCELLED, TaskOutcome.CANCELLED),
}


class CoreMachine(RuleBasedStateMachine):
    """One run driven through ``core.apply``; the store's bookkeeping kept in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.now = START
        self.run: Run | None = None
        self.queue: set[str] = set()  # job ids on the RQ queue
        self.timers: list[core.Timer] = []
        self.job_ids: set[str] = set()  # every job id ever enqueued: none is handed out twice
        self.waits: set[tuple[str, str]] = set()  # (wait key, step id) the store indexes
        self.applied = 0

    # -- the store's part ---------------------------------------------------------------------

    @initialize(inputs=st.sampled_from([{"service": "api"}, {"service": "web", "version": "1.2"}]))
    def create(self, inputs: dict[str, Any]) -> None:
        outcome = core.new_run(WORKFLOW, RUN_ID, inputs, ALICE, self.now)
        assert [e.type for e in outcome.events] == [EventType.RUN_QUEUED]
        assert outcome.run.status is RunStatus.QUEUED
        assert all(s.status is StepStatus.PENDING for s in outcome.run.steps.values())
        self.run = outcome.run

    def apply(self, command: core.Command) -> core.Outcome | None:
        """Apply ``command`` as the store would, checking the outcome; None when refused."""
        before = self.current
        snapshot = before.model_dump_json()
        try:
            outcome = core.apply(WORKFLOW, before, command, self.now)
        except SwitchboardError:
            assert before.model_dump_json() == snapshot, "a refused command changed the run"
            return None
        assert before.model_dump_json() == snapshot, "apply changed the run it was given"
        check_outcome(before, outcome, self.now, recovery=isinstance(command, core.Recover))
        if not outcome.changed:
            return outcome  # the store commits only outcomes that record events
        enqueued = {job.job_id for job in outcome.enqueue}
        assert not enqueued & self.job_ids, "a job id was handed out again"
        self.job_ids |= enqueued
        self.queue -= set(outcome.cancel_jobs)
        self.queue |= enqueued
        # A timer is a sorted-set member: setting it again moves it (a recovery's run timeout).
        members = {(t.kind, t.step_id, t.token) for t in outcome.timers}
        self.timers = [t for t in self.timers if (t.kind, t.step_id, t.token) not in members]
        self.timers += outcome.timers
        self.waits -= set(outcome.waits_removed)
        self.waits |= set(outcome.waits_added)
        outcome.run.version += 1
        self.run = outcome.run
        self.applied += 1
        return outcome

    @property
    def current(self) -> Run:
        assert self.run is not None
        return self.run

    # -- workers ------------------------------------------------------------------------------

    def _in(self, *statuses: StepStatus) -> list[str]:
        return [sid for sid, step in self.current.steps.items() if step.status in statuses]

    @precondition(lambda self: self.run is not None and not self.current.status.terminal)
    @rule(data=st.data())
    def things_go_on(self, data: st.DataObject) -> None:
        """A few of whatever can happen next on its own: a worker takes a job or reports, a task
        is decided, an awaited event arrives, the next timer fires. Drawn from what is possible
        now, so runs get far (random commands alone would mostly be refused)."""
        for _ in range(data.draw(st.integers(1, 8), "moves")):
            moves: list[Callable[[st.DataObject], None]] = []
            if self._in(StepStatus.QUEUED):
                moves.append(self.worker_takes_job)
            if self._in(StepStatus.RUNNING):
                moves += [self._report, self._report, self.worker_dies]
            if self.current.open_tasks():
                moves.append(self._decide)
            if self.waits:
                moves.append(lambda d: self.event_arrives(d.draw(KEYS)))
            if any(timer.kind in ("sleep", "retry") for timer in self.timers):
                moves.append(lambda d: self.time_passes(self.seconds_to_next_wakeup()))
            if not moves or self.current.status.terminal:
                return
            data.draw(st.sampled_from(moves), "move")(data)
            self.run_is_consistent()

    def seconds_to_next_wakeup(self) -> int:
        """Seconds until the next sleep ends or retry is due (deadlines come by time_passes)."""
        due = min(timer.due for timer in self.timers if timer.kind in ("sleep", "retry"))
        return max(1, ceil((due - self.now).total_seconds()))

    def _report(self, data: st.DataObject) -> None:
        self.worker_reports(data, data.draw(REPORT_OK), data.draw(st.booleans()))

    def _decide(self, data: st.DataObject) -> None:
        self.decide(data, data.draw(DECIDERS), data.draw(st.booleans()), data.draw(EDITS))

    @precondition(lambda self: self.run is not None and self._in(StepStatus.QUEUED))
    @rule(data=st.data())
    def worker_takes_job(self, data: st.DataObject) -> None:
        """A worker takes a queued step's job off the queue and asks to start it (held while paused)."""
        step = self.current.steps[data.draw(st.sampled_from(self._in(StepStatus.QUEUED)), "step")]
        outcome = self.apply(core.StepStarted(step.step_id, step.attempt, step.dispatch, "w1"))
        assert outcome is not None, "the current job of a queued step was refused"
        assert outcome.proceed == (self.current.status is not RunStatus.PAUSED)
        if outcome.changed:
            self.queue.discard(step.job_id or "")

    @precondition(lambda self: self.run is not None and self._in(StepStatus.RUNNING))
    @rule(data=st.data(), ok=REPORT_OK, retryable=st.booleans())
    def worker_reports(self, data: st.DataObject, ok: bool, retryable: bool) -> None:
        step = self.current.steps[data.draw(st.sampled_from(self._in(StepStatus.RUNNING)), "step")]
        error = None if ok else StepError(code=FailureCode.STEP_FAILED, message="boom", retryable=retryable)
        result = {"ok": True} if ok else None
        outcome = self.apply(core.StepFinished(step.step_id, step.attempt, result, error))
        assert outcome is not None and outcome.changed, "a running step's report was refused"

    @precondition(lambda self: self.run is not None and self._in(StepStatus.RUNNING))
    @rule(data=st.data())
    def worker_dies(self, data: st.DataObject) -> None:
        step = self.current.steps[data.draw(st.sampled_from(self._in(StepStatus.RUNNING)), "step")]
        outcome = self.apply(core.StepLost(step.step_id, step.attempt, step.worker or "w1"))
        assert outcome is not None and outcome.changed

    @rule(
        step_id=st.sampled_from(WORKER_STEPS),
        attempt_off=st.sampled_from([0, 0, -1, 1]),
        dispatch_off=st.sampled_from([0, -1]),
        kind=st.sampled_from(["start", "report", "lost"]),
        worker=st.sampled_from(["w1", "w2"]),
    )
    def stale_or_late_message(
        self, step_id: str, attempt_off: int, dispatch_off: int, kind: str, worker: str
    ) -> None:
        """Whatever a worker may send late, twice, or about an older attempt or dispatch."""
        step = self.current.steps[step_id]
        attempt = step.attempt + attempt_off
        command: core.Command
        if kind == "start":
            command = core.StepStarted(step_id, attempt, step.dispatch + dispatch_off, worker)
        elif kind == "report":
            late = StepError(code=FailureCode.STEP_FAILED, message="late")
            command = core.StepFinished(step_id, attempt, error=late)
        else:
            command = core.StepLost(step_id, attempt, worker)
        queued_job = step.job_id if step.status is StepStatus.QUEUED else None
        outcome = self.apply(command)
        if outcome is not None and outcome.changed and queued_job and kind != "lost":
            self.queue.discard(queued_job)  # a worker had the job: it started it or reported it

    # -- people -------------------------------------------------------------------------------

    @precondition(lambda self: self.run is not None and self.current.status is RunStatus.QUEUED)
    @rule()
    def admit(self) -> None:
        self.apply(core.Admit(Actor.system("admission")))

    @rule(
        command=st.sampled_from(["pause", "resume", "drain", "stop", "admit"]),
        now=st.integers(0, 3),  # an immediate stop ends the run: rarer, or few runs would get far
    )
    def operator(self, command: str, now: int) -> None:
        if command == "stop" and now:
            return
        match command:
            case "pause":
                self.apply(core.Pause(BOB))
            case "resume":
                self.apply(core.Resume(BOB))
            case "stop" | "drain":
                self.apply(core.Stop(BOB, "immediate" if command == "stop" else "graceful"))
            case "admit":
                self.apply(core.Admit(BOB))  # again, after a race: a no-op

    @precondition(lambda self: self.run is not None and self.current.open_tasks())
    @rule(
        data=st.data(),
        by=DECIDERS,
        approved=st.booleans(),
        edits=EDITS,
    )
    def decide(self, data: st.DataObject, by: Actor, approved: bool, edits: dict[str, Any]) -> None:
        task_id = data.draw(st.sampled_from([s.step_id for s in self.current.open_tasks()]), "task")
        before = self.current.steps[task_id].task
        outcome = self.apply(core.CompleteTask(by, task_id, approved, edits, comment="because"))
        if outcome is None:
            return
        assert by is BOB, "the run's starter decided its task"
        assert before is not None and not set(edits) - set(before.editable), "a field that is not editable"
        task = outcome.run.steps[task_id].task
        assert task is not None and task.decided_by == BOB and task.approved is approved

    @rule(task_id=st.sampled_from(TASKS))
    def decide_again(self, task_id: str) -> None:
        """A second decision, or one on a task not open: refused, saying who decided if anyone did."""
        task = self.current.steps[task_id].task
        if task is None or task.decided_at is None:
            return
        assert self.apply(core.CompleteTask(BOB, task_id, False)) is None

    @rule(
        by=DECIDERS,
        from_step=st.sampled_from([None, None, "a", "b", "gate", "hook", "render"]),
        force=st.booleans(),
        version=st.sampled_from([None, "9"]),
    )
    def recover(self, by: Actor, from_step: str | None, force: bool, version: str | None) -> None:
        """An operator recovers the run, maybe from an earlier step, maybe correcting an input
        (without a version, step render fails on its template): only a failed or stopped run."""
        before = self.current
        inputs = None if version is None else {**before.inputs, "version": version}
        outcome = self.apply(core.Recover(by, from_step, inputs, force))
        if before.status not in (RunStatus.FAILED, RunStatus.STOPPED):
            assert outcome is None, f"a {before.status} run was recovered"
            return
        if outcome is None:
            return  # a step that already ran and is not idempotent, without force
        recovered = outcome.events[0]
        assert recovered.type is EventType.RUN_RECOVERED and recovered.actor == by
        assert recovered.data["force"] is force and recovered.data["previous_status"] == before.status
        if from_step is not None:
            assert from_step in recovered.data["steps"]
        if version is not None and before.inputs.get("version") != version:
            assert recovered.data["inputs"] == {"version": {"before": before.inputs.get("version"), "after": "9"}}
            assert outcome.run.inputs["version"] == "9"

    # -- the outside world --------------------------------------------------------------------

    @precondition(lambda self: bool(self.waits))
    @rule(key=KEYS)
    def event_arrives(self, key: str) -> None:
        """The store hands an event to the steps its wait index names, as ``deliver_event`` does."""
        for wait_key, step_id in sorted(self.waits):
            if wait_key == f"deploy|{key}":
                outcome = self.apply(core.EventDelivered(step_id, {"sha": "abc"}, BOB))
                assert outcome is not None, "a step in the wait index refused its event"

    @precondition(
        lambda self: self.run is not None
        and self.current.steps["hook"].status.finished
        and not self.current.status.terminal
    )
    @rule()
    def event_after_the_step_stopped_waiting(self) -> None:
        assert self.apply(core.EventDelivered("hook", {}, BOB)) is None

    @rule(seconds=st.sampled_from([1, 2, 5, 10, 25, 50, 100, 700]))
    def time_passes(self, seconds: int) -> None:
        """The clock moves; due timers fire in due order, as the workers' maintenance fires them."""
        self.now += timedelta(seconds=seconds)
        while due := sorted((t for t in self.timers if t.due <= self.now), key=lambda t: t.due):
            timer = due[0]
            self.timers.remove(timer)
            self.apply(core.TimerFired(timer.kind, timer.step_id, timer.token))

    # -- what holds between commands ----------------------------------------------------------

    @precondition(lambda self: self.run is not None)
    @invariant()
    def run_is_consistent(self) -> None:
        run = self.current
        steps = run.steps.values()
        unfinished = [s for s in steps if not s.status.finished]
        if run.status.terminal:
            assert not unfinished and run.finished_at is not None
        if run.status is RunStatus.RUNNING:
            assert unfinished, "a running run whose steps are all finished should have completed"
        if run.status is RunStatus.DRAINING:
            assert any(s.status is StepStatus.RUNNING for s in steps), "draining with nothing in flight"
        if any(s.status is StepStatus.FAILED for s in steps):
            assert run.status is RunStatus.FAILED and run.failure is not None
        for step in steps:
            if step.status is StepStatus.SKIPPED:
                assert step.reason is not None and step.detail
            if step.status.finished:
                assert step.finished_at is not None
            if step.status in (StepStatus.FAILED, StepStatus.CANCELLED):
                assert step.error is not None
        # A step is on the queue exactly when the run says it is queued, under its job id.
        assert {s.job_id for s in steps if s.status is StepStatus.QUEUED} == self.queue
        # The wait index names exactly the steps waiting for an event.
        assert self.waits == {(s.wait_event, s.step_id) for s in steps if s.wait_event}
        assert all(s.status is StepStatus.WAITING for s in steps if s.wait_event)
        # The view counts every step once and lists the open tasks.
        view = describe(run, WORKFLOW)
        waiting_to_start = sum(s.status is StepStatus.PENDING for s in steps)
        assert view.done + len(view.current) + waiting_to_start == view.total == len(WORKFLOW.steps)
        assert [t.task_id for t in view.pending_tasks] == [s.step_id for s in run.open_tasks()]
        assert all(t.outcome is TaskOutcome.OPEN for t in view.pending_tasks)
        for shown in view.steps:
            assert bool(shown.skip_meaning) == (shown.status is StepStatus.SKIPPED)
            if shown.task is not None:
                assert (shown.status, shown.task.outcome) in TASK_OUTCOMES, shown
        if run.failure is not None and run.failure.step_id is not None:
            assert view.failed_step is not None and view.failed_step.step_id == run.failure.step_id


def check_outcome(before: Run, outcome: core.Outcome, now: datetime, recovery: bool = False) -> None:
    after = outcome.run
    types = [e.type for e in outcome.events]
    # A recovery (and only a recovery) takes a failed or stopped run back to running; what
    # follows in the same command (steps starting, the run ending again) moves along the graph.
    recovered = EventType.RUN_RECOVERED in types
    assert recovered == (recovery and bool(outcome.events)), types
    if recovered:
        assert before.status in (RunStatus.FAILED, RunStatus.STOPPED) and types[0] is EventType.RUN_RECOVERED
        assert after.status is RunStatus.RUNNING or (RunStatus.RUNNING, after.status) in RUN_EDGES
        check_recovery(before, outcome)
    elif after.status is not before.status:
        assert (before.status, after.status) in RUN_EDGES, (before.status, after.status)
    if before.status.terminal and not recovered:
        # Otherwise a finished run stays finished: a late report is recorded, nothing changes.
        assert types == [EventType.STEP_RESULT_IGNORED]
        assert after.model_dump(exclude=_VOLATILE) == before.model_dump(exclude=_VOLATILE)
        assert not (outcome.enqueue or outcome.timers or outcome.waits_added)
    assert outcome.ended == (after.status.terminal and (recovered or not before.status.terminal))
    # Events are of this run, stamped now. An outcome without events is not committed (a retry
    # timer fired while paused clears retry_at, and resume retries at once either way), so it
    # must ask for nothing; events without a change are a late report kept for the audit trail.
    assert all(e.run_id == after.run_id and e.at == now for e in outcome.events)
    if not outcome.events:
        assert after.status is before.status
        assert not (outcome.enqueue or outcome.timers or outcome.waits_added or outcome.waits_removed)
        assert not (outcome.cancel_jobs or outcome.kill_jobs)
    elif after.model_dump(exclude=_VOLATILE) == before.model_dump(exclude=_VOLATILE):
        assert all(e.type in core.AUDIT_ONLY_EVENTS for e in outcome.events), outcome.events
    assert all(e.step_id is None or e.step_id in after.steps for e in outcome.events)
    run_events = [e.type for e in outcome.events if e.type in RUN_STATUS_EVENTS]
    if after.status is before.status and not recovered:
        assert not run_events, (after.status, run_events)
    elif run_events or after.status is not before.status:
        assert run_events and run_events[-1] in RUN_EVENT_FOR[after.status], (after.status, run_events)
    reset = set(outcome.events[0].data["steps"]) if recovered else set()
    for step_id, old in before.steps.items():
        new = after.steps[step_id]
        about = [e.type for e in outcome.events if e.step_id == step_id]
        # A step a recovery reset starts again from pending (having said so with step_reset);
        # it may open and be cancelled at once, when the run fails again in the same command.
        was = StepStatus.PENDING if step_id in reset else old.status
        if new.status is not was:
            edges = STEP_EDGES[was] | ({StepStatus.CANCELLED} if step_id in reset else set())
            assert new.status in edges, (step_id, was, new.status)
        if new.status is not old.status or step_id in reset:
            last = [t for t in about if t in STEP_STATUS_EVENTS][-1]
            assert last in STEP_EVENT_FOR[new.status], (step_id, new.status, about)
        check_task(step_id, before, after, about, reset=step_id in reset)
    check_jobs(before, outcome)
    assert all(timer.due >= now for timer in outcome.timers)


def check_recovery(before: Run, outcome: core.Outcome) -> None:
    """What a recovery keeps: the steps it does not name, untouched; the ones it names reset
    (each with step_reset), whatever did not succeed among them, attempts numbered on."""
    after, recovered = outcome.run, outcome.events[0]
    reset = recovered.data["steps"]
    assert reset and recovered.data["from_step"] in reset
    for step_id, old in before.steps.items():
        new = after.steps[step_id]
        if step_id not in reset:
            assert new == old, f"recovery touched step {step_id!r}, which it does not run again"
            assert old.status is StepStatus.SUCCEEDED or old.reason is not None
            continue
        assert EventType.STEP_RESET in [e.type for e in outcome.events if e.step_id == step_id]
        assert new.attempt >= old.attempt, "a recovery restarted a step's attempt numbering"
        if old.status is not StepStatus.SUCCEEDED:
            continue
        # A succeeded step runs again only downstream of the step named to recover from.
        assert recovered.data["from_step"] == step_id or set(WORKFLOW.step(step_id).needs) & set(reset)


def check_task(step_id: str, before: Run, after: Run, about: list[EventType], reset: bool = False) -> None:
    """A task opens with ``task_opened`` and closes with its decision, expiry or cancellation."""
    was_open = step_id in {s.step_id for s in before.open_tasks()}
    is_open = step_id in {s.step_id for s in after.open_tasks()}
    if is_open and not was_open:
        assert EventType.TASK_OPENED in about
    if was_open and not is_open:
        assert TASK_CLOSING_EVENTS & set(about), (step_id, about)
    if not was_open and not is_open:
        # A task a recovery reopened may close at once: the run failed again in the same command.
        assert EventType.TASK_OPENED not in about or (reset and TASK_CLOSING_EVENTS & set(about)), about
    old, task = before.steps[step_id].task, after.steps[step_id].task
    if old is not None and old.decided_at is not None and not reset:
        assert task == old, "a decided task changed"
    if task is not None and task.decided_at is not None:
        assert task.decided_by is not None and task.approved is not None
        assert after.steps[step_id].status is StepStatus.SUCCEEDED


def check_jobs(before: Run, outcome: core.Outcome) -> None:
    """Every step the command made runnable is enqueued once, under the job id the run records."""
    after = outcome.run
    enqueued = {job.step_id: job for job in outcome.enqueue}
    assert len(enqueued) == len(outcome.enqueue), "a step enqueued twice in one command"
    made_runnable = {
        sid
        for sid, st in after.steps.items()
        if st.status is StepStatus.QUEUED
        and (before.steps[sid].status is not StepStatus.QUEUED or before.steps[sid].job_id != st.job_id)
    }
    assert set(enqueued) == made_runnable
    for sid, job in enqueued.items():
        step = after.steps[sid]
        assert (job.job_id, job.attempt, job.dispatch) == (step.job_id, step.attempt, step.dispatch)
        assert job.job_id == core.job_id_for(after.run_id, step)
    # A step queued and taken back in the same command (the run ended later in it) is not enqueued.
    queued = [e.step_id for e in outcome.events if e.type is EventType.STEP_QUEUED]
    taken_back = [sid for sid in queued if sid and after.steps[sid].status is not StepStatus.QUEUED]
    assert len(queued) == len(outcome.enqueue) + len(taken_back)
    assert not {job.job_id for job in outcome.enqueue} & set(outcome.cancel_jobs)


CoreMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=50)
test_core_state_machine = CoreMachine.TestCase


def test_a_run_completes_through_the_pure_core() -> None:
    """The success path, which random sequences seldom walk to its end, under the same checks."""
    run = core.new_run(WORKFLOW, RUN_ID, {"service": "api", "version": "1.2"}, ALICE, START).run
    now = START

    def apply(command: core.Command, seconds: float = 0) -> core.Outcome:
        nonlocal run, now
        now += timedelta(seconds=seconds)
        outcome = core.apply(WORKFLOW, run, command, now)
        check_outcome(run, outcome, now)
        run = outcome.run
        return outcome

    def work(step_id: str) -> None:
        step = run.steps[step_id]
        apply(core.StepStarted(step_id, step.attempt, step.dispatch, "w1"))
        apply(core.StepFinished(step_id, step.attempt, {"ok": True}))

    assert {job.step_id for job in apply(core.Admit(BOB)).enqueue} == {"a", "b"}
    work("a")
    work("b")
    assert {s.step_id for s in run.open_tasks()} == {"gate", "sign"}
    apply(core.CompleteTask(BOB, "gate", True, {"version": "2"}))
    apply(core.CompleteTask(BOB, "sign", True))
    apply(core.EventDelivered("hook", {"sha": "abc"}, BOB))
    assert run.steps["tell"].status is StepStatus.SUCCEEDED  # notify: done as it starts
    apply(core.TimerFired("sleep", "nap", 1), seconds=10)
    work("render")
    assert run.steps["cleanup"].reason is not None  # the gate was approved: its `if` is false
    work("join")
    assert run.status is RunStatus.COMPLETED
    view = describe(run, WORKFLOW)
    assert (view.done, view.total, view.current, view.pending_tasks) == (10, 10, (), ())
    gate = view.step("gate")
    assert gate is not None and gate.task is not None and gate.task.outcome is TaskOutcome.APPROVED
    assert gate.duration == 0.0 and gate.needs == ("a",) and view.duration == 10.0
