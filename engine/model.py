"""The state of a run, its steps and human tasks, and the events that record each change."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, ItemsView, Iterable, Iterator, Mapping, MutableMapping, ValuesView
from datetime import datetime
from enum import StrEnum
from functools import cached_property
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    SerializationInfo,
    TypeAdapter,
    ValidationInfo,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from engine.workflow import StepType


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    DRAINING = "draining"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_RUN_STATUSES


TERMINAL_RUN_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.STOPPED})
ACTIVE_RUN_STATUSES = frozenset(set(RunStatus) - TERMINAL_RUN_STATUSES)


class StepStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"

    @property
    def finished(self) -> bool:
        return self in FINISHED_STEP_STATUSES


FINISHED_STEP_STATUSES = frozenset(
    {StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.CANCELLED, StepStatus.SKIPPED}
)
IN_FLIGHT_STEP_STATUSES = frozenset({StepStatus.QUEUED, StepStatus.RUNNING, StepStatus.WAITING})
_STEP_STATUS_OF = {status.value: status for status in StepStatus}  # faster than StepStatus(value)


class SkipReason(StrEnum):
    BLOCKED = "blocked"  # an upstream step failed, was skipped, or its approval was rejected
    CONDITION = "condition"  # the step's `if` was false
    STOPPED = "stopped"  # the run was stopped before the step could start


class FailureCode(StrEnum):
    STEP_FAILED = "STEP_FAILED"
    STEP_TIMED_OUT = "STEP_TIMED_OUT"
    HTTP_REQUEST_FAILED = "HTTP_REQUEST_FAILED"
    TEMPLATE_ERROR = "TEMPLATE_ERROR"
    RUN_STOPPED = "RUN_STOPPED"
    DRAIN_TIMEOUT = "DRAIN_TIMEOUT"
    RUN_STALLED_OR_TIMED_OUT = "RUN_STALLED_OR_TIMED_OUT"
    APPROVAL_EXPIRED = "APPROVAL_EXPIRED"
    WORKER_LOST = "WORKER_LOST"


FAILURE_MEANINGS: dict[FailureCode, str] = {
    FailureCode.STEP_FAILED: "A step raised an error or returned a failure.",
    FailureCode.STEP_TIMED_OUT: "A step ran longer than its timeout and was stopped.",
    FailureCode.HTTP_REQUEST_FAILED: "An HTTP step got an error or an unexpected status.",
    FailureCode.TEMPLATE_ERROR: "A step's template referred to something that does not exist.",
    FailureCode.RUN_STOPPED: "An operator stopped the run.",
    FailureCode.DRAIN_TIMEOUT: "A graceful stop did not finish within the drain timeout; "
    "in-flight steps were stopped immediately.",
    FailureCode.RUN_STALLED_OR_TIMED_OUT: "No progress within the timeout window.",
    FailureCode.APPROVAL_EXPIRED: "Nobody decided a human task before it expired.",
    FailureCode.WORKER_LOST: "The worker running a step died; the step could not be retried.",
}


class ActorKind(StrEnum):
    SLACK = "slack"
    API = "api"
    WEBHOOK = "webhook"
    CLI = "cli"
    SYSTEM = "system"


def identity(ref: str) -> str:
    """The canonical form of an identity ref (``kind:id``), the one form identities are compared in.

    Every medium names people case-insensitively: Slack user ids are upper-case
    (``U123``), API token names and CLI user names are typed by hand (``--as Alice``).
    So ``slack:u123`` in a workflow's approvers is ``slack:U123``, and ``cli:Alice``
    who started a run is ``cli:alice`` who may not approve it. ``*`` and ``kind:*``
    keep their meaning.
    """
    kind, sep, ident = ref.strip().partition(":")
    if not sep:
        return kind.casefold()
    return f"{kind.strip().casefold()}:{ident.strip().casefold()}"


GROUP_KIND = "slack_group"  # a role list's ref to a Slack user group: slack_group:S123


def group_refs(refs: list[str]) -> list[str]:
    """The user group ids (``S123``) a role list names, as written."""
    found = []
    for ref in refs:
        kind, _, ident = ref.strip().partition(":")
        if kind.casefold() == GROUP_KIND and ident.strip():
            found.append(ident.strip())
    return found


class Actor(BaseModel):
    """Who asked for a change: recorded on every event, checked against workflow roles.

    Frozen, so what it records can be worked out once (:attr:`record`).
    """

    model_config = ConfigDict(frozen=True)

    kind: ActorKind
    id: str
    name: str | None = None
    # The Slack user groups (``S123``) the edge found this person in, among those a role list
    # names: the engine never asks Slack. Not stored: membership is checked when they act.
    groups: list[str] = Field(default_factory=list, exclude=True)

    @cached_property
    def record(self) -> dict[str, Any]:
        """What is stored of it (``model_dump(mode="json")``), made once; not to be changed.

        A webhook source's one actor is written into every start it accepts.
        """
        return self.model_dump(mode="json")

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy, without the cached :attr:`record`: ``update`` may change what is stored."""
        copied = super().model_copy(update=update, deep=deep)
        copied.__dict__.pop("record", None)
        return copied

    @property
    def ref(self) -> str:
        return f"{self.kind.value}:{self.id}"

    @property
    def identity(self) -> str:
        """The ref in canonical form (see :func:`identity`): what rules compare, never what is shown."""
        return identity(self.ref)

    def same_as(self, other: Actor) -> bool:
        return self.identity == other.identity

    def matches(self, refs: list[str]) -> bool:
        """Whether a role list (``slack:U123``, ``api:*``, ``*``, ``slack_group:S123``) names this actor."""
        names = {identity(ref) for ref in refs}
        mine = {"*", self.identity, f"{self.kind.value}:*"}
        if self.kind is ActorKind.SLACK:
            mine |= {identity(f"{GROUP_KIND}:{group}") for group in self.groups}
        return bool(names & mine)

    @property
    def display(self) -> str:
        return self.name or self.ref

    @classmethod
    def system(cls, what: str = "switchboard") -> Actor:
        return cls(kind=ActorKind.SYSTEM, id=what)


