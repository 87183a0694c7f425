"""How the console words and marks a run: badges, step outcomes, progress, the controls that fit.

One small place on purpose: the marks are the Slack cards' (``bot.cards``), so a run
looks the same in both, and when the engine describes runs itself (a medium-neutral
view of a run) the pages switch to it here, not template by template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from bot.cards import STEP_MARKS
from engine.analytics import Timeseries
from engine.model import (
    FAILURE_MEANINGS,
    Event,
    EventType,
    FailureCode,
    Run,
    RunStatus,
    Severity,
    SkipReason,
    StepState,
    StepStatus,
)
from webhooks.auth import Role
from webhooks.console.charts import Chart, Series, bar_chart


@dataclass(frozen=True)
class Badge:
    mark: str  # the emoji the Slack cards use for the same state
    tone: str  # the CSS colour family: ok, bad, warn, info, drain, muted
    label: str


RUN_BADGES: dict[RunStatus, Badge] = {
    RunStatus.QUEUED: Badge("⏳", "muted", "queued"),
    RunStatus.RUNNING: Badge("▶️", "info", "running"),
    RunStatus.PAUSED: Badge("⏸️", "warn", "paused"),
    RunStatus.DRAINING: Badge("🛑", "drain", "draining"),
    RunStatus.COMPLETED: Badge("✅", "ok", "completed"),
    RunStatus.FAILED: Badge("🔴", "bad", "failed"),
    RunStatus.STOPPED: Badge("⏹️", "muted", "stopped"),
}
_STEP_TONES = {
    StepStatus.SUCCEEDED: "ok",
    StepStatus.FAILED: "bad",
    StepStatus.CANCELLED: "muted",
    StepStatus.SKIPPED: "muted",
    StepStatus.RUNNING: "info",
    StepStatus.WAITING: "warn",
}
SKIP_MEANINGS: dict[SkipReason, str] = {
    SkipReason.BLOCKED: "an upstream step failed or was skipped, or its approval was rejected",
    SkipReason.CONDITION: "its condition was false",
    SkipReason.STOPPED: "the run was stopped before it could start",
}


def run_badge(run: Run) -> Badge:
    return RUN_BADGES[run.status]


def step_badge(step: StepState) -> Badge:
    label = step.status.value
    if step.status is StepStatus.SKIPPED and step.reason:
        label = f"skipped ({step.reason.value})"
    elif step.status is StepStatus.WAITING and step.task is not None:
        label = "awaiting approval"
    return Badge(STEP_MARKS.get(step.status, "⏳"), _STEP_TONES.get(step.status, "muted"), label)


def skip_meaning(step: StepState) -> str:
    return SKIP_MEANINGS.get(step.reason, "") if step.reason else ""


def failure_meaning(code: FailureCode | None) -> str:
    return FAILURE_MEANINGS.get(code, "") if code else ""


def progress(run: Run) -> tuple[int, int]:
    """Steps finished (whatever their outcome) out of all steps."""
    return sum(1 for s in run.steps.values() if s.status.finished), len(run.steps)


def duration(run: Run, now: datetime) -> float | None:
    """Seconds from start to finish, or to now for an active run; None before it starts."""
    if run.started_at is None:
        return None
    return ((run.finished_at or now) - run.started_at).total_seconds()


def failed_step(run: Run) -> StepState | None:
    """The step that failed the run, to jump to; else the first step that failed."""
    if run.failure and run.failure.step_id and run.failure.step_id in run.steps:
        return run.steps[run.failure.step_id]
    return next((s for s in run.steps.values() if s.status is StepStatus.FAILED), None)


@dataclass(frozen=True)
class Control:
    """A button on a run: the form's action, its label, its look, and a question to confirm."""

    action: str
    label: str
    style: str = ""  # primary, danger or plain
    confirm: str = ""


_CONTROLS: dict[RunStatus, list[Control]] = {
    RunStatus.QUEUED: [Control("stop", "Stop", "danger", "Stop this run before it starts?")],
    RunStatus.RUNNING: [
        Control("pause", "Pause"),
        Control(
            "stop-graceful",
            "Stop gracefully",
            "",
            "Stop gracefully: running steps finish, nothing new starts?",
        ),
        Control("stop", "Stop now", "danger", "Stop now: running steps are killed?"),
    ],
    RunStatus.PAUSED: [
        Control("resume", "Resume", "primary"),
        Control(
            "stop-graceful",
            "Stop gracefully",
            "",
            "Stop gracefully: running steps finish, nothing new starts?",
        ),
        Control("stop", "Stop now", "danger", "Stop now: running steps are killed?"),
    ],
    RunStatus.DRAINING: [
        Control("stop", "Escalate to immediate stop", "danger", "Stop now: steps still draining are killed?")
    ],
}
REPLAY = Control("replay", "Replay", "primary")


def controls(run: Run) -> list[Control]:
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
            Series("Completed", RUN_BADGES[RunStatus.COMPLETED].tone, [p.runs_completed for p in points]),
            Series("Failed", RUN_BADGES[RunStatus.FAILED].tone, [p.runs_failed for p in points]),
            Series("Stopped", RUN_BADGES[RunStatus.STOPPED].tone, [p.runs_stopped for p in points]),
        ],
        line=Series("Started", RUN_BADGES[RunStatus.RUNNING].tone, [p.runs_started for p in points]),
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
