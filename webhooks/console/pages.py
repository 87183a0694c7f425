"""The console's pages (GET): Command Center, runs, a run, its live log, approvals, a task, a question,
logs, analytics.

Each handler asks the engine for what it shows and no more (the Command Center's
indexed sections, one page of runs, one run and its events, one page of the event log
searched within a budget, the analytics counters of a window) through the same
:class:`~engine.asyncio_bridge.EngineBridge` the REST API uses, and renders a template.
Forms that change things are in :mod:`webhooks.console.actions`.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from aiohttp import web
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from engine.analytics import Bucket
from engine.api import PendingTask
from engine.asyncio_bridge import EngineBridge
from engine.errors import NotFound
from engine.intake import AcceptedRun
from engine.model import EventType, Run, RunStatus, Severity, StepState, StepStatus
from engine.queries import EventFilter, OpenQuestion
from engine.views import RunView, describe, no_such_task
from webhooks.console import present
from webhooks.console.access import console, page
from webhooks.context import context_of
from webhooks.stream import stream_run

ENGINE = EngineBridge()
PAGE_SIZE = 50
RUN_ID_LENGTH = 16
LOG_EVENTS = 500  # events a run page shows at first; the live stream continues after the last
WAITING = "waiting"  # a filter beside the run statuses: runs waiting on a person (a task, a question)
RANGES: dict[str, timedelta | None] = {
    "": None,
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
RANGE_LABELS = [
    ("", "any time"),
    ("1h", "last hour"),
    ("24h", "last 24 h"),
    ("7d", "last 7 days"),
    ("30d", "last 30 days"),
]


# -- Command Center -------------------------------------------------------------------------------


@console()
async def command_center(request: web.Request) -> web.StreamResponse:
    center = await ENGINE.call(context_of(request).engine.command_center)
    names = ("pending", "draining", "running", "failed", "failed_runs", "stopped_runs")
    counts = {name: center.counts.get(name, 0) for name in names}
    running = [describe(run) for run in center.running_now]
    return await page(
        request,
        "command_center.html",
        center=center,
        counts=counts,
        awaiting=by_run(center.awaiting_approval),
        draining=[describe(run) for run in center.stopping_gracefully],
        running=running,
        failed=[describe(run) for run in center.failed_recently],
        heartbeats=await _heartbeats(request, running),
    )


async def _heartbeats(request: web.Request, runs: list[RunView]) -> dict[str, datetime]:
    """When each worker running a step of ``runs`` last sent a heartbeat (one read for all)."""
    workers = {s.worker for run in runs for s in run.current if s.worker and s.status is StepStatus.RUNNING}
    if not workers:
        return {}
    return await ENGINE.call(context_of(request).engine.queries.worker_heartbeats, sorted(workers))


def by_run(tasks: list[PendingTask]) -> list[tuple[Run, list[PendingTask]]]:
    """Pending tasks grouped by run, the runs by workflow name (as the product's inbox groups them)."""
    groups: dict[str, tuple[Run, list[PendingTask]]] = {}
    for pending in tasks:
        groups.setdefault(pending.run.run_id, (pending.run, []))[1].append(pending)
    return sorted(groups.values(), key=lambda group: (group[0].workflow_name, group[0].created_at))


# -- runs ------------------------------------------------------------------------------------------


class TimeFilter(BaseModel):
    """Filters as the URL carries them (an empty value means no filter), with a time range:
    a span back from now, or a moment (a ``datetime-local`` input's value, taken as UTC)."""

    model_config = ConfigDict(extra="ignore")

    range: Literal["", "1h", "24h", "7d", "30d"] = ""
    since: datetime | None = None
    until: datetime | None = None  # excluded: what happened before this moment

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any, info: ValidationInfo) -> Any:
        blank = isinstance(value, str) and not value.strip()
        return None if blank and info.field_name != "range" else value

    @field_validator("since", "until")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value

    @model_validator(mode="after")
    def _until_after_since(self) -> TimeFilter:
        if self.since and self.until and self.until <= self.since:
            raise ValueError("until must be later than since")
        return self

    @property
    def since_text(self) -> str:
        return local_input(self.since)

    @property
    def until_text(self) -> str:
        return local_input(self.until)

    def earliest(self, now: datetime) -> datetime | None:
        span = RANGES[self.range]
        bounds = [b for b in (self.since, now - span if span else None) if b is not None]
        return max(bounds) if bounds else None