class StepError(BaseModel):
    code: FailureCode
    message: str
    retryable: bool = False
    provider_status: int | None = None


class Failure(StepError):
    """Why a run ended other than by completing."""

    step_id: str | None = None


class Decision(BaseModel):
    """One person's say on a task. A quorum task records each one until it is decided."""

    by: Actor
    at: datetime
    approved: bool
    comment: str | None = None
    result: dict[str, Any] = Field(default_factory=dict)  # the edits this person submitted
    changes_requested: bool = False  # the third decision: neither approved nor rejected


class Task(BaseModel):
    """A human task opened by a ``human_task`` step. Its id is the step id.

    ``min_approvals`` distinct approvers must approve; ``max_rejections`` rejections end it
    rejected (None: rejections are recorded but only expiry ends it). ``decisions`` holds
    every say in order, the last one being the one that decided the task.
    """

    task_id: str
    task_type: Literal["approval", "edit"]
    title: str
    description: str = ""
    fields: dict[str, Any] = Field(default_factory=dict)
    editable: list[str] = Field(default_factory=list)
    approvers: list[str] = Field(default_factory=list)
    opened_at: datetime
    expires_at: datetime | None = None
    decided_by: Actor | None = None
    decided_at: datetime | None = None
    approved: bool | None = None
    expired: bool = False
    comment: str | None = None
    min_approvals: int = 1
    max_rejections: int | None = 1
    decisions: list[Decision] = Field(default_factory=list)
    changes_allowed: bool = False  # the workflow says what a change request does
    changes_requested: bool = False  # closed by a change request (this round)
    round: int = 1  # 1, then one more each time a change request reopened the task
    max_rounds: int | None = None  # change requests that reopen it; past them, one ends it rejected
    escalated: bool = False  # it expired once and passed to the workflow's escalate_to

    def undecided(self) -> list[str]:
        """The approvers named one by one (no wildcard) who have not said anything yet."""
        said = {d.by.identity for d in self.decisions}
        return [ref for ref in self.approvers if "*" not in ref and identity(ref) not in said]

    @property
    def approvals(self) -> list[Decision]:
        return [d for d in self.decisions if d.approved]

    @property
    def rejections(self) -> list[Decision]:
        return [d for d in self.decisions if not d.approved]

    def decision_of(self, actor: Actor) -> Decision | None:
        """What ``actor`` already said on this task (identities compared canonically), if anything."""
        return next((d for d in self.decisions if d.by.same_as(actor)), None)


