"""The REST API under ``/v1``: every console action, over JSON.

Handlers are thin: validate the request with a pydantic model, call the engine in a
thread (it is synchronous), and shape the answer. Engine errors become problem
documents in :mod:`webhooks.problems`; the role each route needs is declared with
:func:`~webhooks.routing.endpoint` and enforced by :mod:`webhooks.server`'s middleware.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    model_validator,
)

from engine import evidence
from engine.analytics import Bucket, Summary, Timeseries
from engine.asyncio_bridge import EngineBridge
from engine.errors import NotFound
from engine.intake import AcceptedRun
from engine.model import Actor, EventType, Run, RunStatus, Severity, StopMode
from engine.queries import EventFilter, EventPage, RunPage
from webhooks.answers import (
    AcceptedDocument,
    CommandCenterAnswer,
    EventsAnswer,
    QuestionsAnswer,
    RunContext,
    RunDocument,
    RunsPage,
    TasksAnswer,
    WorkflowDocument,
    WorkflowsAnswer,
    question_json,
    run_json,
    task_json,
    workflow_json,
    workflow_summary,
)
from webhooks.auth import Role
from webhooks.context import WebContext, context_of
from webhooks.problems import Problem
from webhooks.routing import PRINCIPAL, endpoint, read_body, read_query

routes = web.RouteTableDef()
# Files the edges add to a run's evidence pack (engine.evidence), by name: the Slack app adds its
# message references (bot.web.attach), which the engine does not know.
EvidenceSource = Callable[[Run], Awaitable[Any]]
EVIDENCE_SOURCES: web.AppKey[dict[str, EvidenceSource]] = web.AppKey("switchboard_evidence_sources")
IDEMPOTENCY_HEADER = "Idempotency-Key"
# Engine calls run on the loop's default executor: the web's own threads (webhooks.server).
ENGINE = EngineBridge()


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunsQuery(_Model):
    status: RunStatus | None = None
    workflow: str | None = None
    prefix: str | None = Field(default=None, min_length=1, max_length=32)
    since: AwareDatetime | None = Field(default=None, description="ISO 8601 with a time zone")
    limit: int = Field(default=50, ge=1, le=500)
    # "cursor" on the wire (an opaque continuation to clients); an offset into the listing inside.
    cursor: str | None = Field(default=None, pattern=r"^\d{1,9}$", description="next_cursor of the last page")


class WorkflowRunsQuery(_Model):
    status: RunStatus | None = None
    since: AwareDatetime | None = None
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = Field(default=None, pattern=r"^\d{1,9}$")


class EventsQuery(_Model):
    after: str | None = Field(default=None, pattern=r"^\d{1,20}-\d{1,20}$", description="an event id")
    limit: int = Field(default=1000, ge=1, le=10_000)


class StartBody(_Model):
    inputs: dict[str, Any] = Field(default_factory=dict)


class CommandParams(_Model):
    mode: StopMode = "immediate"
    inputs: dict[str, Any] | None = None


class CommandBody(_Model):
    command: Literal["start", "pause", "resume", "stop"]
    run_id: str | None = Field(default=None, min_length=1)
    params: CommandParams = Field(default_factory=CommandParams)

    @model_validator(mode="after")
    def _run_id_unless_start(self) -> CommandBody:
        if self.command == "start" and self.run_id is not None:
            raise ValueError("start begins a new run and takes no run_id")
        if self.command != "start" and self.run_id is None:
            raise ValueError(f"{self.command} needs the run_id of the run to {self.command}")
        return self


class CompleteBody(_Model):
    approved: StrictBool | None = None
    decision: Literal["approve", "reject", "request_changes"] | None = Field(
        default=None, description="instead of approved; request_changes needs a comment"
    )
    result: dict[str, Any] = Field(default_factory=dict)
    comment: str | None = Field(default=None, max_length=4000)

    @model_validator(mode="after")
    def _one_decision(self) -> CompleteBody:
        if self.approved is None and self.decision is None:
            raise ValueError("say approved: true or false, or decision: approve, reject or request_changes")
        if self.approved is not None and self.decision is not None:
            raise ValueError("send approved or decision, not both")
        return self


class AnswerBody(_Model):
    answer: str = Field(min_length=1, max_length=4000)


class ReplayBody(_Model):
    inputs: dict[str, Any] | None = None


class RecoverBody(_Model):
    from_step: str | None = Field(
        default=None, min_length=1, max_length=63, description="run again from here (default: failed step)"
    )
    inputs: dict[str, Any] | None = Field(default=None, description="corrected inputs, validated as at start")
    force: StrictBool = Field(default=False, description="run again steps that ran and are not idempotent")


# -- shaping answers ---------------------------------------------------------------------


def idempotency_key(request: web.Request) -> str | None:
    """The request's ``Idempotency-Key``, scoped to who sends it: a retry with it starts nothing twice."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not 0 < len(key) <= 255 or not key.isprintable():
        raise Problem(400, f"{IDEMPOTENCY_HEADER} must be 1 to 255 printable characters.", "bad-request")
    return f"{actor_of(request).ref}:{key}"