def local_input(moment: datetime | None) -> str:
    """A moment as a ``datetime-local`` input shows it (UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M") if moment else ""


def invalid_filters(exc: ValidationError) -> str:
    problem = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return f"These filters are not valid: {problem}."


class RunsFilter(TimeFilter):
    """The run list's filters."""

    prefix: str | None = Field(default=None, max_length=32, pattern=r"^[0-9a-fA-F]+$")
    status: RunStatus | Literal["waiting"] | None = None
    workflow: str | None = Field(default=None, max_length=200)
    offset: int = Field(default=0, ge=0, le=1_000_000)


@console()
async def runs(request: web.Request) -> web.StreamResponse:
    ctx = context_of(request)
    engine = ctx.engine
    workflows = await ENGINE.call(engine.workflows)
    values: dict[str, Any] = {
        "statuses": [s.value for s in RunStatus] + [WAITING],
        "workflow_options": [(w.id, w.name) for w in workflows],
        "ranges": RANGE_LABELS,
        "runs": [],
        "next_url": None,
        "first_url": str(request.rel_url.without_query_params("offset")),
        "problem": None,
        "accepted": None,
    }
    try:
        query = RunsFilter.model_validate(dict(request.query))
    except ValidationError as exc:
        values.update(query=RunsFilter(), problem=invalid_filters(exc))
        return await page(request, "runs.html", 400, **values)
    since = query.earliest(engine.clock())
    status = query.status if isinstance(query.status, RunStatus) else None
    if query.status == WAITING:
        shown, following = await _waiting_runs(request, query, since)
    else:
        found = await ENGINE.call(
            engine.queries.list_runs,
            status,
            query.workflow,
            query.prefix,
            since,
            PAGE_SIZE,
            query.offset,
            query.until,
        )
        shown, following = found.runs, found.next_offset
    if not shown and query.prefix and len(query.prefix) == RUN_ID_LENGTH:
        with contextlib.suppress(NotFound):
            values["accepted"] = await ENGINE.call(engine.run_or_accepted, query.prefix)
    values.update(
        query=query,
        runs=[describe(run) for run in shown],
        next_url=str(request.rel_url.update_query(offset=following)) if following else None,
    )
    return await page(request, "runs.html", **values)


async def _waiting_runs(
    request: web.Request, query: RunsFilter, since: datetime | None
) -> tuple[list[Run], int | None]:
    """Runs waiting on a person (a task to decide, a question to answer), the oldest wait first:
    read from the pending-task and open-question indexes, as the approvals badge counts them."""
    offset = query.offset
    engine = context_of(request).engine
    pending = await ENGINE.call(engine.pending_tasks, None, offset + PAGE_SIZE + 1)
    asked = await ENGINE.call(engine.open_questions, None, offset + PAGE_SIZE + 1)
    waits = [(t.task.opened_at, t.run) for t in pending] + [(q.question.asked_at, q.run) for q in asked]
    seen: dict[str, Run] = {}
    for _, run in sorted(waits, key=lambda wait: wait[0]):
        if (
            (query.workflow in (None, run.workflow_id))
            and (since is None or run.created_at >= since)
            and (query.until is None or run.created_at < query.until)
            and (not query.prefix or run.run_id.startswith(query.prefix.lower()))
        ):
            seen.setdefault(run.run_id, run)
    listed = list(seen.values())[offset:]
    more = len(listed) > PAGE_SIZE
    return listed[:PAGE_SIZE], offset + PAGE_SIZE if more else None


# -- one run ------------------------------------------------------------------------------------------