class Question(BaseModel):
    """What an ``ask`` step asked, of whom, and the answer once given."""

    text: str
    to: str  # slack:U123, or a channel
    answerers: list[str] = Field(default_factory=list)  # empty: anyone
    asked_at: datetime
    expires_at: datetime | None = None
    answer: str | None = None
    answered_by: Actor | None = None
    answered_at: datetime | None = None


class ChangeRequest(BaseModel):
    """A change request that reopened a task: who asked for what, and the round it closed."""

    round: int
    by: Actor
    at: datetime
    comment: str
    task: Task  # the task as it was closed, its decisions included


class StepState(BaseModel):
    step_id: str
    type: StepType
    status: StepStatus = StepStatus.PENDING
    attempt: int = 0
    dispatch: int = 0  # how many times the step was handed to RQ; part of the job id
    reason: SkipReason | None = None
    detail: str | None = None
    args: Any = None
    result: Any = None
    error: StepError | None = None
    job_id: str | None = None
    worker: str | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    retry_at: datetime | None = None
    task: Task | None = None
    wait_event: str | None = None  # "name|key" for wait_event steps
    changes: list[ChangeRequest] = Field(default_factory=list)  # a human task's change requests, in order
    question: Question | None = None  # an ask step's
    # Set by a recovery: the step opens afresh (templates rendered again, a task reopened) on
    # its next start, as its next attempt; its earlier attempts stay in the events.
    rerun: bool = False

    @property
    def awaits_decision(self) -> bool:
        """A human task open for a decision."""
        return self.status is StepStatus.WAITING and self.task is not None and self.task.decided_at is None

    @property
    def awaits_answer(self) -> bool:
        """An ``ask`` step's question open for an answer."""
        question = self.question
        return self.status is StepStatus.WAITING and question is not None and question.answer is None


# Reads the stored JSON of a run's steps by id (None for a step not stored).
FetchSteps = Callable[[list[str]], list[bytes | str | None]]

# The serialization context that writes a run's head: its steps as their statuses only, each
# step's state being stored on its own (:meth:`engine.store.RunStore.write`).
STEP_STATUSES_ONLY = {"steps": "status"}


