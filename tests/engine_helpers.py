"""Helpers for engine tests: a settable clock and a stand-in for the worker's reports.

``finish_step`` goes through the same command API a worker uses (``step_started`` then
``step_finished``); the worker tests drive real RQ processes instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from engine.api import Engine
from engine.catalog import Catalog
from engine.model import Actor, ActorKind, Run, StepError
from engine.workflow import Workflow

ALICE = Actor(kind=ActorKind.SLACK, id="U0ALICE", name="alice")
BOB = Actor(kind=ActorKind.SLACK, id="U0BOB", name="bob")
CAROL = Actor(kind=ActorKind.API, id="ops-bot")


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: datetime(2026, 11, 23, 9, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def engine_for(
    redis_conn: Any, namespace: str, *workflows: dict[str, Any], clock: Clock | None = None
) -> Engine:
    catalog = Catalog()
    for definition in workflows:
        catalog.add(Workflow.model_validate(definition))
    return Engine(
        redis_conn, catalog, key_prefix=f"{namespace}:", queue_name=namespace, clock=clock or Clock()
    )


def start_step(engine: Engine, run: Run, step_id: str, worker: str = "worker-1") -> Run:
    step = run.steps[step_id]
    decision = engine.step_started(run.run_id, step_id, step.attempt, step.dispatch, worker)
    assert decision.proceed, decision.message
    return decision.run


def finish_step(
    engine: Engine,
    run: Run,
    step_id: str,
    result: Any = None,
    error: StepError | None = None,
) -> Run:
    run = start_step(engine, run, step_id)
    return engine.step_finished(run.run_id, step_id, run.steps[step_id].attempt, result=result, error=error)


def statuses(run: Run) -> dict[str, str]:
    return {sid: st.status.value for sid, st in run.steps.items()}


def action(step_id: str, needs: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": step_id,
        "type": "action",
        "action": "worker.actions:echo",
        "needs": needs or [],
        **extra,
    }


def approval(step_id: str, needs: list[str] | None = None, **task: Any) -> dict[str, Any]:
    return {
        "id": step_id,
        "type": "human_task",
        "needs": needs or [],
        "task": {"title": f"Approve {step_id}?", **task},
    }