@console()
async def run_detail(request: web.Request) -> web.StreamResponse:
    engine = context_of(request).engine
    run = await ENGINE.call(engine.run_or_accepted, request.match_info["run_id"])
    if isinstance(run, AcceptedRun):  # a webhook start a worker has not started yet
        return await page(request, "accepted.html", accepted=run)
    workflow = await ENGINE.call(engine.workflow_of, run)
    events = await ENGINE.call(engine.events, run.run_id, None, LOG_EVENTS)
    view = describe(run, workflow)
    return await page(
        request,
        "run.html",
        run=view,
        questions=[s for s in run.open_questions() if s.question],
        asked={s.step_id: s for s in run.steps.values() if s.question},  # ask steps, badged as questions
        inputs=workflow.inputs,
        failed=view.jump_to,
        heartbeats=await _heartbeats(request, [view]),
        events=events,
        last_event_id=events[-1].id if events else "0-0",
        severities=present.SEVERITIES,
        ending=present.RUN_ENDING_EVENTS,
        severity=present.event_severity,
        event_data=present.event_data,
    )


@console()
async def run_stream(request: web.Request) -> web.StreamResponse:
    """The run's live events for the signed-in browser: the REST stream, authorised by the session."""
    return await stream_run(request)


# -- approvals -------------------------------------------------------------------------------------------


@console()
async def approvals(request: web.Request) -> web.StreamResponse:
    """Everything waiting on a person: tasks to decide, and beside them questions to answer."""
    engine = context_of(request).engine
    tasks = await ENGINE.call(engine.pending_tasks, None, 200)
    questions: list[OpenQuestion] = await ENGINE.call(engine.open_questions, None, 200)
    return await page(request, "approvals.html", tasks=tasks, questions=questions)


@console()
async def task_page(request: web.Request) -> web.StreamResponse:
    run = await ENGINE.call(context_of(request).engine.get_run, request.match_info["run_id"])
    return await task_view(request, run)


async def task_view(
    request: web.Request,
    run: Run,
    status: int = 200,
    problem: str | None = None,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
    decision: str = "",
) -> web.Response:
    """The task page; after a refused decision, with the refusal and the values as they were sent
    (``decision`` says which form sent them: its comment is filled in again)."""
    task_id = request.match_info["task_id"]
    view = describe(run)
    step = view.step(task_id)
    if step is None or step.task is None:
        if task_id in run.steps and run.steps[task_id].changes:
            # Sent back for changes: its earlier steps run again, then it reopens. The run's page
            # shows where that is (a link from before, a Slack card's, lands there).
            raise web.HTTPSeeOther(f"/runs/{run.run_id}#step-{task_id}")
        raise no_such_task(run, task_id)
    return await page(
        request,
        "task.html",
        status,
        run=view,
        step=step,
        task=step.task,
        changes=run.steps[task_id].changes,  # the rounds change requests closed, oldest first
        problem=problem,
        errors=errors or {},
        values=values or {},
        decision=decision,
    )


# -- a question ----------------------------------------------------------------------------------------


@console()
async def question_page(request: web.Request) -> web.StreamResponse:
    run = await ENGINE.call(context_of(request).engine.get_run, request.match_info["run_id"])
    return await question_view(request, run)


async def question_view(
    request: web.Request, run: Run, status: int = 200, problem: str | None = None, answer: str = ""
) -> web.Response:
    """An ``ask`` step's question, who may answer it, and the answer form (or the answer given);
    after a refused answer, with the refusal and the text as it was sent."""
    step = asked_step(run, request.match_info["step_id"])
    return await page(
        request,
        "question.html",
        status,
        run=describe(run),
        step=step,
        question=step.question,
        badge=present.question_badge(step),
        problem=problem,
        answer=answer,
    )


def asked_step(run: Run, step_id: str) -> StepState:
    """The ``ask`` step ``step_id`` of ``run``; NotFound (a 404 page) in the engine's words otherwise."""
    step = run.steps.get(step_id)
    if step is None or step.question is None:
        raise NotFound(f"Run {run.short_id} has no question {step_id!r}.")
    return step


# -- logs --------------------------------------------------------------------------------------------


class LogsFilter(TimeFilter):
    """The event log's filters; ``before`` is where a page continues (an event id)."""

    type: EventType | None = None
    severity: Severity | None = None
    workflow: str | None = Field(default=None, max_length=200)
    run: str | None = Field(default=None, max_length=16, pattern=r"^[0-9a-fA-F]+$")
    before: str | None = Field(default=None, pattern=r"^\d{1,20}-\d{1,20}$")

    def events(self, now: datetime) -> EventFilter:
        return EventFilter(
            types=frozenset([self.type] if self.type else []),
            severities=frozenset([self.severity] if self.severity else []),
            workflow_id=self.workflow,
            run_prefix=self.run,
            since=self.earliest(now),
            until=self.until,
        )


