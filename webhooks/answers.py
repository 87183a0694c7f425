"""The REST API's answers as pydantic models: the handlers build them, the OpenAPI document shows them.

One model per answer, so what a client reads in ``/v1/openapi.json`` is what the handler
serialized (``model_dump(mode="json")``), not a description kept beside it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, RootModel, computed_field, field_serializer

from engine.intake import AcceptedRun
from engine.model import Actor, Event, Failure, Question, Run, RunStatus, Task
from engine.queries import CommandCenter, OpenQuestion, PendingTask, RunPage
from engine.views import RunOutcome, describe
from engine.workflow import InputSpec, Workflow


class RunDocument(Run):
    """A run: its status, inputs, steps (each with its task), failure and stop."""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def short_id(self) -> str:
        """The run id's first 8 characters: enough to name it anywhere a run id goes."""
        return self.run_id[:8]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def outcome(self) -> RunOutcome | None:
        """How the run ended, beside its status (None while active): a rejected approval says so."""
        return describe(self).outcome

    @classmethod
    def of(cls, run: Run) -> RunDocument:
        return cls.model_construct(**dict(run))


def run_json(run: Run) -> dict[str, Any]:
    return RunDocument.of(run).model_dump(mode="json")


class RunSummary(BaseModel):
    """A run in a listing: who started what, when, and how it is doing."""

    run_id: str
    short_id: str
    workflow_id: str
    workflow_name: str
    status: RunStatus
    started_by: Actor
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    failure: Failure | None
    outcome: RunOutcome | None = Field(description="how the run ended (None while active)")

    @classmethod
    def of(cls, run: Run) -> RunSummary:
        return cls(
            run_id=run.run_id,
            short_id=run.short_id,
            workflow_id=run.workflow_id,
            workflow_name=run.workflow_name,
            status=run.status,
            started_by=run.started_by,
            created_at=run.created_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
            failure=run.failure,
            outcome=describe(run).outcome,
        )


def run_summary(run: Run) -> dict[str, Any]:
    return RunSummary.of(run).model_dump(mode="json")


class RunsPage(BaseModel):
    runs: list[RunSummary]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page (None: the last page)")
    next: str | None = Field(description="the next page's URL")

    @classmethod
    def of(cls, page: RunPage, next_url: str | None) -> RunsPage:
        cursor = str(page.next_offset) if page.next_offset is not None else None
        return cls(runs=[RunSummary.of(r) for r in page.runs], next_cursor=cursor, next=next_url)


class AcceptedDocument(BaseModel):
    """A run accepted from a webhook that has not started yet (or could not: ``error``)."""

    model_config = ConfigDict(extra="allow")

    status: Literal["accepted", "failed_to_start"]
    run_id: str
    workflow_id: str
    inputs: dict[str, Any]
    accepted_at: datetime
    error: str | None = None

    @field_serializer("accepted_at")
    def _iso(self, moment: datetime) -> str:
        return moment.isoformat()  # as the intake and the webhook's answer spell it

    @classmethod
    def of(cls, accepted: AcceptedRun) -> AcceptedDocument:
        return cls.model_validate(accepted.as_dict())


class EventsAnswer(BaseModel):
    events: list[Event]


class RunContext(RootModel[dict[str, Any]]):
    """What the run's templates see: ``inputs`` and ``steps`` (status, arguments, result)."""


class InRun(BaseModel):
    """Where a task or a question is: its run and step."""

    run_id: str
    short_id: str
    workflow_id: str
    workflow_name: str
    step_id: str


def in_run(run: Run, step_id: str) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "short_id": run.short_id,
        "workflow_id": run.workflow_id,
        "workflow_name": run.workflow_name,
        "step_id": step_id,
    }


class TaskDocument(Task, InRun):
    """A pending human task with the run it belongs to."""

    @classmethod
    def of(cls, pending: PendingTask) -> TaskDocument:
        return cls.model_construct(**dict(pending.task), **in_run(pending.run, pending.task.task_id))


def task_json(pending: PendingTask) -> dict[str, Any]:
    return TaskDocument.of(pending).model_dump(mode="json")


class TasksAnswer(BaseModel):
    tasks: list[TaskDocument]


class QuestionDocument(Question, InRun):
    """An ``ask`` step's question waiting for an answer, with the run and step it belongs to."""

    @classmethod
    def of(cls, found: OpenQuestion) -> QuestionDocument:
        return cls.model_construct(**dict(found.question), **in_run(found.run, found.step_id))


def question_json(found: OpenQuestion) -> dict[str, Any]:
    return QuestionDocument.of(found).model_dump(mode="json")


class QuestionsAnswer(BaseModel):
    questions: list[QuestionDocument]


class WorkflowSummary(BaseModel):
    id: str
    name: str
    version: int | str
    description: str
    digest: str = Field(description="content hash of the definition a run pins")
    inputs: dict[str, InputSpec]

    @classmethod
    def of(cls, workflow: Workflow) -> WorkflowSummary:
        return cls(
            id=workflow.id,
            name=workflow.name,
            version=workflow.version,
            description=workflow.description,
            digest=workflow.digest,
            inputs=workflow.inputs,
        )


def workflow_summary(workflow: Workflow) -> dict[str, Any]:
    return WorkflowSummary.of(workflow).model_dump(mode="json")


class WorkflowsAnswer(BaseModel):
    workflows: list[WorkflowSummary]


class WorkflowDocument(Workflow):
    """A workflow's full definition (as its file gives it, defaults filled in) and its digest."""

    _pinned: str = PrivateAttr(default="")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def digest(self) -> str:
        """The content hash of the definition, which a run pins."""
        return self._pinned

    @classmethod
    def of(cls, workflow: Workflow) -> WorkflowDocument:
        document = cls.model_construct(**dict(workflow))
        document._pinned = workflow.digest
        return document


def workflow_json(workflow: Workflow) -> dict[str, Any]:
    return WorkflowDocument.of(workflow).model_dump(mode="json", by_alias=True)


class CommandCenterAnswer(BaseModel):
    counts: dict[str, int]
    awaiting_approval: list[TaskDocument]
    awaiting_answer: list[QuestionDocument]
    stopping_gracefully: list[RunSummary]
    running_now: list[RunSummary]
    failed_recently: list[RunSummary]

    @classmethod
    def of(cls, center: CommandCenter) -> CommandCenterAnswer:
        return cls(
            counts=center.counts,
            awaiting_approval=[TaskDocument.of(t) for t in center.awaiting_approval],
            awaiting_answer=[QuestionDocument.of(q) for q in center.awaiting_answer],
            stopping_gracefully=[RunSummary.of(r) for r in center.stopping_gracefully],
            running_now=[RunSummary.of(r) for r in center.running_now],
            failed_recently=[RunSummary.of(r) for r in center.failed_recently],
        )