def actor_of(request: web.Request) -> Actor:
    return request[PRINCIPAL].actor


async def _run_of_workflow(ctx: WebContext, workflow_id: str, run_ref: str) -> Run:
    """The run, checked to belong to ``workflow_id`` (404 if not: the path names neither)."""
    await ENGINE.call(ctx.engine.workflow, workflow_id)
    run = await ENGINE.call(ctx.engine.get_run, run_ref)
    if run.workflow_id != workflow_id:
        raise NotFound(f"Run {run.short_id} is a run of {run.workflow_id!r}, not of {workflow_id!r}.")
    return run


async def _run_in_path(request: web.Request) -> str:
    """The run the path names; under ``/v1/workflows/{id}/runs/...`` it must be that workflow's."""
    ctx = context_of(request)
    run_ref = request.match_info["run_id"]
    if "workflow_id" not in request.match_info:
        return run_ref
    return (await _run_of_workflow(ctx, request.match_info["workflow_id"], run_ref)).run_id


def _offset(cursor: str | None) -> int:
    """The listing offset a ``cursor`` query parameter stands for (validated as digits)."""
    return int(cursor or 0)


def _page(request: web.Request, page: RunPage) -> web.Response:
    cursor = str(page.next_offset) if page.next_offset is not None else None
    next_url = str(request.rel_url.update_query(cursor=cursor)) if cursor else None
    return web.json_response(RunsPage.of(page, next_url).model_dump(mode="json"))


# -- runs ----------------------------------------------------------------------------------


@routes.get("/v1/runs")
@endpoint(Role.VIEWER, query=RunsQuery, response=RunsPage)
async def list_runs(request: web.Request) -> web.StreamResponse:
    """List runs, newest first.

    Filters combine; `next_cursor` (and the `next` link) continues to the next page.
    """
    q = read_query(request, RunsQuery)
    engine = context_of(request).engine
    page = await ENGINE.call(
        engine.list_runs, q.status, q.workflow, q.prefix, q.since, q.limit, _offset(q.cursor)
    )
    return _page(request, page)


@routes.get("/v1/workflows/{workflow_id}/runs/{run_id}")
@routes.get("/v1/runs/{run_id}")
@endpoint(Role.VIEWER, response=RunDocument, also={202: AcceptedDocument})
async def get_run(request: web.Request) -> web.StreamResponse:
    """Get a run by its id or a unique prefix of at least 8 characters.

    A run accepted from a webhook but not started yet answers 202 with status `accepted`.
    """
    ctx = context_of(request)
    found = await ENGINE.call(ctx.engine.run_or_accepted, request.match_info["run_id"])
    if "workflow_id" in request.match_info:
        workflow_id = request.match_info["workflow_id"]
        await ENGINE.call(ctx.engine.workflow, workflow_id)
        if found.workflow_id != workflow_id:
            short, other = found.run_id[:8], found.workflow_id
            raise NotFound(f"Run {short} is a run of {other!r}, not of {workflow_id!r}.")
    if isinstance(found, AcceptedRun):
        return web.json_response(AcceptedDocument.of(found).model_dump(mode="json"), status=202)
    return web.json_response(run_json(found))


