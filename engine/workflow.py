"""Workflow definitions: what authors write in YAML, validated by pydantic.

A workflow is a DAG of steps. Each step names the steps it ``needs``; steps whose
needs are met run in parallel. Arguments are Jinja templates rendered in a sandbox
against ``inputs`` and earlier ``steps`` (see :mod:`engine.templating`).
"""

from __future__ import annotations

import hashlib
import re
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: Any) -> float:
    """Seconds from ``30``, ``"30s"``, ``"5m"``, ``"1h"`` or ``"2d"``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(f"expected a duration such as 30, '30s', '5m' or '1h', got {value!r}")
    if seconds <= 0:
        raise ValueError("a duration must be greater than zero")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def parse_fraction(value: Any) -> float:
    """A point of a task's life: ``"50%"`` or ``0.5`` (strictly between 0 and 1)."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            value = float(value.strip()[:-1]) / 100
        except ValueError:
            raise ValueError(f"expected a percentage such as '50%', got {value!r}") from None
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < 1:
        raise ValueError(f"expected a share of the expiry between 0% and 100% such as '50%', got {value!r}")
    return float(value)


Fraction = Annotated[float, BeforeValidator(parse_fraction)]
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")]


class _Strict(BaseModel):
    # A misspelt key in a workflow file must be an error, never silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class StepType(StrEnum):
    ACTION = "action"
    HTTP = "http"
    HUMAN_TASK = "human_task"
    WAIT_EVENT = "wait_event"
    SLEEP = "sleep"
    NOTIFY = "notify"
    ASK = "ask"


class InputSpec(_Strict):
    type: Literal["string", "integer", "number", "boolean", "object", "array"] = "string"
    required: bool = False
    default: Any = None
    description: str = ""
    choices: list[Any] | None = None