class Steps(MutableMapping[str, StepState]):
    """A run's steps by id, in the workflow's order, each parsed when it is first read.

    Every transition loads its run, and reads a few of its steps: the one a worker reports,
    the ones that may start next. Parsing, copying and writing back every step made a step
    of a 500-step run ten times dearer than one of a 10-step run. So a step stays as the
    JSON it was stored as until it is read, the status of every step is kept beside (the
    scheduler asks "what can start?" without reading a step), and :meth:`touched` tells the
    store which steps to write. The head of a stored run holds the statuses; each step is
    a field of its own (:class:`engine.store.Keys.run_steps`).

    A run loaded for a transition need not even hold every step's JSON: given ``fetch``, a
    step not in hand is read from Redis when it is first read (:meth:`prefetch` reads
    several in one round trip). The transaction watches the run's head, which every change
    of a step rewrites, so what a transition read is what it commits against.
    """

    __slots__ = ("_carried", "_fetch", "_parsed", "_status", "_stored")

    def __init__(
        self,
        parsed: dict[str, StepState] | None = None,
        stored: dict[str, str | bytes] | None = None,
        statuses: dict[str, str] | None = None,
        carried: dict[str, str | bytes] | None = None,
        fetch: FetchSteps | None = None,
    ) -> None:
        self._parsed: dict[str, StepState] = dict(parsed or {})
        # The steps' JSON as stored, shared by the copies of one loaded run (what they fetch).
        self._stored: dict[str, str | bytes] = stored if stored is not None else {}
        # The JSON of steps read (so perhaps changed) in the run this one was copied from.
        self._carried: dict[str, str | bytes] = carried or {}
        self._fetch = fetch
        # Each step's status as stored (its value: plain strings copy and serialise fastest),
        # in the steps' order; a parsed step's own status is the truth.
        self._status: dict[str, str] = statuses if statuses is not None else {}
        for step_id, state in self._parsed.items():
            self._status[step_id] = state.status.value

    def __getitem__(self, step_id: str) -> StepState:
        state = self._parsed.get(step_id)
        if state is None:
            if step_id not in self._status:
                raise KeyError(step_id)
            state = self._parsed[step_id] = StepState.model_validate_json(self._json(step_id))
        return state

    def _json(self, step_id: str) -> str | bytes:
        found = self._carried.get(step_id) or self._stored.get(step_id)
        if found is None:
            self.prefetch([step_id])
            found = self._stored.get(step_id)
            if found is None:
                raise KeyError(f"step {step_id!r} is named by the run but not stored")
        return found

    def prefetch(self, step_ids: Iterable[str]) -> None:
        """Have the JSON of these steps in hand, reading those missing in one round trip."""
        have = (self._parsed, self._carried, self._stored)
        missing = [s for s in step_ids if s in self._status and not any(s in h for h in have)]
        if missing and self._fetch is not None:
            for step_id, found in zip(missing, self._fetch(missing), strict=True):
                if found is not None:
                    self._stored[step_id] = found

    def __setitem__(self, step_id: str, state: StepState) -> None:
        self._parsed[step_id] = state
        self._status[step_id] = state.status.value

    def __delitem__(self, step_id: str) -> None:
        del self._status[step_id]
        self._parsed.pop(step_id, None)
        self._carried.pop(step_id, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._status)

    def __len__(self) -> int:
        return len(self._status)

    def __contains__(self, step_id: object) -> bool:
        return step_id in self._status

    def __repr__(self) -> str:
        return f"Steps({self.statuses()!r})"

    def values(self) -> ValuesView[StepState]:
        self.prefetch(self._status)  # one round trip for the whole run, not one per step
        return super().values()

    def items(self) -> ItemsView[str, StepState]:
        self.prefetch(self._status)
        return super().items()

    def status(self, step_id: str) -> StepStatus:
        """A step's status, without reading the step."""
        state = self._parsed.get(step_id)
        return state.status if state is not None else _STEP_STATUS_OF[self._status[step_id]]

    def statuses(self) -> dict[str, StepStatus]:
        """Every step's status by id, in order, without reading the steps."""
        return {step_id: _STEP_STATUS_OF[value] for step_id, value in self._values().items()}

    def _values(self) -> dict[str, str]:
        current = dict(self._status)
        for step_id, state in self._parsed.items():
            current[step_id] = state.status.value
        return current

    def with_status(self, *wanted: StepStatus) -> list[StepState]:
        """The steps in one of the ``wanted`` statuses, in order; only those are read."""
        ids = [step_id for step_id, value in self._values().items() if value in wanted]
        self.prefetch(ids)
        return [self[step_id] for step_id in ids]

    def all_finished(self) -> bool:
        # A StrEnum equals its value: the plain values are looked up in the set of members.
        return FINISHED_STEP_STATUSES.issuperset(self._values().values())

    def touched(self) -> dict[str, str | bytes]:
        """The JSON of every step read (and so perhaps changed) since the run was loaded,
        here or in the runs this one was copied from: what the store must write."""
        changed = dict(self._carried)
        for step_id, state in self._parsed.items():
            changed[step_id] = state.model_dump_json()
        return changed

    def as_loaded(self) -> dict[str, str | bytes]:
        """The JSON of the steps read from Redis with the run or since (not those changed here)."""
        return dict(self._stored)

    def __deepcopy__(self, memo: dict[int, Any]) -> Steps:
        return self.copy()

    def copy(self) -> Steps:
        """An independent copy: a step read here is carried as JSON for the copy to read."""
        carried = dict(self._carried)
        for step_id, state in self._parsed.items():
            carried[step_id] = state.model_dump_json()
        return Steps(stored=self._stored, statuses=self._values(), carried=carried, fetch=self._fetch)

    # -- as a pydantic field -------------------------------------------------------------

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.with_info_plain_validator_function(
            cls._validate,
            serialization=core_schema.plain_serializer_function_ser_schema(cls._serialize, info_arg=True),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """Documented as what it is to a client: the step states by step id."""
        return handler(TypeAdapter(dict[str, StepState]).core_schema)

    @classmethod
    def _validate(cls, value: Any, info: ValidationInfo) -> Steps:
        """Steps as they come: every step's state (a document, a test), or a stored run's head
        (statuses only), whose steps come in the validation context: ``{"steps": ...}`` (their
        JSON by id) and ``{"fetch": ...}`` (what reads the others)."""
        if isinstance(value, Steps):
            return value
        if not isinstance(value, dict):
            raise ValueError("steps must be an object of step states by step id")
        if value and isinstance(next(iter(value.values())), str):  # a head: statuses only
            context = info.context or {}
            given = context.get("steps")
            if not _STEP_STATUS_OF.keys() >= set(value.values()):
                raise ValueError(f"unknown step statuses {set(value.values()) - _STEP_STATUS_OF.keys()}")
            if not isinstance(given, dict):
                raise ValueError("a run's head names its steps' statuses; their states are missing")
            return cls(stored=given, statuses=value, fetch=context.get("fetch"))
        return cls(parsed={k: StepState.model_validate(v) for k, v in value.items()})

    @staticmethod
    def _serialize(steps: Steps, info: SerializationInfo) -> dict[str, Any]:
        if (info.context or {}).get("steps") == "status":
            return steps._values()
        mode = "json" if info.mode_is_json() else "python"
        steps.prefetch(steps)
        dumped: dict[str, Any] = {}
        for step_id in steps:
            if mode == "json" and step_id not in steps._parsed:
                dumped[step_id] = json.loads(steps._json(step_id))  # as stored, unread
            else:
                dumped[step_id] = steps[step_id].model_dump(mode=mode)
        return dumped

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return dict(self.items()) == dict(other.items())

    __hash__ = None  # type: ignore[assignment]


StopMode = Literal["immediate", "graceful"]  # immediate: in-flight steps are killed; graceful: they finish


class StopRequest(BaseModel):
    mode: StopMode
    by: Actor
    at: datetime
    drain_deadline: datetime | None = None


class Run(BaseModel):
    run_id: str
    workflow_id: str
    workflow_name: str
    workflow_version: int | str
    workflow_digest: str
    status: RunStatus = RunStatus.QUEUED
    inputs: dict[str, Any] = Field(default_factory=dict)
    started_by: Actor
    trigger: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    version: int = 0  # bumped on every committed change; the optimistic-lock token
    steps: Steps
    failure: Failure | None = None
    stop: StopRequest | None = None
    paused_by: Actor | None = None
    replay_of: str | None = None
    replays: list[str] = Field(default_factory=list)
    notify_channel: str | None = None
    idempotency_key: str | None = None  # the key its start was deduplicated by; removed with the run

    @property
    def short_id(self) -> str:
        return self.run_id[:8]

    def clone(self) -> Run:
        """An independent copy to change: what can change in place copied deeply, the steps as
        :meth:`Steps.copy` does (a step nobody read is neither parsed nor dumped), scalars and
        datetimes shared (immutable). ~20 us whatever the run's size; ``copy.deepcopy`` of
        the whole took ~35 us, a JSON round trip of the head 13 us for 10 steps, 110 for 500."""
        twin = copy.copy(self)
        fields = twin.__dict__
        for name, value in fields.items():
            if value is None or isinstance(value, str | int | float | datetime):  # enums are str
                continue
            fields[name] = value.copy() if type(value) is Steps else copy.deepcopy(value)
        return twin

    def open_tasks(self) -> list[StepState]:
        return [s for s in self.steps.with_status(StepStatus.WAITING) if s.awaits_decision]

    def open_questions(self) -> list[StepState]:
        """The ``ask`` steps waiting for an answer."""
        return [s for s in self.steps.with_status(StepStatus.WAITING) if s.awaits_answer]


class EventType(StrEnum):
    """What an event records. Stored and streamed by value (``"run_started"``), like RQ's ``JobStatus``."""

    RUN_QUEUED = "run_queued"
    RUN_STARTED = "run_started"
    RUN_PAUSED = "run_paused"
    RUN_RESUMED = "run_resumed"
    RUN_DRAINING = "run_draining"
    RUN_COMPLETED = "run_completed"
    RUN_FAILED = "run_failed"
    RUN_STOPPED = "run_stopped"
    RUN_REPLAYED = "run_replayed"  # on the original run: a replay of it was started
    RUN_RECOVERED = "run_recovered"  # a failed or stopped run continues (who, from which step, inputs)
    EVIDENCE_EXPORTED = "evidence_exported"  # an evidence pack was built (its digest, who asked)
    STEP_QUEUED = "step_queued"
    STEP_HELD = "step_held"  # taken off the queue (paused or draining); starts on resume
    STEP_STARTED = "step_started"
    STEP_RETRY_SCHEDULED = "step_retry_scheduled"
    STEP_COMPLETED = "step_completed"  # succeeded, or skipped (``data.skipped``)
    STEP_FAILED = "step_failed"
    STEP_CANCELLED = "step_cancelled"
    STEP_RESULT_IGNORED = "step_result_ignored"  # a worker's late report, kept for the audit trail
    STEP_RESET = "step_reset"  # a recovery made a finished step runnable again
    TASK_OPENED = "task_opened"
    TASK_APPROVAL_RECORDED = "task_approval_recorded"  # one say on a quorum task that did not decide it
    TASK_CHANGES_REQUESTED = "task_changes_requested"  # closed for a new round; upstream runs again
    TASK_COMPLETED = "task_completed"
    QUESTION_ASKED = "question_asked"  # an ask step's question, to post in Slack
    QUESTION_ANSWERED = "question_answered"
    TASK_REMINDED = "task_reminded"  # a reminder to the approvers who have not decided
    TASK_ESCALATED = "task_escalated"  # expired, and passed to the workflow's escalate_to
    TASK_EXPIRED = "task_expired"
    EVENT_RECEIVED = "event_received"  # a wait_event step got its event
    NOTIFICATION = "notification"  # a notify step's message

    @property
    def ends_run(self) -> bool:
        return self in RUN_END_EVENTS

    @property
    def severity(self) -> Severity:
        """How loud the event is: what the console's Logs and ``GET /v1/events`` filter by."""
        return EVENT_SEVERITY.get(self, Severity.INFO)

    @classmethod
    def run_ended(cls, status: RunStatus) -> EventType:
        """The event that records a run ending in ``status`` (a terminal status)."""
        return RUN_END_EVENT_OF[status]


# Every ending of a run records one of these, and nothing else records them.
RUN_END_EVENT_OF: dict[RunStatus, EventType] = {
    RunStatus.COMPLETED: EventType.RUN_COMPLETED,
    RunStatus.FAILED: EventType.RUN_FAILED,
    RunStatus.STOPPED: EventType.RUN_STOPPED,
}
RUN_END_EVENTS = frozenset(RUN_END_EVENT_OF.values())


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


# Failures are errors. What went wrong and was handled is a warning: a retry (also of a step
# whose worker was lost or that timed out), an expired task, a stop (an operator's, or a
# graceful stop past its drain timeout), a cancelled step, a late report. The rest is info.
EVENT_SEVERITY: dict[EventType, Severity] = {
    EventType.RUN_FAILED: Severity.ERROR,
    EventType.STEP_FAILED: Severity.ERROR,
    EventType.STEP_RETRY_SCHEDULED: Severity.WARNING,
    EventType.TASK_EXPIRED: Severity.WARNING,
    EventType.TASK_ESCALATED: Severity.WARNING,
    EventType.RUN_STOPPED: Severity.WARNING,
    EventType.STEP_CANCELLED: Severity.WARNING,
    EventType.STEP_RESULT_IGNORED: Severity.WARNING,
}


class Event(BaseModel):
    """One entry of a run's audit trail."""

    type: EventType
    at: datetime
    actor: Actor
    run_id: str
    step_id: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None  # the stream entry id, once stored