@routes.get("/v1/workflows/{workflow_id}/runs/{run_id}/events")
@routes.get("/v1/runs/{run_id}/events")
@endpoint(Role.VIEWER, query=EventsQuery, response=EventsAnswer)
async def run_events(request: web.Request) -> web.StreamResponse:
    """The run's audit trail: every event, oldest first; `after` continues from an event id."""
    q = read_query(request, EventsQuery)
    engine = context_of(request).engine
    events = await ENGINE.call(engine.events, await _run_in_path(request), q.after, q.limit)
    return web.json_response(EventsAnswer(events=events).model_dump(mode="json"))


@routes.get("/v1/workflows/{workflow_id}/runs/{run_id}/context")
@routes.get("/v1/runs/{run_id}/context")
@endpoint(Role.VIEWER, response=RunContext)
async def run_context(request: web.Request) -> web.StreamResponse:
    """What the run's templates see: inputs and each step's status, arguments and result."""
    context = await ENGINE.call(context_of(request).engine.context, await _run_in_path(request))
    return web.json_response(context, dumps=_dumps)


@routes.get("/v1/workflows/{workflow_id}/runs/{run_id}/tasks/pending")
@routes.get("/v1/runs/{run_id}/tasks/pending")
@endpoint(Role.VIEWER, tag="tasks", response=TasksAnswer)
async def run_pending_tasks(request: web.Request) -> web.StreamResponse:
    """Human tasks of one run still waiting for a decision."""
    tasks = await ENGINE.call(context_of(request).engine.pending_tasks, await _run_in_path(request))
    return web.json_response({"tasks": [task_json(t) for t in tasks]})


@routes.post("/v1/workflows/{workflow_id}/runs/{run_id}/tasks/{task_id}/complete")
@routes.post("/v1/runs/{run_id}/tasks/{task_id}/complete")
@endpoint(Role.APPROVER, body=CompleteBody, tag="tasks", response=RunDocument)
async def complete_task(request: web.Request) -> web.StreamResponse:
    """Approve, reject or request changes on a human task; `result` carries an edit task's edits."""
    body = await read_body(request, CompleteBody)
    ctx = context_of(request)
    run_id, task_id = await _run_in_path(request), request.match_info["task_id"]
    if body.decision == "request_changes":
        comment = body.comment or ""
        run = await ENGINE.call(ctx.engine.request_changes, run_id, task_id, actor_of(request), comment)
        return web.json_response(run_json(run))
    approved = body.approved if body.approved is not None else body.decision == "approve"
    run = await ENGINE.call(
        ctx.engine.complete_task, run_id, task_id, actor_of(request), approved, body.result, body.comment
    )
    return web.json_response(run_json(run))


@routes.get("/v1/workflows/{workflow_id}/runs/{run_id}/questions")
@routes.get("/v1/runs/{run_id}/questions")
@endpoint(Role.VIEWER, tag="tasks", response=QuestionsAnswer)
async def run_open_questions(request: web.Request) -> web.StreamResponse:
    """Questions of one run's `ask` steps still waiting for an answer."""
    found = await ENGINE.call(context_of(request).engine.open_questions, await _run_in_path(request))
    return web.json_response({"questions": [question_json(q) for q in found]})


@routes.post("/v1/runs/{run_id}/tasks/{task_id}/answer")
@endpoint(Role.APPROVER, body=AnswerBody, tag="tasks", response=RunDocument)
async def answer_question(request: web.Request) -> web.StreamResponse:
    """Answer an `ask` step's question: the answer becomes the step's result."""
    body = await read_body(request, AnswerBody)
    ctx = context_of(request)
    run_id, step_id = await _run_in_path(request), request.match_info["task_id"]
    run = await ENGINE.call(ctx.engine.answer, run_id, step_id, actor_of(request), body.answer)
    return web.json_response(run_json(run))


