"""A run described once, as plain data every edge renders in its own medium.

The CLI prints a :class:`RunView` as text, Slack as mrkdwn (``/run status``, the Details
modal, cards and alerts), the web console as HTML: each decides how things look, none
decides what a run's state means. So what is derived from a run lives here and only
here: its progress, the steps in flight, durations, what a failure code means, why a
step was skipped, how a human task ended, what can be done with the run next. Like
RQ's ``job.description``, which every reporter shows, nothing here carries markup.

The sentences the engine says about runs and tasks (who already decided a task, what
a run in each status can still take) are here too, so an edge that checks before
asking the engine says exactly what the engine would.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Self

from engine.errors import AlreadyDecided, NotFound
from engine.model import (
    FAILURE_MEANINGS,
    IN_FLIGHT_STEP_STATUSES,
    Actor,
    Decision,
    FailureCode,
    Run,
    RunStatus,
    SkipReason,
    StepError,
    StepState,
    StepStatus,
    StopMode,
    Task,
)
from engine.workflow import Step, StepType, Workflow

# What a person can still do with a run in each status: the end of every refusal's sentence.
RUN_ACTIONS: dict[RunStatus, str] = {
    RunStatus.QUEUED: "stop it",
    RunStatus.RUNNING: "pause it or stop it (immediately or gracefully)",
    RunStatus.PAUSED: "resume it or stop it",
    RunStatus.DRAINING: "wait for it to drain or stop it immediately",
    RunStatus.COMPLETED: "replay it",
    RunStatus.FAILED: "replay it, or recover it (the same run continues from its failed step)",
    RunStatus.STOPPED: "replay it, or recover it (the same run continues where it stopped)",
}


# The mark every medium shows beside a status (Slack's cards and timeline, the console's badges),
# so a run looks the same wherever it is read. A step status without one shows HOURGLASS.
RUN_MARKS: dict[RunStatus, str] = {
    RunStatus.QUEUED: "⏳",
    RunStatus.RUNNING: "▶️",
    RunStatus.PAUSED: "⏸️",
    RunStatus.DRAINING: "🛑",
    RunStatus.COMPLETED: "✅",
    RunStatus.FAILED: "🔴",
    RunStatus.STOPPED: "⏹️",
}
STEP_MARKS: dict[StepStatus, str] = {
    StepStatus.SUCCEEDED: "✅",
    StepStatus.FAILED: "🔴",
    StepStatus.CANCELLED: "⚪",
    StepStatus.SKIPPED: "⏭️",
}
HOURGLASS = "⏳"

# A step that ended in one of these shows its error (code and message) rather than its detail.
ERROR_STATUSES = frozenset({StepStatus.FAILED, StepStatus.CANCELLED})

# Why a step was skipped, in words: what a reason code means to someone reading the timeline.
SKIP_MEANINGS: dict[SkipReason, str] = {
    SkipReason.BLOCKED: "an upstream step failed or was skipped, or its approval was rejected",
    SkipReason.CONDITION: "its condition was false",
    SkipReason.STOPPED: "the run was stopped before it could start",
}


class RunOutcome(StrEnum):
    """How a finished run ended, in words a person reads beside its status.

    A run whose approval was rejected ends ``completed`` (the rejection ended its branch, as
    designed), but it did not do what it was started for: its outcome is ``rejected``, so
    nobody reads a refused deploy as a deployed one.
    """

    SUCCEEDED = "succeeded"
    REJECTED = "rejected"  # completed, but a human task said no (or expired with on_expire: reject)
    FAILED = "failed"
    STOPPED = "stopped"


class TaskOutcome(StrEnum):
    """How a human task ended, or that it has not."""

    OPEN = "open"  # waiting for a decision
    APPROVED = "approved"
    REJECTED = "rejected"
    CHANGES_REQUESTED = "changes_requested"  # closed by a change request (reopened for a new round, or ended)
    REJECTED_ON_EXPIRY = "rejected_on_expiry"  # nobody decided in time; ``on_expire: reject``
    EXPIRED = "expired"  # nobody decided in time and the run failed (``on_expire: fail``)
    CANCELLED = "cancelled"  # the run ended before anyone decided


# The mark of each way a human task ends, as the Slack task card shows it.
TASK_MARKS: dict[TaskOutcome, str] = {
    TaskOutcome.APPROVED: "✅",
    TaskOutcome.REJECTED: "❌",
    TaskOutcome.REJECTED_ON_EXPIRY: "⌛",
    TaskOutcome.EXPIRED: "⌛",
    TaskOutcome.CHANGES_REQUESTED: "🔁",
    TaskOutcome.CANCELLED: "⚪",
}


@dataclass(frozen=True)
class ErrorView:
    """A failure code with its meaning, the message, and whether trying again may help."""

    code: FailureCode
    message: str
    meaning: str
    retryable: bool
    provider_status: int | None = None

    @classmethod
    def of(cls, error: StepError) -> Self:
        return cls(
            code=error.code,
            message=error.message,
            meaning=FAILURE_MEANINGS.get(error.code, ""),
            retryable=error.retryable,
            provider_status=error.provider_status,
        )


@dataclass(frozen=True)
class FailureView(ErrorView):
    """Why a run ended other than by completing; ``step_id`` is None when the run itself did."""

    step_id: str | None = None


@dataclass(frozen=True)
class TaskView:
    task_id: str
    task_type: str  # approval or edit
    title: str
    description: str
    fields: dict[str, Any]
    editable: tuple[str, ...]
    approvers: tuple[str, ...]
    opened_at: datetime
    expires_at: datetime | None
    outcome: TaskOutcome
    decided_by: Actor | None
    decided_at: datetime | None
    comment: str | None
    cancelled_because: str | None  # for a cancelled task: why the run ended
    min_approvals: int = 1
    approvals: tuple[Decision, ...] = ()  # who approved so far (all of them, once decided)
    rejections: tuple[Decision, ...] = ()  # change requests included
    changes_allowed: bool = False  # a "request changes" decision is offered
    round: int = 1
    max_rounds: int | None = None

    @property
    def mark(self) -> str:
        """The mark of how the task ended (the Slack task card's), the hourglass while open."""
        return TASK_MARKS.get(self.outcome, HOURGLASS)

    @property
    def quorum(self) -> bool:
        """Whether several approvers must approve (the card then shows who has so far)."""
        return self.min_approvals > 1

    @property
    def tally(self) -> str:
        """``approved by 1 of 2 needed (bob); rejected by carol``: a quorum task's progress."""
        names = ", ".join(d.by.display for d in self.approvals)
        text = f"approved by {len(self.approvals)} of {self.min_approvals} needed"
        if names:
            text += f" ({names})"
        if self.rejections:
            text += f"; rejected by {', '.join(d.by.display for d in self.rejections)}"
        return text

    @property
    def open(self) -> bool:
        return self.outcome is TaskOutcome.OPEN

    @property
    def decider(self) -> str:
        """Who decided, as sentences name them; a task nobody decided was decided by the system."""
        return self.decided_by.display if self.decided_by else "the system"

    @property
    def verdict(self) -> str:
        """How the task ended, in words: its decision (:attr:`decision`), or that it expired or
        was cancelled, and why; "" while open."""
        match self.outcome:
            case TaskOutcome.OPEN:
                return ""
            case TaskOutcome.EXPIRED:
                return "expired: nobody decided in time"
            case TaskOutcome.CANCELLED:
                return f"cancelled: {self.cancelled_because or 'the run ended'}"
        return self.decision

    @property
    def decision(self) -> str:
        """``approved by bob at 2026-11-23 09:00:00 UTC``: who decided and when (decided tasks)."""
        verdict = {TaskOutcome.APPROVED: "approved", TaskOutcome.CHANGES_REQUESTED: "sent back for changes"}
        return f"{verdict.get(self.outcome, 'rejected')} by {self.decider} at {utc_text(self.decided_at)}"


@dataclass(frozen=True)
class StepView:
    step_id: str
    name: str  # the workflow's name for the step; "" unless described with its workflow
    type: StepType
    status: StepStatus
    attempt: int
    needs: tuple[str, ...]  # empty unless described with its workflow
    skip_reason: SkipReason | None
    note: str | None  # what explains the status now: a failed or cancelled step's error, else the detail
    error: ErrorView | None  # the last error, also of a step being retried
    worker: str | None
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    retry_at: datetime | None
    task: TaskView | None
    args: Any = None  # the arguments it ran with (templates rendered)
    result: Any = None

    @property
    def mark(self) -> str:
        return STEP_MARKS.get(self.status, HOURGLASS)

    @property
    def state(self) -> str:
        """Where the step is, in a few words: its status label, but for a human task how it
        was decided (``approved``, ``rejected``), ``awaiting approval`` while open."""
        if self.task is not None and self.status is not StepStatus.SKIPPED:
            if self.task.open:
                return "awaiting approval" if self.status is StepStatus.WAITING else self.status_label
            return self.task.outcome.value.replace("_", " ")
        return self.status_label

    @property
    def status_label(self) -> str:
        """The status, with the reason of a skip: ``succeeded``, ``skipped (blocked)``."""
        if self.status is StepStatus.SKIPPED and self.skip_reason:
            return f"{self.status.value} ({self.skip_reason.value})"
        return self.status.value

    @property
    def skip_meaning(self) -> str:
        """What the skip reason means (see :data:`SKIP_MEANINGS`); "" unless skipped."""
        return SKIP_MEANINGS[self.skip_reason] if self.skip_reason else ""

    @property
    def failed(self) -> bool:
        """Failed or cancelled with an error to show: its code belongs next to the note."""
        return self.error is not None and self.status in ERROR_STATUSES

    @property
    def in_flight(self) -> bool:
        return self.status in IN_FLIGHT_STEP_STATUSES

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish (a human task: from opening to the decision)."""
        return _seconds(self.started_at, self.finished_at)


@dataclass(frozen=True)
class StopView:
    mode: StopMode
    by: Actor
    at: datetime
    drain_deadline: datetime | None


@dataclass(frozen=True)
class RunView:
    run_id: str
    short_id: str
    workflow_id: str
    workflow_name: str
    workflow_version: int | str
    status: RunStatus
    started_by: Actor
    trigger: dict[str, Any]
    inputs: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    failure: FailureView | None
    stop: StopView | None
    paused_by: Actor | None
    replay_of: str | None
    replays: tuple[str, ...]
    steps: tuple[StepView, ...]
    updated_at: datetime | None = None

    @property
    def mark(self) -> str:
        return RUN_MARKS[self.status]

    @property
    def ended_at(self) -> datetime | None:
        """When a finished run ended (its last change if it has no end recorded); None while active."""
        return (self.finished_at or self.updated_at) if self.finished else None

    @property
    def finished(self) -> bool:
        return self.status.terminal

    @property
    def done(self) -> int:
        """Steps finished, however they finished (succeeded, failed, cancelled, skipped)."""
        return sum(step.status.finished for step in self.steps)

    @property
    def total(self) -> int:
        return len(self.steps)

    @property
    def current(self) -> tuple[StepView, ...]:
        """The steps in flight: queued, running or waiting (for a timer, an event, a person)."""
        return tuple(step for step in self.steps if step.in_flight)

    @property
    def pending_tasks(self) -> tuple[TaskView, ...]:
        return tuple(step.task for step in self.steps if step.task is not None and step.task.open)

    @property
    def duration(self) -> float | None:
        """Seconds from admission to the end, once finished."""
        return _seconds(self.started_at, self.finished_at)

    def elapsed(self, now: datetime) -> float | None:
        """Seconds from admission to the end, or to ``now`` while active; None before admission."""
        return _seconds(self.started_at, self.finished_at or now)

    @property
    def failed_step(self) -> StepView | None:
        """The step that failed the run; else the first failed step (None when none failed)."""
        if self.failure and self.failure.step_id and (step := self.step(self.failure.step_id)):
            return step
        return next((step for step in self.steps if step.status is StepStatus.FAILED), None)

    @property
    def jump_to(self) -> StepView | None:
        """The step to open first: the failed step of a run that failed (or ended with a failure)."""
        return self.failed_step if self.status is RunStatus.FAILED or self.failure else None

    @property
    def next_actions(self) -> str:
        """What can still be done with the run: ``pause it or stop it …``, ``replay it``."""
        return RUN_ACTIONS[self.status]

    @property
    def rejected_task(self) -> TaskView | None:
        """The human task whose rejection (or expiry into one) ended the run's branch, if any."""
        # A change request that ended the branch (on_changes_requested: end, or past max_rounds) too.
        rejected = (TaskOutcome.REJECTED, TaskOutcome.REJECTED_ON_EXPIRY, TaskOutcome.CHANGES_REQUESTED)
        return next(
            (step.task for step in self.steps if step.task is not None and step.task.outcome in rejected),
            None,
        )

    @property
    def outcome(self) -> RunOutcome | None:
        """How the run ended (None while it is not finished); every medium shows it beside the status."""
        if not self.finished:
            return None
        if self.status is RunStatus.FAILED:
            return RunOutcome.FAILED
        if self.status is RunStatus.STOPPED:
            return RunOutcome.STOPPED
        return RunOutcome.REJECTED if self.rejected_task is not None else RunOutcome.SUCCEEDED

    @property
    def status_text(self) -> str:
        """``completed (rejected)``: the status, with the outcome where it says more than the status."""
        outcome = self.outcome
        if outcome is None or outcome.value == self.status.value:
            return self.status.value
        return f"{self.status.value} ({outcome.value})"

    def step(self, step_id: str) -> StepView | None:
        return next((step for step in self.steps if step.step_id == step_id), None)


# -- building views ---------------------------------------------------------------------------


def describe(run: Run, workflow: Workflow | None = None) -> RunView:
    """The view of ``run``, its steps in the workflow's order.

    The run carries everything its view needs but the graph: with its ``workflow``
    (``Engine.workflow_of``) each step also gets its name and needs, for drawing the graph.
    """
    specs = {step.id: step for step in workflow.steps} if workflow else {}
    failure = run.failure
    stop = run.stop
    return RunView(
        run_id=run.run_id,
        short_id=run.short_id,
        workflow_id=run.workflow_id,
        workflow_name=run.workflow_name,
        workflow_version=run.workflow_version,
        status=run.status,
        started_by=run.started_by,
        trigger=run.trigger,
        inputs=run.inputs,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        failure=replace(FailureView.of(failure), step_id=failure.step_id) if failure else None,
        stop=StopView(stop.mode, stop.by, stop.at, stop.drain_deadline) if stop else None,
        paused_by=run.paused_by,
        replay_of=run.replay_of,
        replays=tuple(run.replays),
        steps=tuple(describe_step(step, specs.get(step.step_id)) for step in run.steps.values()),
        updated_at=run.updated_at,
    )


def describe_step(step: StepState, spec: Step | None = None) -> StepView:
    error = ErrorView.of(step.error) if step.error else None
    note = error.message if error and step.status in ERROR_STATUSES else step.detail
    return StepView(
        step_id=step.step_id,
        name=spec.name if spec else "",
        type=step.type,
        status=step.status,
        attempt=step.attempt,
        needs=tuple(spec.needs) if spec else (),
        skip_reason=step.reason,
        note=note,
        error=error,
        worker=step.worker,
        queued_at=step.queued_at,
        started_at=step.started_at,
        finished_at=step.finished_at,
        retry_at=step.retry_at,
        task=describe_task(step.task, step) if step.task else None,
        args=step.args,
        result=step.result,
    )


def describe_task(task: Task, step: StepState | None = None, cancelled: str | None = None) -> TaskView:
    """The task's view; a task whose step was cancelled undecided is ``cancelled``, with why.

    ``cancelled`` gives the reason when the step is not at hand (or not cancelled yet).
    """
    if cancelled is None and step is not None and step.status is StepStatus.CANCELLED:
        cancelled = step.error.message if step.error else "the run ended"
    return TaskView(
        task_id=task.task_id,
        task_type=task.task_type,
        title=task.title,
        description=task.description,
        fields=task.fields,
        editable=tuple(task.editable),
        approvers=tuple(task.approvers),
        opened_at=task.opened_at,
        expires_at=task.expires_at,
        outcome=_task_outcome(task, cancelled),
        decided_by=task.decided_by,
        decided_at=task.decided_at,
        comment=task.comment,
        cancelled_because=cancelled if task.decided_at is None else None,
        min_approvals=task.min_approvals,
        approvals=tuple(task.approvals),
        rejections=tuple(task.rejections),
        changes_allowed=task.changes_allowed,
        round=task.round,
        max_rounds=task.max_rounds,
    )


def _task_outcome(task: Task, cancelled: str | None) -> TaskOutcome:
    if task.decided_at is None:
        if cancelled is not None:
            return TaskOutcome.CANCELLED
        return TaskOutcome.EXPIRED if task.expired else TaskOutcome.OPEN
    if task.expired:
        return TaskOutcome.REJECTED_ON_EXPIRY
    if task.changes_requested:
        return TaskOutcome.CHANGES_REQUESTED
    return TaskOutcome.APPROVED if task.approved else TaskOutcome.REJECTED


# -- the engine's sentences ---------------------------------------------------------------------


def utc_text(moment: datetime | None) -> str:
    """A moment as plain text, the one form sentences and the CLI use: ``2026-11-23 09:00:00 UTC``."""
    if moment is None:
        return "never"
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def already_decided(task: Task) -> AlreadyDecided | None:
    """The refusal of a second decision (who decided the task, how, and when); None while undecided."""
    if task.decided_at is None:
        return None
    view = describe_task(task)
    return AlreadyDecided(
        f"Task {task.task_id!r} was already {view.decision}.",
        decided_by=view.decider,
        decided_at=task.decided_at,
        approved=task.approved,
    )


def already_said(task: Task, said: Decision) -> str:
    """The refusal of a second say by the same person on a quorum task still open."""
    verdict = "approved" if said.approved else "rejected"
    view = describe_task(task)
    return (
        f"You already {verdict} task {task.task_id!r} at {utc_text(said.at)}; one person counts once."
        f" The task is {view.tally}: someone else must decide."
    )


def no_such_task(run: Run, task_id: str) -> NotFound:
    return NotFound(f"Run {run.short_id} has no task {task_id!r}.")


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max((end - start).total_seconds(), 0.0)
