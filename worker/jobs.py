"""The RQ job that executes one step attempt: ``worker.jobs.execute_step``.

The engine enqueues it with a job id made of run, step, attempt and dispatch, so a
repeated enqueue is harmless. The job asks the engine first (a stale, cancelled or
paused step is refused), runs the step in this work horse, and reports the result or
the error; the engine decides what comes next (retries, fail-fast, the next steps).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ParamSpec, TypeVar

import rq
from rq.timeouts import JobTimeoutException

from engine.api import ClaimedStep, Engine, StartedStep
from engine.errors import CommandRefused, NotFound
from engine.factory import build_engine
from engine.model import FailureCode, StepError, StepStatus
from engine.outage import REDIS_DOWN, Outage
from engine.settings import Settings, get_settings
from engine.workflow import Step, StepType
from worker.action_step import run_action
from worker.failure import StepFailure
from worker.http_step import perform_request
from worker.settings import get_worker_settings

log = logging.getLogger(__name__)

ORPHAN_CHECK_SECONDS = 0.5

P = ParamSpec("P")
T = TypeVar("T")

_engine: Engine | None = None


def configure(settings: Settings) -> Engine:
    """Build the engine of this worker process.

    Work horses are forked from the worker, so they inherit it: the workflow catalog is
    loaded once, and redis-py opens fresh connections in each horse by itself (a horse
    serves many jobs, so it keeps them).
    """
    global _engine
    _engine = build_engine(settings)
    return _engine


def current_engine() -> Engine:
    """The configured engine, or one built from the environment (e.g. under a plain ``rq worker``)."""
    return _engine if _engine is not None else configure(get_settings())


def execute_step(
    run_id: str, step_id: str, attempt: int, dispatch: int, *, worker: str | None = None
) -> dict[str, Any]:
    """Run one attempt of a step and report it; the return value is only for RQ's records.

    Both the start and the report wait out a Redis outage (:func:`patiently`): a step
    that ran must not lose its result because Redis restarted meanwhile. ``worker`` names
    the RQ worker running it (default: the one running RQ's current job).
    """
    outcome, _ = execute_step_claiming(run_id, step_id, attempt, dispatch, worker=worker or worker_name())
    return outcome


def execute_step_claiming(
    run_id: str,
    step_id: str,
    attempt: int,
    dispatch: int,
    *,
    worker: str,
    claim_next: Callable[[], bool] | None = None,
) -> tuple[dict[str, Any], ClaimedStep | None]:
    """:func:`execute_step`, and the step its report started for this worker to run next,
    if ``claim_next`` said it may (:func:`run_started`)."""
    started = start_step(run_id, step_id, attempt, dispatch, worker)
    if not isinstance(started, StartedStep):
        return started, None
    return run_started(started, worker, claim_next)


def start_step(
    run_id: str, step_id: str, attempt: int, dispatch: int, worker: str
) -> StartedStep | dict[str, Any]:
    """Ask the engine to start the step: the step to run, or why it does not run (RQ's result)."""
    engine = current_engine()
    where = {"run_id": run_id, "step_id": step_id, "attempt": attempt, "dispatch": dispatch}
    try:
        started = patiently(
            f"start of step {step_id} of run {run_id}",
            engine.step_started,
            run_id,
            step_id,
            attempt,
            dispatch,
            worker=worker,
        )
    except (CommandRefused, NotFound) as exc:
        log.info("step not started", extra={**where, "reason": str(exc)})
        return {"outcome": "refused", "reason": str(exc)}
    if not started.proceed and started_by(started, attempt, dispatch, worker):
        # Our own start landed, but Redis went away before its reply came back.
        started = replace(started, proceed=True)
    if not started.proceed:
        log.info("step held", extra={**where, "reason": started.message})
        return {"outcome": "held", "reason": started.message}
    return started


def run_started(
    started: StartedStep, worker: str, claim_next: Callable[[], bool] | None = None
) -> tuple[dict[str, Any], ClaimedStep | None]:
    """Execute a started step and report it: RQ's result, and the step the report started
    for this worker to run next (eager dispatch), if any, when ``claim_next``, asked once
    the step is over, says it may."""
    engine = current_engine()
    run_id, state = started.run.run_id, started.step
    where = {"run_id": run_id, "step_id": state.step_id, "attempt": state.attempt, "dispatch": state.dispatch}
    result, error = perform(started)
    # The attempt is over: the job's alarm must not cut the report short.
    signal.alarm(0)
    claimed = None
    try:
        if claim_next is not None and claim_next():
            claimed = report_claiming(engine, started, worker, result, error)
        else:
            report(engine, started, result, error)
    except (CommandRefused, NotFound) as exc:
        log.info("step report refused", extra={**where, "reason": str(exc)})
        return {"outcome": "report refused", "reason": str(exc)}, None
    outcome = "failed" if error else "succeeded"
    log.info("step %s", outcome, extra={**where, "error": error.message if error else None})
    return {"outcome": outcome}, claimed


def report(engine: Engine, started: StartedStep, result: Any, error: StepError | None) -> None:
    """The step's report, waiting out a Redis outage (:func:`patiently`)."""
    run_id, state = started.run.run_id, started.step
    patiently(
        f"report of step {state.step_id} of run {run_id}",
        engine.step_finished,
        run_id,
        state.step_id,
        state.attempt,
        result=result,
        error=error,
    )


def report_claiming(
    engine: Engine, started: StartedStep, worker: str, result: Any, error: StepError | None
) -> ClaimedStep | None:
    """The report that also starts the run's next step for this worker, if Redis answers it.

    If Redis does not, the report is sent again without the claim, patiently; a claim of
    the first try may have landed without this worker hearing of it, so any other step of
    the run left running on this worker (whose one horse is here, reporting) is handed
    back as lost: the engine retries it by its retry policy, as for a horse that died.
    """
    run_id, state = started.run.run_id, started.step
    try:
        return engine.step_finished_then_next(run_id, state.step_id, state.attempt, worker, result, error)
    except REDIS_DOWN:
        pass
    report(engine, started, result, error)
    run = patiently(f"read of run {run_id}", engine.get_run, run_id)
    for other in run.steps.values():
        if other.status is StepStatus.RUNNING and other.worker == worker and other.step_id != state.step_id:
            log.warning(
                "step claimed unheard: handed back as lost",
                extra={"run_id": run_id, "step_id": other.step_id},
            )
            patiently(
                f"loss of step {other.step_id} of run {run_id}",
                engine.step_lost,
                run_id,
                other.step_id,
                other.attempt,
                worker,
            )
    return None


def started_by(started: StartedStep, attempt: int, dispatch: int, worker: str) -> bool:
    """Whether the step already runs under this very job and worker (a retried start that had landed).

    A worker has one work horse at a time, so the step running on it under this attempt
    and dispatch is this horse's.
    """
    step = started.step
    return (
        step.status is StepStatus.RUNNING
        and step.attempt == attempt
        and step.dispatch == dispatch
        and step.worker == worker
    )


def patiently(what: str, command: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """An engine command of this work horse, tried again while Redis is unreachable.

    The horse has nothing else to do, so it waits, with backoff, for up to the worker's
    ``report_patience``; past that it gives up and its worker reports the step lost once
    Redis is back. Repeating the command is safe: the engine checks the step's attempt
    and status in its transaction, so a start or report that did land the first time
    (its reply lost with the connection) is refused or recorded as a late duplicate.
    """
    deadline = time.monotonic() + get_worker_settings().report_patience
    return Outage(what).call_until(deadline, command, *args, **kwargs)


def perform(started: StartedStep) -> tuple[Any, StepError | None]:
    """Execute the step's body: ``(result, None)`` or ``(None, error)``."""
    step = started.workflow.step(started.step.step_id)
    run = started.run
    try:
        if step.type is StepType.ACTION and step.action:
            context = {
                "run_id": run.run_id,
                "step_id": step.id,
                "attempt": started.step.attempt,
                "inputs": run.inputs,
                "workflow_id": run.workflow_id,
            }
            return run_action(step.action, started.step.args, context), None
        if step.type is StepType.HTTP:
            return perform_request(started.step.args or {}, step.timeout), None
        message = f"Steps of type {step.type.value!r} do not run on workers."
        return None, StepError(code=FailureCode.STEP_FAILED, message=message)
    except StepFailure as failure:
        return None, failure.error
    except JobTimeoutException:
        return None, timed_out(step)


def timed_out(step: Step) -> StepError:
    # Like the engine's own timeout backstop: a step cut off midway may have left side
    # effects, so only an idempotent step may run again.
    return StepError(
        code=FailureCode.STEP_TIMED_OUT,
        message=f"The step did not finish within its {step.timeout or 0:g}s timeout and was stopped.",
        retryable=step.retry.idempotent,
    )


def worker_name() -> str:
    """The RQ worker's name: what the reaper checks for liveness."""
    job = rq.get_current_job()
    if job is not None and job.worker_name:
        return job.worker_name
    return f"{socket.gethostname()}.{os.getpid()}"