@routes.post("/v1/runs/{run_id}/replay")
@endpoint(Role.OPERATOR, body=ReplayBody, status=201, response=RunDocument, idempotent=True)
async def replay_run(request: web.Request) -> web.StreamResponse:
    """Run a finished run again as a new run, inputs optionally overridden."""
    body = await read_body(request, ReplayBody)
    ctx = context_of(request)
    actor, key = actor_of(request), idempotency_key(request)
    run = await ENGINE.call(ctx.engine.replay, request.match_info["run_id"], actor, body.inputs, key)
    return _created(ctx, run)


@routes.post("/v1/workflows/{workflow_id}/runs/{run_id}/recover")
@routes.post("/v1/runs/{run_id}/recover")
@endpoint(Role.OPERATOR, body=RecoverBody, response=RunDocument)
async def recover_run(request: web.Request) -> web.StreamResponse:
    """Continue a failed or stopped run, the same run, from its failed step (or `from_step`).

    Succeeded steps keep their results; the rest run again as their next attempt, with `inputs`
    corrected. 409 with the engine's sentence when the run cannot be recovered, e.g. a step that
    already ran is not idempotent and `force` is not set.
    """
    body = await read_body(request, RecoverBody)
    engine, run_id, actor = context_of(request).engine, await _run_in_path(request), actor_of(request)
    run = await ENGINE.call(engine.recover, run_id, actor, body.from_step, body.inputs, body.force)
    return web.json_response(run_json(run))


def add_evidence_source(app: web.Application, name: str, source: EvidenceSource) -> None:
    """Have ``source(run)`` answer file ``name`` (``*.json``) of every evidence pack ``app`` serves."""
    app[EVIDENCE_SOURCES] = {**evidence_sources(app), name: source}


def evidence_sources(app: web.Application) -> dict[str, EvidenceSource]:
    none: dict[str, EvidenceSource] = {}
    return app.get(EVIDENCE_SOURCES, none)


@routes.get("/v1/workflows/{workflow_id}/runs/{run_id}/evidence")
@routes.get("/v1/runs/{run_id}/evidence")
@endpoint(Role.VIEWER, media_type=evidence.MEDIA_TYPE)
async def run_evidence(request: web.Request) -> web.StreamResponse:
    """Download the run's evidence pack: one zip of the run, its workflow, events, decisions and results.

    `manifest.json` lists each file's SHA-256. The pack's own digest is answered in
    `X-Evidence-Digest` and recorded in the run's events (`evidence_exported`, with who asked).
    """
    ctx = context_of(request)
    run = await ENGINE.call(ctx.engine.get_run, await _run_in_path(request))
    attachments = {name: await source(run) for name, source in evidence_sources(request.app).items()}
    pack = await ENGINE.call(ctx.engine.evidence, run.run_id, actor_of(request), attachments)
    headers = {
        "Content-Disposition": f'attachment; filename="{pack.filename}"',
        "X-Evidence-Digest": pack.digest,
        "Cache-Control": "no-store",
    }
    return web.Response(body=pack.content, content_type=pack.media_type, headers=headers)


# -- workflows -----------------------------------------------------------------------------


@routes.get("/v1/workflows")
@endpoint(Role.VIEWER, tag="workflows", response=WorkflowsAnswer)
async def list_workflows(request: web.Request) -> web.StreamResponse:
    """List the workflows this server knows."""
    workflows = await ENGINE.call(context_of(request).engine.workflows)
    return web.json_response({"workflows": [workflow_summary(w) for w in workflows]})


@routes.get("/v1/workflows/{workflow_id}")
@endpoint(Role.VIEWER, tag="workflows", response=WorkflowDocument)
async def get_workflow(request: web.Request) -> web.StreamResponse:
    """Get a workflow's full definition."""
    workflow = await ENGINE.call(context_of(request).engine.workflow, request.match_info["workflow_id"])
    return web.json_response(workflow_json(workflow))


