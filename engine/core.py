"""The run state machine: ``(workflow, run, command, now) -> Outcome``, with no I/O.

Everything that decides what happens to a run lives here, so it can be tested and
property-checked without Redis. :mod:`engine.store` loads a run, calls :func:`apply`,
and commits the new state, its events and its side effects in one transaction.

Run statuses::

    queued -> running <-> paused
    running | paused -> draining        (graceful stop: in-flight steps finish)
    any active -> completed | failed | stopped
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from engine.errors import CommandRefused, InvalidInput, NotAllowed, NotFound
from engine.fields import misfit
from engine.model import (
    FINISHED_STEP_STATUSES,
    Actor,
    ActorKind,
    ChangeRequest,
    Decision,
    Event,
    EventType,
    Failure,
    FailureCode,
    Question,
    Run,
    RunStatus,
    SkipReason,
    StepError,
    Steps,
    StepState,
    StepStatus,
    StopMode,
    StopRequest,
    Task,
)
from engine.templating import RenderError, render, truthy
from engine.views import (
    RUN_ACTIONS,
    already_decided,
    already_said,
    describe_task,
    no_such_task,
    utc_text,
)
from engine.workflow import Step, StepType, TaskSpec, Workflow

# --- commands -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Admit:
    """Move a queued run to running (the store checks the workflow's concurrency)."""

    actor: Actor


@dataclass(frozen=True)
class Pause:
    actor: Actor


@dataclass(frozen=True)
class Resume:
    actor: Actor


@dataclass(frozen=True)
class Stop:
    actor: Actor
    mode: StopMode = "immediate"


@dataclass(frozen=True)
class CompleteTask:
    actor: Actor
    task_id: str
    approved: bool
    result: dict[str, Any] = field(default_factory=dict)
    comment: str | None = None


@dataclass(frozen=True)
class RequestChanges:
    """The third decision on a human task: what to change, for the workflow to act on."""

    actor: Actor
    task_id: str
    comment: str


@dataclass(frozen=True)
class AnswerQuestion:
    """The answer to an ``ask`` step's question: the step's result."""

    actor: Actor
    step_id: str
    answer: str


@dataclass(frozen=True)
class StepStarted:
    """A worker is about to execute a step; refused if the step should no longer run."""

    step_id: str
    attempt: int
    dispatch: int
    worker: str


@dataclass(frozen=True)
class StepFinished:
    step_id: str
    attempt: int
    result: Any = None
    error: StepError | None = None


@dataclass(frozen=True)
class StepFinishedThenNext:
    """A worker's report that also starts, for that worker, a step the report makes ready.

    Eager dispatch (as Temporal's eager activities): the worker that ends a step is free,
    and the run's next step is usually what it would take off the queue a moment later,
    after another round trip and another commit. Started in the report's own commit it
    costs neither. The step started is the first one the report enqueues; nothing is
    started if the report enqueues none, or if that step may not start now (a paused run).
    """

    finished: StepFinished
    worker: str


@dataclass(frozen=True)
class StepLost:
    """The worker running a step died (detected by the worker-side reaper)."""

    step_id: str
    attempt: int
    worker: str


TimerKind = Literal[
    "task_expiry",
    "task_reminder",  # token: attempt * 10 + the reminder's number (1-4; 5-8 after an escalation)
    "task_escalation",  # the deadline of an escalated task
    "sleep",
    "wait_timeout",
    "step_timeout",
    "retry",
    "drain_timeout",
    "run_timeout",
]
REMINDERS_PER_ATTEMPT = 10


@dataclass(frozen=True)
class TimerFired:
    kind: TimerKind
    step_id: str
    token: int  # the step attempt (or run version) the timer was set for; stale timers no-op


@dataclass(frozen=True)
class EventDelivered:
    step_id: str
    payload: Any
    actor: Actor


@dataclass(frozen=True)
class Recover:
    """Continue a failed or stopped run: the one command a finished run takes.

    The same run goes back to running. The steps that did not succeed, and with
    ``from_step`` that step and every step downstream of it, run again as their next
    attempt; succeeded steps keep their results. ``inputs`` are the run's inputs after
    correction, already validated (None: unchanged). A worker step that already ran and
    is not idempotent is refused unless ``force``.
    """

    actor: Actor
    from_step: str | None = None
    inputs: dict[str, Any] | None = None
    force: bool = False


Command = (
    Admit
    | Pause
    | Resume
    | Stop
    | CompleteTask
    | RequestChanges
    | AnswerQuestion
    | StepStarted
    | StepFinished
    | StepFinishedThenNext
    | StepLost
    | TimerFired
    | EventDelivered
    | Recover
)

# --- outcome ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timer:
    due: datetime
    kind: TimerKind
    step_id: str
    token: int


@dataclass(frozen=True)
class StepJob:
    """A step attempt to hand to a worker."""

    step_id: str
    job_id: str
    attempt: int
    dispatch: int
    timeout: float | None


@dataclass
class Outcome:
    """The new run plus what the store must do when it commits it."""

    run: Run
    events: list[Event] = field(default_factory=list)
    enqueue: list[StepJob] = field(default_factory=list)
    cancel_jobs: list[str] = field(default_factory=list)  # queued, not started: drop them
    kill_jobs: list[str] = field(default_factory=list)  # executing now: stop them
    timers: list[Timer] = field(default_factory=list)
    # (wait key "name|key", step id) of wait_event steps that start or stop waiting: the net
    # change of the command (see wait_on/wait_off), so the store may apply them in any order
    waits_added: list[tuple[str, str]] = field(default_factory=list)
    waits_removed: list[tuple[str, str]] = field(default_factory=list)
    proceed: bool = True  # for StepStarted: False when the worker must not run the step
    message: str = ""
    # For StepFinishedThenNext: the job enqueued and started at once, which the reporting
    # worker runs itself (the store takes it off the queue again).
    claimed: StepJob | None = None

    @property
    def changed(self) -> bool:
        return bool(self.events)

    @property
    def ended(self) -> bool:
        """Whether this change finished the run (every ending records one of these events)."""
        return any(event.type.ends_run for event in self.events)

    def wait_on(self, wait_key: str, step_id: str) -> None:
        """A step starts waiting; if it stopped earlier in this command, nothing changed."""
        if (wait_key, step_id) in self.waits_removed:
            self.waits_removed.remove((wait_key, step_id))
        else:
            self.waits_added.append((wait_key, step_id))

    def wait_off(self, wait_key: str, step_id: str) -> None:
        """A step stops waiting; if it started in this command (a recovery reopening it, then
        a failure cancelling it), it was never indexed, so nothing changed."""
        if (wait_key, step_id) in self.waits_added:
            self.waits_added.remove((wait_key, step_id))
        else:
            self.waits_removed.append((wait_key, step_id))


def job_id_for(run_id: str, step: StepState) -> str:
    """Deterministic, so a repeated enqueue of the same dispatch is harmless."""
    return f"sb-{run_id}-{step.step_id}-a{step.attempt}-d{step.dispatch}"


def allowed(actor: Actor, refs: list[str]) -> bool:
    """Whether ``actor`` matches a role list (``slack:U123``, ``api:*``, ``*``); empty: anyone."""
    return not refs or actor.kind is ActorKind.SYSTEM or actor.matches(refs)


def new_run(
    workflow: Workflow,
    run_id: str,
    inputs: dict[str, Any],
    actor: Actor,
    now: datetime,
    trigger: dict[str, Any] | None = None,
    replay_of: str | None = None,
) -> Outcome:
    """A queued run of ``workflow``; inputs must already be validated."""
    run = Run(
        run_id=run_id,
        workflow_id=workflow.id,
        workflow_name=workflow.name,
        workflow_version=workflow.version,
        workflow_digest=workflow.digest,
        inputs=inputs,
        started_by=actor,
        trigger=trigger or {},
        created_at=now,
        updated_at=now,
        steps={s.id: StepState(step_id=s.id, type=s.type) for s in workflow.steps},
        replay_of=replay_of,
        notify_channel=workflow.settings.slack_channel,
    )
    data: dict[str, Any] = {"workflow_id": workflow.id, "inputs": inputs}
    if replay_of:
        data["replay_of"] = replay_of
    if trigger:
        data["trigger"] = trigger
    event = Event(type=EventType.RUN_QUEUED, at=now, actor=actor, run_id=run_id, data=data)
    return Outcome(run=run, events=[event])


def steps_named(command: Command, workflow: Workflow | None = None) -> list[str]:
    """The steps a command's transition reads first, so the store loads them with the run:
    the step it is about (a task, a worker's step, a timer's) and, for a worker's report when
    the run's ``workflow`` is known, the steps that may start next and what they need."""
    if isinstance(command, StepFinishedThenNext):
        command = command.finished  # what it may start next is among what the report reads
    named = getattr(command, "step_id", None) or getattr(command, "task_id", None)
    if not isinstance(named, str) or not named:
        return []
    if workflow is None or not isinstance(command, StepFinished):
        return [named]
    return _read_by_report(named, workflow)


def steps_read_next(command: Command, outcome: Outcome, workflow: Workflow | None = None) -> list[str]:
    """The steps the command expected after this one reads first: once a worker starts a
    step (itself, or the one its report claimed), its report on it (:func:`steps_named`).
    The store reads them with this commit."""
    if workflow is None:
        return []
    if isinstance(command, StepStarted):
        return _read_by_report(command.step_id, workflow)
    if isinstance(command, StepFinishedThenNext) and outcome.claimed is not None:
        return _read_by_report(outcome.claimed.step_id, workflow)
    return []


def _read_by_report(step_id: str, workflow: Workflow) -> list[str]:
    after = workflow.needed_by(step_id)
    return [step_id, *(s.id for s in after), *(need for s in after for need in s.needs)]


def apply(workflow: Workflow, run: Run, command: Command, now: datetime) -> Outcome:
    """Apply ``command``; raises :class:`CommandRefused` (or a subclass) when it does not fit."""
    if isinstance(command, StepFinishedThenNext):
        return _finish_then_start(workflow, run, command, now)
    outcome = _Transition(workflow, run, now).handle(command)
    if run.status.terminal and not isinstance(command, Recover):
        keep_finished(run, outcome)  # a recovery is the one deliberate way back (_recover)
    return outcome


def _finish_then_start(workflow: Workflow, run: Run, command: StepFinishedThenNext, now: datetime) -> Outcome:
    """The report, then the start of the first step it enqueued, as one outcome (each by its own rules)."""
    finished = apply(workflow, run, command.finished, now)
    if not finished.enqueue:
        return finished
    job = finished.enqueue[0]
    if finished.run.status is RunStatus.PAUSED:
        return finished  # it would be held: it stays queued, as it would have been
    start = StepStarted(job.step_id, job.attempt, job.dispatch, command.worker)
    # The report's run is this command's own: the start changes it in place (no second copy).
    try:
        started = _Transition(workflow, finished.run, now, owned=True).handle(start)
    except CommandRefused:  # refused before it changes anything: the step stays queued
        return finished
    return Outcome(
        run=started.run,
        events=finished.events + started.events,
        enqueue=finished.enqueue,
        cancel_jobs=finished.cancel_jobs + started.cancel_jobs,
        kill_jobs=finished.kill_jobs + started.kill_jobs,
        timers=finished.timers + started.timers,
        waits_added=finished.waits_added + started.waits_added,
        waits_removed=finished.waits_removed + started.waits_removed,
        claimed=job,
    )


# What a finished run still records: a worker's report that came too late, for the audit trail.
AUDIT_ONLY_EVENTS = frozenset({EventType.STEP_RESULT_IGNORED})
_STATE_EXCLUDE = {"updated_at", "version"}


def keep_finished(before: Run, outcome: Outcome) -> None:
    """Refuse what a finished run cannot take: it stays finished, with the same outcome, for good.

    A finished run is read and replayed (a replay is a new run); every command on it is
    refused with a sentence, but one: :class:`Recover`, an operator's explicit request, which
    :func:`apply` lets through and which records ``run_recovered``. The one other change
    changes nothing: a worker's late report is recorded as ``step_result_ignored``. The
    transitions never revive a finished run otherwise; this check holds them to it, whatever
    a future command or an inconsistent document does.
    """
    audit_only = (
        outcome.changed
        and all(event.type in AUDIT_ONLY_EVENTS for event in outcome.events)
        and not (outcome.enqueue or outcome.timers or outcome.waits_added or outcome.kill_jobs)
        and outcome.run.model_dump(exclude=_STATE_EXCLUDE) == before.model_dump(exclude=_STATE_EXCLUDE)
    )
    if not audit_only:
        raise CommandRefused(
            f"Run {before.short_id} is {before.status.value}: a finished run keeps its outcome"
            f" and takes no more commands. You can {RUN_ACTIONS[before.status]}."
        )


class _Transition:
    def __init__(self, workflow: Workflow, run: Run, now: datetime, owned: bool = False) -> None:
        """``owned``: ``run`` is no one else's (another transition of the same command just made
        it), so it is changed in place rather than cloned first."""
        self.workflow = workflow
        self.now = now
        self.out = Outcome(run=run if owned else run.clone())
        self.run = self.out.run

    # -- dispatch on command -------------------------------------------------------------

    def handle(self, command: Command) -> Outcome:
        match command:
            case Admit(actor):
                self._admit(actor)
            case Pause(actor):
                self._pause(actor)
            case Resume(actor):
                self._resume(actor)
            case Stop(actor, mode):
                self._stop(actor, mode)
            case CompleteTask():
                self._complete_task(command)
            case RequestChanges():
                self._request_changes(command)
            case AnswerQuestion():
                self._answer(command)
            case StepStarted():
                self._step_started(command)
            case StepFinished():
                self._step_finished(command)
            case StepLost():
                self._step_lost(command)
            case TimerFired():
                self._timer_fired(command)
            case EventDelivered():
                self._event_delivered(command)
            case Recover():
                self._recover(command)
        if self.out.changed:
            self.run.updated_at = self.now
        return self.out

    # -- helpers -------------------------------------------------------------------------

    def _event(
        self, type_: EventType, actor: Actor | None = None, step_id: str | None = None, **data: Any
    ) -> None:
        self.out.events.append(
            Event(
                type=type_,
                at=self.now,
                actor=actor or Actor.system(),
                run_id=self.run.run_id,
                step_id=step_id,
                data=data,
            )
        )

    def _refuse(self, what: str, needs: str) -> CommandRefused:
        return CommandRefused(
            f"Cannot {what} run {self.run.short_id}: it is {self.run.status.value}"
            f" and {what} needs a run that is {needs}."
            f" You can {RUN_ACTIONS[self.run.status]}."
        )

    def _check_operator(self, actor: Actor, what: str) -> None:
        operators = self.workflow.settings.operators
        if not allowed(actor, operators):
            raise NotAllowed(
                f"{actor.display} may not {what} runs of {self.workflow.id!r};"
                f" its operators are {', '.join(operators)}."
            )

    def _context(self) -> dict[str, Any]:
        return template_context(self.run)

    def _timer(self, seconds: float, kind: TimerKind, step_id: str = "", token: int = 0) -> datetime:
        due = self.now + timedelta(seconds=seconds)
        self.out.timers.append(Timer(due=due, kind=kind, step_id=step_id, token=token))
        return due

    # -- operator commands ---------------------------------------------------------------

    def _admit(self, actor: Actor) -> None:
        if self.run.status is not RunStatus.QUEUED:
            return  # admission is idempotent: a second admit after a race is a no-op
        self.run.status = RunStatus.RUNNING
        # A recovered run keeps when it first started; analytics count its start once.
        again: dict[str, Any] = {"recovered": True} if self.run.started_at is not None else {}
        self.run.started_at = self.run.started_at or self.now
        self._event(EventType.RUN_STARTED, actor, **again)
        self._run_again()

    def _pause(self, actor: Actor) -> None:
        self._check_operator(actor, "pause")
        if self.run.status is not RunStatus.RUNNING:
            raise self._refuse("pause", "running")
        self.run.status = RunStatus.PAUSED
        self.run.paused_by = actor
        self._event(EventType.RUN_PAUSED, actor)

    def _resume(self, actor: Actor) -> None:
        self._check_operator(actor, "resume")
        if self.run.status is not RunStatus.PAUSED:
            raise self._refuse("resume", "paused")
        self.run.status = RunStatus.RUNNING
        self.run.paused_by = None
        self._event(EventType.RUN_RESUMED, actor)
        self._advance()

    def _stop(self, actor: Actor, mode: StopMode) -> None:
        self._check_operator(actor, "stop")
        status = self.run.status
        if status.terminal:
            raise self._refuse("stop", "queued, running, paused or draining")
        if status is RunStatus.DRAINING and mode == "graceful":
            raise CommandRefused(
                f"Run {self.run.short_id} is already stopping gracefully."
                " You can wait for it to drain or stop it immediately."
            )
        running = [s for s in self.run.steps.values() if s.status is StepStatus.RUNNING]
        if mode == "graceful" and running:
            self._begin_drain(actor)
            return
        how = "immediately" if mode == "immediate" else "gracefully"
        if status is RunStatus.DRAINING:
            how = "immediately (escalated from a graceful stop)"
        if self.run.stop is None or status is not RunStatus.DRAINING:
            self.run.stop = StopRequest(mode=mode, by=actor, at=self.now)
        failure = Failure(code=FailureCode.RUN_STOPPED, message=f"Stopped {how} by {actor.display}.")
        self._end(RunStatus.STOPPED, failure, actor, cancel_error=failure)

    def _begin_drain(self, actor: Actor) -> None:
        deadline = self._timer(self.workflow.settings.drain_timeout, "drain_timeout")
        self.run.stop = StopRequest(mode="graceful", by=actor, at=self.now, drain_deadline=deadline)
        self.run.status = RunStatus.DRAINING
        self._event(EventType.RUN_DRAINING, actor, drain_deadline=deadline.isoformat())
        error = StepError(code=FailureCode.RUN_STOPPED, message=f"Stopped gracefully by {actor.display}.")
        for st in self.run.steps.values():
            if st.status is StepStatus.QUEUED:
                # Not started yet: under a graceful stop nothing new starts.
                self._undispatch(st)
                st.detail = "held: the run is stopping gracefully"
                self._event(EventType.STEP_HELD, actor, st.step_id, attempt=st.attempt, reason="draining")
            elif st.status is StepStatus.WAITING:
                self._cancel(st, error, actor)

    def _finish_drain_if_idle(self) -> None:
        if self.run.status is not RunStatus.DRAINING:
            return
        if any(s.status is StepStatus.RUNNING for s in self.run.steps.values()):
            return
        stop = self.run.stop
        by = stop.by if stop else Actor.system()
        failure = Failure(code=FailureCode.RUN_STOPPED, message=f"Stopped gracefully by {by.display}.")
        self._end(RunStatus.STOPPED, failure, by, cancel_error=failure)

    # -- recovery ------------------------------------------------------------------------

    def _recover(self, cmd: Recover) -> None:
        """The same run continues: what did not succeed (and ``from_step`` onwards) runs again.

        Attempts continue their numbering, so earlier attempts, their errors and their timers
        stay apart from the new ones; each reset step records ``step_reset`` with its last
        error, and the run records ``run_recovered`` with who asked, from which step, the
        inputs corrected and whether it was forced.
        """
        self._check_operator(cmd.actor, "recover")
        run = self.run
        if run.status is RunStatus.COMPLETED:
            raise CommandRefused(
                f"Cannot recover run {run.short_id}: it completed, so nothing is left to run again."
                f" You can {RUN_ACTIONS[run.status]}."
            )
        if run.status not in RECOVERABLE_STATUSES:
            raise self._refuse("recover", "failed or stopped")
        rerun = self._steps_to_rerun(cmd.from_step)
        if not cmd.force:
            self._check_rerun_is_safe(rerun)
        previous, failure = run.status, run.failure
        changed = {
            name: {"before": run.inputs.get(name), "after": value}
            for name, value in (cmd.inputs or {}).items()
            if run.inputs.get(name) != value
        }
        if cmd.inputs is not None:
            run.inputs = dict(cmd.inputs)
        # Under a concurrency limit the run waits for a slot like a new one (the command API
        # admits it at once when there is room); otherwise it runs again now.
        limited = self.workflow.settings.concurrency is not None
        run.status = RunStatus.QUEUED if limited else RunStatus.RUNNING
        run.failure = run.finished_at = run.stop = run.paused_by = None
        failed_step = failure.step_id if failure else None
        self._event(
            EventType.RUN_RECOVERED,
            cmd.actor,
            from_step=cmd.from_step or (failed_step if failed_step in rerun else rerun[0]),
            steps=rerun,
            inputs=changed,
            force=cmd.force,
            previous_status=previous.value,
            previous_failure=failure.model_dump(mode="json") if failure else None,
        )
        for step_id in rerun:
            self._reset(run.steps[step_id], cmd.actor)
        if not limited:
            self._run_again()

    def _run_again(self) -> None:
        """A run admitted (or recovered) runs: a fresh deadline, and its steps start."""
        if self.workflow.settings.timeout:
            self._timer(self.workflow.settings.timeout, "run_timeout")  # a recovery's replaces the first
        self._advance()

    def _steps_to_rerun(self, from_step: str | None) -> list[str]:
        """Steps that did not succeed, ``from_step``, and everything downstream of them, in order.

        A step skipped by its own condition keeps its skip (its needs succeeded and stay),
        unless it is downstream of a step that runs again.
        """
        steps = self.run.steps
        if from_step is not None and from_step not in steps:
            names = ", ".join(steps)
            raise InvalidInput(
                f"Run {self.run.short_id} has no step {from_step!r}; its steps are {names}.",
                {"from_step": f"not a step of workflow {self.workflow.id!r}"},
            )
        chosen = {
            sid
            for sid, st in steps.items()
            if st.status is not StepStatus.SUCCEEDED
            and not (st.status is StepStatus.SKIPPED and st.reason is SkipReason.CONDITION)
        }
        if from_step is not None:
            chosen.add(from_step)
        grew = True
        while grew:
            downstream = {s.id for s in self.workflow.steps if chosen & set(s.needs)} - chosen
            chosen |= downstream
            grew = bool(downstream)
        if not chosen:
            raise CommandRefused(f"Run {self.run.short_id} has no step to run again.")
        return [s.id for s in self.workflow.steps if s.id in chosen]

    def _check_rerun_is_safe(self, rerun: list[str]) -> None:
        """Refuse to run again a worker step that already ran and is not marked idempotent."""
        unsafe = [
            sid
            for sid in rerun
            if self.run.steps[sid].type in WORKER_STEP_TYPES
            and self.run.steps[sid].started_at is not None
            and not self.workflow.step(sid).retry.idempotent
        ]
        if unsafe:
            names = ", ".join(repr(sid) for sid in unsafe)
            step, it, is_ = ("step", "it", "is") if len(unsafe) == 1 else ("steps", "they", "are")
            raise CommandRefused(
                f"Cannot recover run {self.run.short_id}: {step} {names} already ran and would run"
                f" again, and {it} {is_} not marked idempotent (retry.idempotent), so side effects"
                f" could happen twice. Recover with force if running {it} again is safe, or replay the run."
            )

    def _reset(self, st: StepState, actor: Actor, why: str = "the run was recovered") -> None:
        """Make a finished step runnable again: it opens afresh, as its next attempt, needs met."""
        previous = st.status
        st.status = StepStatus.PENDING
        st.rerun = True
        st.reason = st.result = st.retry_at = st.job_id = st.worker = st.finished_at = st.task = None
        st.detail = f"runs again: {why}"
        self._event(
            EventType.STEP_RESET,
            actor,
            st.step_id,
            attempt=st.attempt,
            previous_status=previous.value,
            error=st.error.model_dump(mode="json") if st.error else None,
        )

    # -- human tasks ---------------------------------------------------------------------

    def _complete_task(self, cmd: CompleteTask) -> None:
        st, task = self._decidable(cmd.actor, cmd.task_id)
        self._check_edits(task, cmd.result)
        self._record_decision(st, task, cmd)

    def _decidable(self, actor: Actor, task_id: str) -> tuple[StepState, Task]:
        """The open task ``actor`` may decide now; every refusal says why not."""
        st = self.run.steps.get(task_id)
        if st is None or st.type is not StepType.HUMAN_TASK:
            raise no_such_task(self.run, task_id)
        task = st.task
        if task is not None and (decided := already_decided(task)) is not None:
            raise decided
        if task is None or st.status is not StepStatus.WAITING:
            state = st.status.value if task is None else f"{st.status.value} ({st.detail or 'closed'})"
            raise CommandRefused(f"Task {task_id!r} of run {self.run.short_id} is not open: it is {state}.")
        if not allowed(actor, task.approvers):
            raise NotAllowed(
                f"{actor.display} may not decide task {task_id!r};"
                f" its approvers are {', '.join(task.approvers)}."
            )
        if actor.same_as(self.run.started_by) and not self.workflow.settings.allow_self_approval:
            raise NotAllowed(
                f"{actor.display} started run {self.run.short_id} and so may not decide its"
                " tasks; someone else must."
            )
        if (said := task.decision_of(actor)) is not None:
            raise CommandRefused(already_said(task, said))
        return st, task

    def _request_changes(self, cmd: RequestChanges) -> None:
        """Close the task with a change request: rerun its upstream step and reopen it, or end it.

        With ``{rerun: step}`` the named step, the steps between it and the task, and the task
        run again (the comment is in ``steps.<task>.changes``); past ``max_rounds`` requests, or
        with ``end``, the task ends as a rejection does and its branch stops.
        """
        st, task = self._decidable(cmd.actor, cmd.task_id)
        spec = self.workflow.step(st.step_id).task
        policy = spec.on_changes_requested if spec else None
        if policy is None:
            raise CommandRefused(
                f"Task {cmd.task_id!r} of run {self.run.short_id} takes no change requests: its"
                " workflow does not say what one would do (on_changes_requested)."
                " You can approve or reject it."
            )
        comment = cmd.comment.strip()
        if not comment:
            raise InvalidInput(
                "A change request needs a comment saying what to change.",
                {"comment": "required when requesting changes"},
            )
        task.decisions.append(
            Decision(by=cmd.actor, at=self.now, approved=False, comment=comment, changes_requested=True)
        )
        task.changes_requested = True
        if policy == "end" or len(st.changes) >= policy.max_rounds:
            self._decide(st, task, cmd.actor, False, {}, comment)
            return
        task.decided_by, task.decided_at, task.approved, task.comment = cmd.actor, self.now, False, comment
        st.changes.append(
            ChangeRequest(round=task.round, by=cmd.actor, at=self.now, comment=comment, task=task)
        )
        self._event(
            EventType.TASK_CHANGES_REQUESTED,
            cmd.actor,
            st.step_id,
            comment=comment,
            round=task.round,
            max_rounds=policy.max_rounds,
            rerun=policy.rerun,
        )
        again = ({policy.rerun} | self.workflow.downstream_of(policy.rerun)) & (
            self.workflow.upstream_of(st.step_id) | {st.step_id}
        )
        why = f"{cmd.actor.display} requested changes on task {st.step_id!r}"
        for step in self.workflow.steps:
            if step.id in again:
                self._reset(self.run.steps[step.id], cmd.actor, why)
        self._advance()

    def _answer(self, cmd: AnswerQuestion) -> None:
        st = self.run.steps.get(cmd.step_id)
        question = st.question if st is not None else None
        if st is None or question is None:
            raise NotFound(f"Run {self.run.short_id} has no question {cmd.step_id!r}.")
        if question.answered_at is not None and question.answered_by is not None:
            raise CommandRefused(
                f"Question {cmd.step_id!r} was already answered by {question.answered_by.display}"
                f" at {utc_text(question.answered_at)}."
            )
        if st.status is not StepStatus.WAITING:
            raise CommandRefused(f"Question {cmd.step_id!r} of run {self.run.short_id} is {st.status.value}.")
        if not allowed(cmd.actor, question.answerers):
            raise NotAllowed(
                f"{cmd.actor.display} may not answer question {cmd.step_id!r};"
                f" it is for {', '.join(question.answerers)}."
            )
        answer = cmd.answer.strip()
        if not answer:
            raise InvalidInput("An answer cannot be empty.", {"answer": "required"})
        question.answer, question.answered_by, question.answered_at = answer, cmd.actor, self.now
        st.detail = f"answered by {cmd.actor.display}"
        self._event(EventType.QUESTION_ANSWERED, cmd.actor, st.step_id, answer=answer)
        self._succeed(st, {"answer": answer, "answered_by": cmd.actor.ref})

    def _record_decision(self, st: StepState, task: Task, cmd: CompleteTask) -> None:
        """Record one say; it decides the task once the quorum approved or enough rejected.

        A plain task (one approval, one rejection ends it) is decided by its first say.
        The approved result merges every approver's edits, in the order they came.
        """
        task.decisions.append(
            Decision(by=cmd.actor, at=self.now, approved=cmd.approved, comment=cmd.comment, result=cmd.result)
        )
        if cmd.approved and len(task.approvals) >= task.min_approvals:
            edits: dict[str, Any] = {}
            for decision in task.approvals:
                edits.update(decision.result)
            self._decide(st, task, cmd.actor, True, edits, cmd.comment)
        # No max_rejections: rejections are recorded, and only expiry ends the task.
        elif not cmd.approved and len(task.rejections) >= (task.max_rejections or len(task.decisions) + 1):
            self._decide(st, task, cmd.actor, False, cmd.result, cmd.comment)
        else:
            st.detail = describe_task(task).tally
            self._event(
                EventType.TASK_APPROVAL_RECORDED,
                cmd.actor,
                st.step_id,
                approved=cmd.approved,
                approvals=len(task.approvals),
                rejections=len(task.rejections),
                min_approvals=task.min_approvals,
                result=cmd.result,
                comment=cmd.comment,
            )

    def _check_edits(self, task: Task, edits: dict[str, Any]) -> None:
        """Only a task's ``editable`` fields may be edited, for approval and edit tasks alike.

        The edits are merged into the step's result, which downstream steps read: any
        other key would let whoever decides overwrite what the workflow computed.
        A value keeps the type of the field's current value (:mod:`engine.fields`): later
        steps read it as the workflow wrote it.
        """
        refused = sorted(set(edits) - set(task.editable))
        if refused:
            editable = ", ".join(task.editable)
            can = f"its editable fields are {editable}" if editable else "it has no editable fields"
            raise InvalidInput(
                f"Task {task.task_id!r} of run {self.run.short_id} does not let you edit"
                f" {', '.join(refused)}: {can}.",
                {f"result.{name}": f"not an editable field of task {task.task_id!r}" for name in refused},
            )
        misfits = {
            name: why for name, value in edits.items() if (why := misfit(name, task.fields.get(name), value))
        }
        if misfits:
            raise InvalidInput(
                f"Task {task.task_id!r} of run {self.run.short_id} keeps the type of each field:"
                f" {'; '.join(misfits.values())}.",
                {f"result.{name}": why for name, why in misfits.items()},
            )

    def _decide(
        self,
        st: StepState,
        task: Task,
        actor: Actor,
        approved: bool,
        edits: dict[str, Any],
        comment: str | None,
        expired: bool = False,
    ) -> None:
        task.decided_by = actor
        task.decided_at = self.now
        task.approved = approved
        task.expired = expired
        task.comment = comment
        editable_values = {name: task.fields.get(name) for name in task.editable}
        st.result = {**editable_values, **edits, "approved": approved}
        if task.changes_requested:
            st.result |= {"changes_requested": True, "comment": comment}
        if task.min_approvals > 1 or len(task.decisions) > 1:
            st.result["decisions"] = [d.model_dump(mode="json", exclude={"result"}) for d in task.decisions]
        if expired:
            st.result["expired"] = True
        outcome = "approved" if approved else "rejected"
        st.detail = f"{'expired, ' if expired else ''}{outcome} by {actor.display}"
        if task.changes_requested:
            st.detail = f"changes requested by {actor.display}"
            if st.changes:
                st.detail = f"rejected: {st.detail} after {len(st.changes)} rounds of changes"
        self._event(
            EventType.TASK_EXPIRED if expired else EventType.TASK_COMPLETED,
            actor,
            st.step_id,
            approved=approved,
            result=edits,
            comment=comment,
        )
        self._succeed(st, st.result)

    # -- worker reports ------------------------------------------------------------------

    def _current(self, step_id: str, attempt: int) -> StepState:
        st = self.run.steps.get(step_id)
        if st is None:
            raise NotFound(f"Run {self.run.short_id} has no step {step_id!r}.")
        if st.attempt != attempt:
            raise CommandRefused(
                f"Step {step_id!r} of run {self.run.short_id} is on attempt {st.attempt}, not {attempt}."
            )
        return st

    def _step_started(self, cmd: StepStarted) -> None:
        st = self._current(cmd.step_id, cmd.attempt)
        if st.status is not StepStatus.QUEUED or st.dispatch != cmd.dispatch:
            raise CommandRefused(
                f"Step {cmd.step_id!r} of run {self.run.short_id} is {st.status.value};"
                " this job is stale and will not run."
            )
        if self.run.status is RunStatus.PAUSED:
            # Queued steps do not start while paused; resume dispatches them again.
            st.status = StepStatus.PENDING
            st.detail = "held: the run is paused"
            self._event(EventType.STEP_HELD, step_id=st.step_id, attempt=st.attempt)
            self.out.proceed = False
            self.out.message = (
                f"Run {self.run.short_id} is paused; step {cmd.step_id!r} will start on resume."
            )
            return
        st.status = StepStatus.RUNNING
        st.worker = cmd.worker
        st.started_at = self.now
        st.detail = None
        self._event(EventType.STEP_STARTED, step_id=st.step_id, attempt=st.attempt, worker=cmd.worker)
        timeout = self.workflow.step(st.step_id).timeout
        if timeout:
            # A backstop: the worker enforces the timeout itself, this catches a silent worker.
            self._timer(timeout + STEP_TIMEOUT_GRACE, "step_timeout", st.step_id, st.attempt)

    def _step_finished(self, cmd: StepFinished) -> None:
        st = self._current(cmd.step_id, cmd.attempt)
        if st.status not in (StepStatus.RUNNING, StepStatus.QUEUED):
            # A late report for a step already cancelled or timed out: keep it in the audit trail.
            self._event(
                EventType.STEP_RESULT_IGNORED,
                step_id=st.step_id,
                attempt=cmd.attempt,
                status=st.status.value,
                error=cmd.error.model_dump(mode="json") if cmd.error else None,
            )
            return
        if cmd.error is None:
            self._succeed(st, cmd.result)
        else:
            self._step_error(st, cmd.error, from_step=True)

    def _step_lost(self, cmd: StepLost) -> None:
        st = self._current(cmd.step_id, cmd.attempt)
        if st.status is not StepStatus.RUNNING or st.worker != cmd.worker:
            return
        error = StepError(
            code=FailureCode.WORKER_LOST,
            message=f"Worker {cmd.worker} died while running the step.",
            retryable=True,
        )
        self._step_error(st, error, from_step=False)

    def _step_error(self, st: StepState, error: StepError, from_step: bool) -> None:
        """A step attempt failed: retry it if its policy allows, else fail the run (fail-fast).

        Errors the step reported itself are retried when retryable; a lost worker or a
        timeout may have left side effects, so those retry only for idempotent steps.
        """
        policy = self.workflow.step(st.step_id).retry
        may_retry = error.retryable and (from_step or policy.idempotent)
        if self.run.status is RunStatus.DRAINING:
            may_retry = False  # nothing new starts while draining
        if may_retry and st.attempt < policy.max_attempts:
            delay = policy.delay_before(st.attempt + 1)
            if st.job_id and not from_step:
                self.out.kill_jobs.append(st.job_id)
            st.status = StepStatus.PENDING
            st.error = error
            st.attempt += 1
            st.retry_at = self._timer(delay, "retry", st.step_id, st.attempt)
            st.detail = f"retrying in {delay:g}s (attempt {st.attempt} of {policy.max_attempts})"
            self._event(
                EventType.STEP_RETRY_SCHEDULED,
                step_id=st.step_id,
                attempt=st.attempt,
                retry_at=st.retry_at.isoformat(),
                error=error.model_dump(mode="json"),
            )
            return
        self._fail(st, error)

    def _event_delivered(self, cmd: EventDelivered) -> None:
        st = self.run.steps.get(cmd.step_id)
        if st is None or st.status is not StepStatus.WAITING or st.wait_event is None:
            raise CommandRefused(f"Step {cmd.step_id!r} of run {self.run.short_id} is not waiting.")
        self.out.wait_off(st.wait_event, st.step_id)
        self._event(EventType.EVENT_RECEIVED, cmd.actor, st.step_id, wait_event=st.wait_event)
        st.wait_event = None
        self._succeed(st, cmd.payload)

    def _timer_fired(self, cmd: TimerFired) -> None:
        run = self.run
        if run.status.terminal:
            return
        if cmd.kind == "drain_timeout":
            if run.status is RunStatus.DRAINING:
                self._escalate_drain()
            return
        if cmd.kind == "run_timeout":
            self._timeout_run()
            return
        st = run.steps.get(cmd.step_id)
        if st is None:
            return
        if cmd.kind == "retry" and st.status is StepStatus.PENDING and st.attempt == cmd.token:
            st.retry_at = None
            self._advance()
        elif cmd.kind == "sleep" and st.status is StepStatus.WAITING and st.attempt == cmd.token:
            self._succeed(st, {"slept_until": self.now.isoformat()})
        elif cmd.kind == "step_timeout" and st.status is StepStatus.RUNNING and st.attempt == cmd.token:
            timeout = self.workflow.step(st.step_id).timeout or 0
            if st.job_id:
                self.out.kill_jobs.append(st.job_id)
            error = StepError(
                code=FailureCode.STEP_TIMED_OUT,
                message=f"The step did not finish within its {timeout:g}s timeout.",
                retryable=True,
            )
            self._step_error(st, error, from_step=False)
        elif cmd.kind == "wait_timeout" and st.status is StepStatus.WAITING and st.attempt == cmd.token:
            if st.wait_event:
                self.out.wait_off(st.wait_event, st.step_id)
            error = StepError(
                code=FailureCode.RUN_STALLED_OR_TIMED_OUT,
                message=f"No {st.wait_event or 'event'} arrived before the step's timeout.",
            )
            st.wait_event = None
            self._fail(st, error)
        elif cmd.kind == "task_reminder" and st.status is StepStatus.WAITING and st.task is not None:
            if st.task.decided_at is None and cmd.token // REMINDERS_PER_ATTEMPT == st.attempt:
                to = st.task.undecided()
                expires_at = st.task.expires_at.isoformat() if st.task.expires_at else None
                self._event(EventType.TASK_REMINDED, step_id=st.step_id, to=to, expires_at=expires_at)
        elif cmd.kind == "task_expiry" and st.status is StepStatus.WAITING and st.question is not None:
            if st.attempt != cmd.token:
                return
            ask = self.workflow.step(st.step_id).ask
            self._event(EventType.TASK_EXPIRED, step_id=st.step_id, question=True)
            if ask is not None and ask.on_expire == "empty":
                st.detail = "nobody answered in time"
                self._succeed(st, {"answer": None, "answered_by": None, "expired": True})
            else:
                error = StepError(
                    code=FailureCode.APPROVAL_EXPIRED,
                    message=f"Nobody answered question {st.step_id!r} before it expired.",
                )
                self._fail(st, error)
        elif cmd.kind in ("task_expiry", "task_escalation") and st.status is StepStatus.WAITING and st.task:
            if st.task.decided_at is not None or st.attempt != cmd.token:
                return
            spec = self.workflow.step(st.step_id).task
            if spec is not None and spec.on_expire == "escalate" and cmd.kind == "task_expiry":
                self._escalate(st, st.task, spec)
            elif spec is not None and spec.on_expire == "fail":
                st.task.expired = True
                error = StepError(
                    code=FailureCode.APPROVAL_EXPIRED,
                    message=f"Nobody decided task {st.step_id!r} before it expired.",
                )
                self._event(EventType.TASK_EXPIRED, step_id=st.step_id, approved=None)
                self._fail(st, error)
            else:
                self._decide(st, st.task, Actor.system("expiry"), False, {}, None, expired=True)

    def _remind(self, st: StepState, shares: list[float], seconds: float, first: int) -> None:
        """Reminders at shares of ``seconds``; numbered from ``first`` so each has its own timer."""
        for number, share in enumerate(shares, first):
            token = st.attempt * REMINDERS_PER_ATTEMPT + number
            self._timer(seconds * share, "task_reminder", st.step_id, token)

    def _escalate(self, st: StepState, task: Task, spec: TaskSpec) -> None:
        """Nobody decided in time: the task passes to ``escalate_to`` with a deadline of its own."""
        seconds = spec.escalate_expires_in or spec.expires_in or 0
        task.approvers = list(spec.escalate_to or [])
        task.escalated = True
        task.expires_at = self._timer(seconds, "task_escalation", st.step_id, st.attempt)
        self._remind(st, spec.remind_at, seconds, first=5)
        st.detail = f"escalated to {', '.join(task.approvers)}"
        self._event(
            EventType.TASK_ESCALATED,
            step_id=st.step_id,
            to=task.approvers,
            expires_at=task.expires_at.isoformat(),
        )

    def _escalate_drain(self) -> None:
        failure = Failure(
            code=FailureCode.DRAIN_TIMEOUT,
            message="The graceful stop did not finish within the drain timeout;"
            " in-flight steps were stopped.",
        )
        self._end(RunStatus.STOPPED, failure, Actor.system("drain-timeout"), cancel_error=failure)

    def _timeout_run(self) -> None:
        timeout = self.workflow.settings.timeout or 0
        failure = Failure(
            code=FailureCode.RUN_STALLED_OR_TIMED_OUT,
            message=f"The run did not finish within its {timeout:g}s timeout.",
        )
        self._end(RunStatus.FAILED, failure, Actor.system("run-timeout"), cancel_error=failure)

    # -- step transitions ----------------------------------------------------------------

    def _succeed(self, st: StepState, result: Any) -> None:
        st.status = StepStatus.SUCCEEDED
        st.result = result
        st.finished_at = self.now
        st.error = None
        st.retry_at = None
        self._event(EventType.STEP_COMPLETED, step_id=st.step_id, attempt=st.attempt, skipped=False)
        if self.run.status is RunStatus.DRAINING:
            self._finish_drain_if_idle()
        else:
            self._advance(after=st.step_id)

    def _fail(self, st: StepState, error: StepError) -> None:
        """Fail-fast: the step fails, and with it the run."""
        st.status = StepStatus.FAILED
        st.error = error
        st.finished_at = self.now
        st.retry_at = None
        self._event(
            EventType.STEP_FAILED,
            step_id=st.step_id,
            attempt=st.attempt,
            error=error.model_dump(mode="json"),
        )
        failure = Failure(**error.model_dump(), step_id=st.step_id)
        cancel = StepError(code=error.code, message=f"Cancelled because step {st.step_id!r} failed.")
        self._end(RunStatus.FAILED, failure, Actor.system(), cancel_error=cancel, blocked_by=st.step_id)

    def _cancel(self, st: StepState, error: StepError, actor: Actor) -> None:
        if st.status is StepStatus.RUNNING and st.job_id:
            self.out.kill_jobs.append(st.job_id)
            self.out.cancel_jobs.append(st.job_id)  # in case RQ put it back on the queue
        if st.wait_event:
            self.out.wait_off(st.wait_event, st.step_id)
            st.wait_event = None
        st.status = StepStatus.CANCELLED
        st.error = error
        st.detail = error.message
        st.finished_at = self.now
        self._event(
            EventType.STEP_CANCELLED,
            actor,
            st.step_id,
            attempt=st.attempt,
            error=error.model_dump(mode="json"),
        )

    def _skip(self, st: StepState, reason: SkipReason, detail: str, actor: Actor | None = None) -> None:
        st.status = StepStatus.SKIPPED
        st.reason = reason
        st.detail = detail
        st.finished_at = self.now
        st.retry_at = None
        self._event(
            EventType.STEP_COMPLETED, actor, st.step_id, skipped=True, reason=reason.value, detail=detail
        )

    def _undispatch(self, st: StepState) -> None:
        enqueued = [job for job in self.out.enqueue if job.job_id != st.job_id]
        if len(enqueued) < len(self.out.enqueue):
            # Queued by this same command (the run ended later in it): never handed to RQ.
            self.out.enqueue = enqueued
        elif st.job_id:
            self.out.cancel_jobs.append(st.job_id)
        st.status = StepStatus.PENDING
        st.job_id = None

    def _end(
        self,
        status: RunStatus,
        failure: Failure | None,
        actor: Actor,
        cancel_error: StepError,
        blocked_by: str | None = None,
    ) -> None:
        """Finish the run: in-flight steps are cancelled, steps that never started skipped."""
        for st in self.run.steps.values():
            if st.status in (StepStatus.RUNNING, StepStatus.WAITING):
                self._cancel(st, StepError(code=cancel_error.code, message=cancel_error.message), actor)
            elif st.status in (StepStatus.QUEUED, StepStatus.PENDING):
                if st.status is StepStatus.QUEUED:
                    self._undispatch(st)
                if blocked_by:
                    self._skip(st, SkipReason.BLOCKED, f"blocked: step {blocked_by!r} failed", actor)
                else:
                    self._skip(st, SkipReason.STOPPED, f"never started: {cancel_error.message}", actor)
        self.run.status = status
        self.run.failure = failure
        self.run.finished_at = self.now
        data: dict[str, Any] = {}
        if failure is not None:
            data["failure"] = failure.model_dump(mode="json")
        self._event(EventType.run_ended(status), actor, **data)

    # -- scheduling ----------------------------------------------------------------------

    def _advance(self, after: str | None = None) -> None:
        """Start every step whose needs are met, until nothing more can start.

        ``after``: the step that just succeeded. Every other step whose needs were met has
        started already, so the first pass looks at the steps that need it, not at every
        step of the run (a step's cost stays flat however long the run). A pass in which a
        step finished at once (skipped) is followed by a pass over every step.
        """
        if self.run.status is not RunStatus.RUNNING:
            return
        steps = self.run.steps
        candidates = self.workflow.steps if after is None else self.workflow.needed_by(after)
        while candidates and self.run.status is RunStatus.RUNNING:
            # Statuses first: a step is read (parsed) only when it may start now, and those
            # are read in one round trip. Statuses are looked at live: a step that finishes at
            # once counts for the steps after it, and a step started meanwhile (a step that
            # finished at once advanced the run itself, recursively) is not started again.
            ready = [s for s in candidates if self._may_start(s)]
            steps.prefetch([s.id for s in ready] + [need for s in ready for need in s.needs])
            finished_in_pass = False
            for step in candidates:
                if self.run.status is not RunStatus.RUNNING:
                    break
                if not self._may_start(step):
                    continue
                st = steps[step.id]
                if st.retry_at is not None and st.retry_at > self.now:
                    continue
                if self._try_start(step, st) and st.status in FINISHED_STEP_STATUSES:
                    finished_in_pass = True
            candidates = self.workflow.steps if finished_in_pass else []
        if self.run.status is RunStatus.RUNNING and steps.all_finished():
            self.run.status = RunStatus.COMPLETED
            self.run.finished_at = self.now
            self._event(EventType.RUN_COMPLETED)

    def _may_start(self, step: Step) -> bool:
        """Pending with every need finished, by the statuses alone (no step is read)."""
        status_of = self.run.steps.status
        return status_of(step.id) is StepStatus.PENDING and FINISHED_STEP_STATUSES.issuperset(
            map(status_of, step.needs)
        )

    def _try_start(self, step: Step, st: StepState) -> bool:
        needs = [self.run.steps[n] for n in step.needs]
        if any(not n.status.finished for n in needs):
            return False
        blocker = self._blocker(step, needs)
        if blocker:
            self._skip(st, SkipReason.BLOCKED, blocker)
            return True
        if st.attempt == 0 or st.rerun:  # never opened, or reset by a recovery
            context = self._context()
            st.rerun, st.detail, opened = False, None, False  # a reset step's "runs again" is over
            try:
                if step.when is not None and not truthy(step.when, context, f"{step.id}.if"):
                    self._skip(st, SkipReason.CONDITION, f"condition is false: {step.when}")
                    return True
                st.attempt += 1
                opened = True
                self._open(step, st, context)
            except RenderError as exc:
                st.attempt += 0 if opened else 1
                self._fail(st, StepError(code=FailureCode.TEMPLATE_ERROR, message=str(exc)))
            return True
        self._dispatch(st)  # a retry, or a step held while paused
        return True

    def _blocker(self, step: Step, needs: list[StepState]) -> str | None:
        for need in needs:
            if need.status is not StepStatus.SUCCEEDED:
                return f"blocked: step {need.step_id!r} was {need.status.value}"
            rejected = need.task is not None and need.task.approved is False
            # A rejected approval ends its branch, unless the step decides for itself with `if`.
            if rejected and step.when is None:
                return f"blocked: approval {need.step_id!r} was {need.detail}"
        return None

    def _open(self, step: Step, st: StepState, context: dict[str, Any]) -> None:
        """Start a step whose needs are met, according to its type."""
        match step.type:
            case StepType.ACTION:
                st.args = render(step.args, context, f"{step.id}.args")
                self._dispatch(st)
            case StepType.HTTP:
                assert step.http is not None
                st.args = render(step.http.model_dump(by_alias=True), context, f"{step.id}.http")
                self._dispatch(st)
            case StepType.HUMAN_TASK:
                self._open_task(step, st, context)
            case StepType.SLEEP:
                assert step.duration is not None
                st.status = StepStatus.WAITING
                st.started_at = self.now
                due = self._timer(step.duration, "sleep", st.step_id, st.attempt)
                st.detail = f"sleeping until {due.isoformat()}"
                self._event(
                    EventType.STEP_STARTED, step_id=st.step_id, attempt=st.attempt, until=due.isoformat()
                )
            case StepType.WAIT_EVENT:
                assert step.event is not None
                key = render(step.event.key, context, f"{step.id}.event.key")
                st.wait_event = f"{step.event.name}|{key}"
                st.status = StepStatus.WAITING
                st.started_at = self.now
                st.detail = f"waiting for event {step.event.name!r} with key {key!r}"
                self.out.wait_on(st.wait_event, st.step_id)
                if step.event.timeout:
                    self._timer(step.event.timeout, "wait_timeout", st.step_id, st.attempt)
                self._event(
                    EventType.STEP_STARTED, step_id=st.step_id, attempt=st.attempt, wait_event=st.wait_event
                )
            case StepType.ASK:
                assert step.ask is not None
                self._ask(step, st, context)
            case StepType.NOTIFY:
                assert step.notify is not None
                text = render(step.notify.text, context, f"{step.id}.notify.text")
                channel = step.notify.channel or self.workflow.settings.slack_channel
                st.started_at = self.now
                self._event(EventType.NOTIFICATION, step_id=st.step_id, channel=channel, text=str(text))
                self._succeed(st, {"channel": channel, "text": str(text)})

    def _open_task(self, step: Step, st: StepState, context: dict[str, Any]) -> None:
        spec = step.task
        assert spec is not None
        where = f"{step.id}.task"
        expires_at = self.now + timedelta(seconds=spec.expires_in) if spec.expires_in else None
        st.task = Task(
            task_id=step.id,
            task_type=spec.task_type,
            title=str(render(spec.title, context, f"{where}.title")),
            description=str(render(spec.description, context, f"{where}.description")),
            fields=render(spec.fields, context, f"{where}.fields"),
            editable=spec.editable,
            approvers=spec.approvers if spec.approvers is not None else self.workflow.settings.approvers,
            opened_at=self.now,
            expires_at=expires_at,
            min_approvals=spec.min_approvals,
            max_rejections=spec.rejections_to_end,
            changes_allowed=spec.on_changes_requested is not None,
            round=len(st.changes) + 1,
            max_rounds=getattr(spec.on_changes_requested, "max_rounds", None),
        )
        st.status = StepStatus.WAITING
        st.started_at = self.now
        st.detail = "awaiting approval" if spec.task_type == "approval" else "awaiting edits"
        if spec.expires_in:
            self._timer(spec.expires_in, "task_expiry", st.step_id, st.attempt)
            self._remind(st, spec.remind_at, spec.expires_in, first=1)
        self._event(
            EventType.TASK_OPENED,
            step_id=st.step_id,
            task_type=spec.task_type,
            title=st.task.title,
            expires_at=expires_at.isoformat() if expires_at else None,
        )

    def _ask(self, step: Step, st: StepState, context: dict[str, Any]) -> None:
        spec = step.ask
        assert spec is not None
        text = str(render(spec.question, context, f"{step.id}.ask.question"))
        answerers = spec.answerers
        if answerers is None:
            answerers = [spec.to] if spec.to.startswith("slack:") else self.workflow.settings.approvers
        expires_at = None
        if spec.expires_in:
            expires_at = self._timer(spec.expires_in, "task_expiry", st.step_id, st.attempt)
        st.question = Question(
            text=text, to=spec.to, answerers=answerers, asked_at=self.now, expires_at=expires_at
        )
        st.status = StepStatus.WAITING
        st.started_at = self.now
        st.detail = f"waiting for an answer from {spec.to}"
        self._event(
            EventType.QUESTION_ASKED,
            step_id=st.step_id,
            text=text,
            to=spec.to,
            expires_at=expires_at.isoformat() if expires_at else None,
        )

    def _dispatch(self, st: StepState) -> None:
        st.dispatch += 1
        st.status = StepStatus.QUEUED
        st.job_id = job_id_for(self.run.run_id, st)
        st.queued_at = self.now
        st.worker = None
        timeout = self.workflow.step(st.step_id).timeout
        self.out.enqueue.append(StepJob(st.step_id, st.job_id, st.attempt, st.dispatch, timeout))
        self._event(EventType.STEP_QUEUED, step_id=st.step_id, attempt=st.attempt, job_id=st.job_id)


STEP_TIMEOUT_GRACE = 10.0
RECOVERABLE_STATUSES = frozenset({RunStatus.FAILED, RunStatus.STOPPED})
# Steps a worker executes: what they did outside Switchboard may happen again when they re-run.
WORKER_STEP_TYPES = frozenset({StepType.ACTION, StepType.HTTP})


def template_context(run: Run) -> dict[str, Any]:
    """What templates see: ``inputs``, ``steps.<id>.result|status``, ``run``."""
    return {
        "inputs": run.inputs,
        "steps": StepsContext(run.steps),
        "run": {
            "id": run.run_id,
            "workflow": run.workflow_id,
            "started_by": run.started_by.ref,
        },
    }


class StepsContext(Mapping[str, dict[str, Any]]):
    """``steps`` as templates see it: a step's entry is made when a template reads it, so
    opening a step of a long run does not read every step before it."""

    def __init__(self, steps: Steps) -> None:
        self._steps = steps

    def __getitem__(self, step_id: str) -> dict[str, Any]:
        st = self._steps[step_id]
        return {
            "result": st.result,
            "status": st.status.value,
            "attempt": st.attempt,
            # The last change request on a human task: {comment, by, at, round}, else None.
            "changes": _change_context(st.changes[-1]) if st.changes else None,
        }

    def __iter__(self) -> Iterator[str]:
        return iter(self._steps)

    def __len__(self) -> int:
        return len(self._steps)


def _change_context(change: ChangeRequest) -> dict[str, Any]:
    at = change.at.isoformat()
    return {"comment": change.comment, "by": change.by.ref, "at": at, "round": change.round}