class RetryPolicy(_Strict):
    """Retries happen only when the step says it is safe to run twice."""

    max_attempts: int = Field(default=1, ge=1, le=20)
    backoff: Duration = 1.0
    backoff_factor: float = Field(default=2.0, ge=1.0)
    idempotent: bool = False

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before ``attempt`` (2 is the first retry)."""
        return float(self.backoff * self.backoff_factor ** max(attempt - 2, 0))


class HttpSpec(_Strict):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    json_body: Any = Field(default=None, alias="json")
    expect_status: list[int] = Field(default_factory=lambda: [200, 201, 202, 204])


class ChangesPolicy(_Strict):
    """What a change request on a task does: run ``rerun`` (an upstream step) again, then reopen.

    The steps between ``rerun`` and the task run again too. Past ``max_rounds`` change
    requests, one more ends the branch as rejected.
    """

    rerun: Identifier
    max_rounds: int = Field(default=3, ge=1, le=20)


class TaskSpec(_Strict):
    task_type: Literal["approval", "edit"] = "approval"
    title: str
    description: str = ""
    fields: dict[str, Any] = Field(default_factory=dict)
    editable: list[str] = Field(default_factory=list)
    approvers: list[str] | None = None
    expires_in: Duration | None = None
    # escalate: the task passes to escalate_to with a new deadline (escalate_expires_in, by
    # default expires_in); when that one passes too, the task is rejected.
    on_expire: Literal["reject", "fail", "escalate"] = "reject"
    escalate_to: list[str] | None = None
    escalate_expires_in: Duration | None = None
    # Reminders to the approvers who have not decided, at these shares of the time to expiry.
    remind_at: list[Fraction] = Field(default_factory=list, max_length=4)
    # Quorum: this many distinct approvers must approve. One rejection ends the task
    # (reject_ends), unless max_rejections says how many do; reject_ends: false without
    # max_rejections records rejections and leaves the task open until expiry.
    min_approvals: int = Field(default=1, ge=1, le=50)
    reject_ends: bool = True
    max_rejections: int | None = Field(default=None, ge=1, le=50)
    # A third decision beside approve and reject: "end" ends the branch (as a rejection
    # does), {rerun: step, max_rounds: N} runs that upstream step again and reopens the task.
    # None: the task takes no change requests.
    on_changes_requested: ChangesPolicy | Literal["end"] | None = None

    @model_validator(mode="after")
    def _editable_fields_exist(self) -> TaskSpec:
        unknown = [name for name in self.editable if name not in self.fields]
        if unknown:
            raise ValueError(f"editable names fields that the task does not have: {unknown}")
        return self

    @model_validator(mode="after")
    def _quorum_is_reachable(self) -> TaskSpec:
        named = self.approvers or []
        wildcard = any(ref == "*" or ref.endswith(":*") for ref in named)
        if named and not wildcard and self.min_approvals > len(named):
            raise ValueError(f"min_approvals is {self.min_approvals} but {len(named)} approvers are named")
        if "reject_ends" in self.model_fields_set and self.reject_ends and (self.max_rejections or 1) > 1:
            raise ValueError("reject_ends: true ends the task at the first rejection; drop max_rejections")
        return self

    @model_validator(mode="after")
    def _deadlines_fit(self) -> TaskSpec:
        if (self.remind_at or self.on_expire == "escalate") and self.expires_in is None:
            raise ValueError("remind_at and on_expire: escalate need expires_in")
        if self.on_expire == "escalate" and not self.escalate_to:
            raise ValueError("on_expire: escalate needs escalate_to (who the task passes to)")
        return self

    @property
    def rejections_to_end(self) -> int | None:
        """How many rejections end the task rejected; None when only expiry ends it."""
        if self.max_rejections is not None:
            return self.max_rejections
        return 1 if self.reject_ends else None


class EventSpec(_Strict):
    """A ``wait_event`` step waits for ``name`` whose correlation ``key`` matches."""

    name: str
    key: str = ""
    timeout: Duration | None = None


class AskSpec(_Strict):
    """An ``ask`` step asks a person or a channel in Slack; the answer is the step's result.

    ``to`` is ``slack:U123`` (a direct message) or a channel (``#ops``, ``C123``). Who may
    answer: ``answerers`` if given, else the person asked, else the workflow's approvers
    (empty: anyone). Unanswered by ``expires_in``: the step fails (``fail``) or succeeds
    with no answer (``empty``).
    """

    question: str
    to: str
    answerers: list[str] | None = None
    expires_in: Duration | None = None
    on_expire: Literal["fail", "empty"] = "fail"


class NotifySpec(_Strict):
    text: str
    channel: str | None = None


class Step(_Strict):
    id: Identifier
    type: StepType
    name: str = ""
    needs: list[str] = Field(default_factory=list)
    when: str | None = Field(default=None, alias="if")
    timeout: Duration | None = None
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    action: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    http: HttpSpec | None = None
    task: TaskSpec | None = None
    event: EventSpec | None = None
    duration: Duration | None = None
    notify: NotifySpec | None = None
    ask: AskSpec | None = None

    @model_validator(mode="after")
    def _has_its_type_section(self) -> Step:
        required = {
            StepType.ACTION: "action",
            StepType.HTTP: "http",
            StepType.HUMAN_TASK: "task",
            StepType.WAIT_EVENT: "event",
            StepType.SLEEP: "duration",
            StepType.NOTIFY: "notify",
            StepType.ASK: "ask",
        }[self.type]
        if getattr(self, required) is None:
            raise ValueError(f"a step of type {self.type.value!r} needs a {required!r} field")
        if self.action is not None and not re.match(r"^[\w.]+:[\w.]+$", self.action):
            raise ValueError(f"action must look like 'package.module:function', got {self.action!r}")
        return self


class WorkflowSettings(_Strict):
    slack_channel: str | None = None
    approvers: list[str] = Field(default_factory=list)
    operators: list[str] = Field(default_factory=list)
    allow_self_approval: bool = False
    concurrency: int | None = Field(default=None, ge=1)
    drain_timeout: Duration = 300.0
    timeout: Duration | None = None
    # How long a finished run is kept (SWITCHBOARD_RETENTION when unset); see engine.retention.
    retention: Duration | None = None


class Workflow(_Strict):
    id: Identifier
    name: str
    version: int | str = 1
    description: str = ""
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    settings: WorkflowSettings = Field(default_factory=WorkflowSettings)
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _is_a_dag(self) -> Workflow:
        ids = [step.id for step in self.steps]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"step ids must be unique, repeated: {duplicates}")
        known = set(ids)
        for step in self.steps:
            missing = [n for n in step.needs if n not in known]
            if missing:
                raise ValueError(f"step {step.id!r} needs unknown steps {missing}")
        _topological_order(self.steps)
        for step in self.steps:
            policy = step.task.on_changes_requested if step.task else None
            if isinstance(policy, ChangesPolicy) and policy.rerun not in self.upstream_of(step.id):
                raise ValueError(
                    f"step {step.id!r} reruns {policy.rerun!r} on a change request,"
                    " which is not a step it needs (directly or through others)"
                )
        return self

    def needed_by(self, step_id: str) -> list[Step]:
        """The steps that need ``step_id`` directly, in the workflow's order."""
        return self._needed_by.get(step_id, [])

    @cached_property
    def _needed_by(self) -> dict[str, list[Step]]:
        found: dict[str, list[Step]] = {}
        for step in self.steps:
            for need in step.needs:
                found.setdefault(need, []).append(step)
        return found

    def downstream_of(self, step_id: str) -> set[str]:
        """Every step that needs ``step_id``, directly or through other steps."""
        return {step.id for step in self.steps if step_id in self.upstream_of(step.id)}

    def upstream_of(self, step_id: str) -> set[str]:
        """Every step ``step_id`` needs, directly or through other steps."""
        found: set[str] = set()
        todo = list(self.step(step_id).needs)
        while todo:
            need = todo.pop()
            if need not in found:
                found.add(need)
                todo.extend(self.step(need).needs)
        return found

    def step(self, step_id: str) -> Step:
        return self._steps_by_id[step_id]

    @cached_property
    def _steps_by_id(self) -> dict[str, Step]:
        return {step.id: step for step in self.steps}

    @cached_property
    def digest(self) -> str:
        """Content hash: a run pins the exact definition it started with."""
        body = self.model_dump_json(by_alias=True).encode()
        return hashlib.sha256(body).hexdigest()[:16]


def _topological_order(steps: list[Step]) -> list[str]:
    needs = {s.id: set(s.needs) for s in steps}
    order: list[str] = []
    placed: set[str] = set()
    while needs:
        ready = [sid for sid, deps in needs.items() if deps <= placed]
        if not ready:
            raise ValueError(f"steps form a cycle: {sorted(needs)}")
        order.extend(ready)
        placed.update(ready)
        for sid in ready:
            del needs[sid]
    return order


_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def _coerce(kind: str, value: Any) -> Any:
    """Values typed on a command line or in Slack arrive as strings."""
    if not isinstance(value, str) or kind == "string":
        return value
    try:
        if kind == "integer":
            return int(value)
        if kind == "number":
            return float(value)
        if kind == "boolean" and value.lower() in (
            "true",
            "yes",
            "1",
            "on",
            "false",
            "no",
            "0",
            "off",
        ):
            return value.lower() in ("true", "yes", "1", "on")
    except ValueError:
        pass
    return value


def validate_inputs(workflow: Workflow, given: dict[str, Any]) -> dict[str, Any]:
    """Inputs with defaults applied; raises :class:`InputError` naming every bad field."""
    inputs = workflow.inputs
    problems: dict[str, str] = {}
    for name in sorted(given.keys() - inputs.keys()):
        known = ", ".join(sorted(inputs)) or "none"
        problems[name] = f"unknown input (this workflow takes: {known})"
    values: dict[str, Any] = {}
    for name, spec in inputs.items():
        if name not in given:
            if spec.required:
                problems[name] = "required"
            elif spec.default is not None:
                values[name] = spec.default
            continue
        kind = spec.type
        value = _coerce(kind, given[name])
        ok = isinstance(value, _PYTHON_TYPES[kind]) and not (
            kind in ("integer", "number") and isinstance(value, bool)
        )
        if not ok:
            problems[name] = f"expected {kind}, got {type(value).__name__} {value!r}"
        elif spec.choices is not None and value not in spec.choices:
            problems[name] = f"must be one of {spec.choices}, got {value!r}"
        else:
            values[name] = value
    if problems:
        raise InputError(problems)
    return values


class InputError(ValueError):
    """Inputs that do not match a workflow; ``problems`` maps each field to what is wrong."""

    def __init__(self, problems: dict[str, str]) -> None:
        self.problems = problems
        detail = "; ".join(f"{field}: {why}" for field, why in problems.items())
        super().__init__(f"invalid inputs: {detail}")