@routes.get("/v1/workflows/{workflow_id}/runs")
@endpoint(Role.VIEWER, query=WorkflowRunsQuery, tag="workflows", response=RunsPage)
async def list_workflow_runs(request: web.Request) -> web.StreamResponse:
    """List one workflow's runs, newest first."""
    q = read_query(request, WorkflowRunsQuery)
    ctx = context_of(request)
    workflow_id = request.match_info["workflow_id"]
    await ENGINE.call(ctx.engine.workflow, workflow_id)
    page = await ENGINE.call(
        ctx.engine.list_runs, q.status, workflow_id, None, q.since, q.limit, _offset(q.cursor)
    )
    return _page(request, page)


@routes.post("/v1/workflows/{workflow_id}/runs")
@endpoint(Role.OPERATOR, body=StartBody, status=201, tag="workflows", response=RunDocument, idempotent=True)
async def start_run(request: web.Request) -> web.StreamResponse:
    """Start a run of the workflow with `inputs`.

    With an `Idempotency-Key`, a retry answers the run the first request started.
    """
    body = await read_body(request, StartBody)
    ctx = context_of(request)
    workflow_id = request.match_info["workflow_id"]
    actor, key = actor_of(request), idempotency_key(request)
    run = await ENGINE.call(ctx.engine.start, workflow_id, body.inputs, actor, idempotency_key=key)
    return _created(ctx, run)


@routes.post("/v1/workflows/{workflow_id}/command")
@endpoint(
    Role.OPERATOR,
    body=CommandBody,
    tag="workflows",
    response=RunDocument,
    also={201: RunDocument},
    idempotent=True,
)
async def workflow_command(request: web.Request) -> web.StreamResponse:
    """Send a run command: start, pause, resume or stop (`params.mode` immediate or graceful).

    Every command but start names the run (`run_id`, or a unique prefix), which must be
    a run of this workflow. Start answers 201 with the new run (with an `Idempotency-Key`, a
    retry answers the run the first request started); the others 200 with the run.
    """
    body = await read_body(request, CommandBody)
    ctx = context_of(request)
    workflow_id = request.match_info["workflow_id"]
    actor = actor_of(request)
    if body.command == "start":
        key = idempotency_key(request)
        run = await ENGINE.call(
            ctx.engine.start, workflow_id, body.params.inputs or {}, actor, idempotency_key=key
        )
        return _created(ctx, run)
    assert body.run_id is not None
    target = await _run_of_workflow(ctx, workflow_id, body.run_id)
    match body.command:
        case "stop":
            run = await ENGINE.call(ctx.engine.stop, target.run_id, actor, body.params.mode)
        case "pause":
            run = await ENGINE.call(ctx.engine.pause, target.run_id, actor)
        case "resume":
            run = await ENGINE.call(ctx.engine.resume, target.run_id, actor)
    return web.json_response(run_json(run))


# -- inbox -----------------------------------------------------------------------------------


@routes.get("/v1/tasks/pending")
@endpoint(Role.VIEWER, tag="tasks", response=TasksAnswer)
async def pending_tasks(request: web.Request) -> web.StreamResponse:
    """Human tasks waiting for a decision, oldest first, across all runs."""
    tasks = await ENGINE.call(context_of(request).engine.pending_tasks)
    return web.json_response({"tasks": [task_json(t) for t in tasks]})


@routes.get("/v1/questions")
@endpoint(Role.VIEWER, tag="tasks", response=QuestionsAnswer)
async def open_questions(request: web.Request) -> web.StreamResponse:
    """Questions of `ask` steps waiting for an answer, oldest first, across all runs.

    Answer one with `POST /v1/runs/{run_id}/tasks/{step_id}/answer`.
    """
    found = await ENGINE.call(context_of(request).engine.open_questions)
    return web.json_response({"questions": [question_json(q) for q in found]})


