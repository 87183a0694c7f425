"""How the console marks a run: badge colours, the controls that fit, event severities, charts.

What a run's state means (progress, durations, the failed step, why a step was skipped,
what a failure code means, how a task ended) is the engine's :class:`~engine.views.RunView`,
which every medium renders; so is the mark beside each status, the Slack cards' too. The
console adds only what is HTML: the colour family of each badge (a CSS class), the buttons.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from engine.analytics import Timeseries
from engine.model import Event, EventType, RunStatus, Severity, StepState, StepStatus
from engine.views import HOURGLASS, TASK_MARKS, RunOutcome, RunView, StepView, TaskOutcome
from webhooks.auth import Role
from webhooks.console.charts import Chart, Series, bar_chart


@dataclass(frozen=True)
class Badge:
    mark: str  # the mark every medium shows for the state (engine.views)
    tone: str  # the CSS colour family: ok, bad, warn, info, drain, muted
    label: str


RUN_TONES: dict[RunStatus, str] = {
    RunStatus.QUEUED: "muted",
    RunStatus.RUNNING: "info",
    RunStatus.PAUSED: "warn",
    RunStatus.DRAINING: "drain",
    RunStatus.COMPLETED: "ok",
    RunStatus.FAILED: "bad",
    RunStatus.STOPPED: "muted",
}
STEP_TONES: dict[StepStatus, str] = {
    StepStatus.SUCCEEDED: "ok",
    StepStatus.FAILED: "bad",
    StepStatus.CANCELLED: "muted",
    StepStatus.SKIPPED: "muted",
    StepStatus.RUNNING: "info",
    StepStatus.WAITING: "warn",
}


def run_badge(run: RunView) -> Badge:
    return Badge(run.mark, RUN_TONES[run.status], run.status.value)


def outcome_badge(run: RunView) -> Badge | None:
    """Beside the status, an outcome the status does not say: a completed run a person rejected."""
    if run.outcome is RunOutcome.REJECTED:
        return Badge(TASK_MARKS[TaskOutcome.REJECTED], "bad", run.outcome.value)
    return None


TASK_TONES: dict[TaskOutcome, str] = {
    TaskOutcome.OPEN: "warn",
    TaskOutcome.APPROVED: "ok",
    TaskOutcome.REJECTED: "bad",
    TaskOutcome.REJECTED_ON_EXPIRY: "bad",
    TaskOutcome.EXPIRED: "bad",
    TaskOutcome.CANCELLED: "muted",
}


def step_badge(step: StepView) -> Badge:
    """A step's badge; a decided human task's says how it was decided (a rejection is not green)."""
    task = step.task
    if task is not None and not task.open and step.status is not StepStatus.SKIPPED:
        return Badge(task.mark, TASK_TONES.get(task.outcome, "warn"), step.state)
    return Badge(step.mark, STEP_TONES.get(step.status, "muted"), step.state)


def question_badge(step: StepState) -> Badge:
    """An ``ask`` step's badge: waiting for an answer, answered, or closed without one (it expired,
    went on empty, or the run ended), in the marks the Slack question message uses."""
    question = step.question
    if question is not None and question.answered_by is not None:
        return Badge(TASK_MARKS[TaskOutcome.APPROVED], "ok", "answered")
    if step.status is StepStatus.WAITING:
        return Badge(HOURGLASS, "warn", "awaiting answer")
    if step.status is StepStatus.CANCELLED:
        return Badge(TASK_MARKS[TaskOutcome.CANCELLED], "muted", "cancelled")
    tone = "bad" if step.status is StepStatus.FAILED else "muted"
    return Badge(TASK_MARKS[TaskOutcome.EXPIRED], tone, "not answered")


@dataclass(frozen=True)
class Control:
    """A button on a run: the form's action, its label, its look, and a question to confirm."""

    action: str
    label: str
    style: str = ""  # primary, danger or plain
    confirm: str = ""


_STOPS = [
    Control(
        "stop-graceful", "Stop gracefully", "", "Stop gracefully: running steps finish, nothing new starts?"
    ),
    Control("stop", "Stop now", "danger", "Stop now: running steps are killed?"),
]
_CONTROLS: dict[RunStatus, list[Control]] = {
    RunStatus.QUEUED: [Control("stop", "Stop", "danger", "Stop this run before it starts?")],
    RunStatus.RUNNING: [Control("pause", "Pause"), *_STOPS],
    RunStatus.PAUSED: [Control("resume", "Resume", "primary"), *_STOPS],
    RunStatus.DRAINING: [
        Control("stop", "Escalate to immediate stop", "danger", "Stop now: steps still draining are killed?")
    ],
}
REPLAY = Control("replay", "Replay", "primary")


def controls(run: RunView) -> list[Control]:
    """The commands that fit the run's status (the engine refuses the others anyway)."""
    if run.status.terminal:
        return [REPLAY]
    return _CONTROLS.get(run.status, [])


CONTROL_ROLE = Role.OPERATOR  # every run control; deciding a task needs Role.APPROVER


# -- events -------------------------------------------------------------------------------------

# An event's severity is the engine's (EventType.severity); the run page's live log colours by it.
SEVERITIES: dict[str, str] = {t.value: t.severity.value for t in EventType}
RUN_ENDING_EVENTS = sorted(t.value for t in EventType if t.ends_run)


def event_severity(event_type: str) -> str:
    return SEVERITIES.get(event_type, Severity.INFO.value)


def event_data(event: Event) -> str:
    """An event's data in one line, as the live log's script writes it (compact JSON, 200 characters)."""
    if not event.data:
        return ""
    text = json.dumps(event.data, separators=(",", ":"), default=str, ensure_ascii=False)
    return text if len(text) <= 200 else text[:199] + "…"


def event_details(event: Event) -> str:
    """What the Logs page says of an event: a failure's code and message in words, else its data."""
    problem = event.data.get("failure") or event.data.get("error")
    if isinstance(problem, dict) and problem.get("code"):
        return f"{problem['code']}: {problem.get('message') or ''}".strip()
    return event_data(event)


# -- analytics ----------------------------------------------------------------------------------


def analytics_charts(series: Timeseries) -> list[Chart]:
    """The Analytics page's charts: runs by outcome (the badges' colours) with runs started over
    them, then steps executed with approvals decided (the amber of a task awaiting approval)."""
    points = series.points
    starts = [p.start for p in points]
    unit = "hour" if series.bucket == "hour" else "day"
    runs = bar_chart(
        f"Runs per {unit}",
        starts,
        series.bucket,
        [
            Series("Completed", RUN_TONES[RunStatus.COMPLETED], [p.runs_completed for p in points]),
            Series("Failed", RUN_TONES[RunStatus.FAILED], [p.runs_failed for p in points]),
            Series("Stopped", RUN_TONES[RunStatus.STOPPED], [p.runs_stopped for p in points]),
        ],
        line=Series("Started", RUN_TONES[RunStatus.RUNNING], [p.runs_started for p in points]),
    )
    steps = bar_chart(
        f"Steps executed per {unit}",
        starts,
        series.bucket,
        [Series("Steps executed", "brand", [p.steps_executed for p in points])],
        line=Series("Approvals decided", "warn", [p.approvals_decided for p in points]),
    )
    return [runs, steps]


def rate_tone(rate: float | None) -> str:
    """The colour of a success rate: green from 95%, amber from 80%, red below."""
    if rate is None:
        return "muted"
    return "ok" if rate >= 0.95 else "warn" if rate >= 0.8 else "bad"