@console()
async def logs(request: web.Request) -> web.StreamResponse:
    engine = context_of(request).engine
    workflows = await ENGINE.call(engine.workflows)
    values: dict[str, Any] = {
        "event_types": [t.value for t in EventType],
        "severities": [s.value for s in Severity],
        "workflow_options": [(w.id, w.name) for w in workflows],
        "workflow_names": {w.id: w.name for w in workflows},
        "ranges": RANGE_LABELS,
        "found": None,
        "next_url": None,
        "first_url": str(request.rel_url.without_query_params("before")),
        "problem": None,
        "event_data": present.event_data,
        "event_details": present.event_details,
    }
    try:
        query = LogsFilter.model_validate(dict(request.query))
    except ValidationError as exc:
        values.update(query=LogsFilter(), problem=invalid_filters(exc))
        return await page(request, "logs.html", 400, **values)
    found = await ENGINE.call(engine.search_events, query.events(engine.clock()), PAGE_SIZE, query.before)
    following = found.next_before
    values.update(
        query=query,
        found=found,
        next_url=str(request.rel_url.update_query(before=following)) if following else None,
    )
    return await page(request, "logs.html", **values)


# -- analytics ---------------------------------------------------------------------------------------

WINDOWS: dict[str, tuple[timedelta, Bucket]] = {  # the window's span, and its chart's bucket
    "24h": (timedelta(hours=24), "hour"),
    "7d": (timedelta(days=7), "day"),
    "30d": (timedelta(days=30), "day"),
    "90d": (timedelta(days=90), "day"),
}
HOURLY_AT_MOST = timedelta(days=7)  # a chart of hours has 168 bars at most
WINDOW_LABELS = [
    ("24h", "last 24 hours"),
    ("7d", "last 7 days"),
    ("30d", "last 30 days"),
    ("90d", "last 90 days"),
]


class AnalyticsFilter(BaseModel):
    model_config = ConfigDict(extra="ignore")

    range: Literal["24h", "7d", "30d", "90d"] = "7d"
    bucket: Bucket | None = None  # default: hours for a day, days for longer

    @field_validator("range", "bucket", mode="before")
    @classmethod
    def _blank_is_default(cls, value: Any, info: ValidationInfo) -> Any:
        blank = isinstance(value, str) and not value.strip()
        return ("7d" if info.field_name == "range" else None) if blank else value

    @model_validator(mode="after")
    def _hours_for_a_week_at_most(self) -> AnalyticsFilter:
        if self.bucket == "hour" and WINDOWS[self.range][0] > HOURLY_AT_MOST:
            raise ValueError(f"per hour covers {HOURLY_AT_MOST.days} days at most; choose per day")
        return self

    @property
    def chart_bucket(self) -> Bucket:
        return self.bucket or WINDOWS[self.range][1]


@console()
async def analytics(request: web.Request) -> web.StreamResponse:
    engine = context_of(request).engine
    try:
        query = AnalyticsFilter.model_validate(dict(request.query))
    except ValidationError as exc:
        return await page(
            request,
            "analytics.html",
            400,
            query=AnalyticsFilter(),
            problem=invalid_filters(exc),
            **_no_figures(),
        )
    # The window is whole buckets, the current one last: "7 days" is today and the six before.
    # The figures cover the chart's window exactly.
    bucket = query.chart_bucket
    now = engine.clock()
    first = now - WINDOWS[query.range][0] + (timedelta(hours=1) if bucket == "hour" else timedelta(days=1))
    series = await ENGINE.call(engine.analytics_timeseries, bucket, first, now)
    summary = await ENGINE.call(engine.analytics_summary, series.since, series.until)
    return await page(
        request,
        "analytics.html",
        query=query,
        bucket=bucket,
        problem=None,
        windows=WINDOW_LABELS,
        summary=summary,
        charts=present.analytics_charts(series),
    )


def _no_figures() -> dict[str, Any]:
    return {"bucket": "day", "windows": WINDOW_LABELS, "summary": None, "charts": []}