@routes.get("/v1/command-center")
@endpoint(Role.VIEWER, tag="inbox", response=CommandCenterAnswer)
async def command_center(request: web.Request) -> web.StreamResponse:
    """The operator inbox: awaiting approval, stopping gracefully, running now, failed recently."""
    center = await ENGINE.call(context_of(request).engine.command_center)
    return web.json_response(CommandCenterAnswer.of(center).model_dump(mode="json"))


# -- across runs: events and analytics ---------------------------------------------------------


def _comma_list(value: Any) -> Any:
    return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value


class EventSearchQuery(_Model):
    type: Annotated[list[EventType], BeforeValidator(_comma_list)] = Field(
        default_factory=list, description="event types, comma-separated (any when absent)"
    )
    severity: Annotated[list[Severity], BeforeValidator(_comma_list)] = Field(
        default_factory=list, description="error, warning, info, comma-separated (any when absent)"
    )
    workflow: str | None = Field(default=None, max_length=200)
    run: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{1,16}$", description="a run id or its start")
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
    limit: int = Field(default=50, ge=1, le=200)
    before: str | None = Field(
        default=None, pattern=r"^\d{1,20}-\d{1,20}$", description="next_before of the last page"
    )


class EventSearchAnswer(EventPage):
    next: str | None = Field(description="the next page's URL (None: no older event matches)")


class AnalyticsQuery(_Model):
    since: AwareDatetime | None = Field(
        default=None, description="default: 7 days before until; at most 90 days ago"
    )
    until: AwareDatetime | None = Field(default=None, description="default: now")


class TimeseriesQuery(AnalyticsQuery):
    bucket: Bucket = "hour"


@routes.get("/v1/events")
@endpoint(Role.VIEWER, query=EventSearchQuery, tag="events", response=EventSearchAnswer)
async def search_events(request: web.Request) -> web.StreamResponse:
    """Events of all runs, newest first, by type, severity, workflow, run and time.

    A request looks at 10,000 events at most: `budget_reached` says the search stopped there,
    and `next` (or `before=next_before`) searches further back.
    """
    q = read_query(request, EventSearchQuery)
    where = EventFilter(frozenset(q.type), frozenset(q.severity), q.workflow, q.run, q.since, q.until)
    page = await ENGINE.call(context_of(request).engine.search_events, where, q.limit, q.before)
    following = str(request.rel_url.update_query(before=page.next_before)) if page.next_before else None
    return web.json_response(text=EventSearchAnswer(**dict(page), next=following).model_dump_json())


@routes.get("/v1/analytics/summary")
@endpoint(Role.VIEWER, query=AnalyticsQuery, tag="analytics", response=Summary)
async def analytics_summary(request: web.Request) -> web.StreamResponse:
    """Success rate, runs, steps, durations, approval waits and failure codes of a window.

    The window is counted in whole hours: by default the last 7 days, at most 90 days back.
    """
    q = read_query(request, AnalyticsQuery)
    summary = await ENGINE.call(context_of(request).engine.analytics_summary, q.since, q.until)
    return web.json_response(text=summary.model_dump_json())


@routes.get("/v1/analytics/timeseries")
@endpoint(Role.VIEWER, query=TimeseriesQuery, tag="analytics", response=Timeseries)
async def analytics_timeseries(request: web.Request) -> web.StreamResponse:
    """Runs started and finished by outcome, steps executed and approvals decided, per hour or day.

    Every bucket of the window is listed, empty ones too (default the last 7 days, at most 90).
    """
    q = read_query(request, TimeseriesQuery)
    engine = context_of(request).engine
    series = await ENGINE.call(engine.analytics_timeseries, q.bucket, q.since, q.until)
    return web.json_response(text=series.model_dump_json())


def _created(ctx: WebContext, run: Run) -> web.Response:
    location = ctx.run_url(run.run_id)
    return web.json_response(run_json(run), status=201, headers={"Location": location})


def _dumps(value: Any) -> str:
    # A run's context holds step results: whatever JSON-ish values actions returned.
    return json.dumps(value, default=str)
