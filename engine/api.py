"""The command API: the one way in for Slack, REST, webhooks, the CLI and workers.

Each command names a run by its id or a unique prefix of at least 8 characters,
carries the :class:`~engine.model.Actor` who asked, and returns the run as it is
after the change. A command that does not fit raises a
:class:`~engine.errors.SwitchboardError` whose message says why and what is possible.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import redis
from redis.client import Pipeline
from rq import Queue
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError

from engine import core
from engine import retention as retention_rules
from engine.catalog import Catalog
from engine.core import Outcome
from engine.errors import AmbiguousRunId, CommandRefused, DeliveryInProgress, InvalidInput, NotFound
from engine.model import (
    Actor,
    Event,
    Run,
    RunStatus,
    StepError,
    StepState,
    StepStatus,
    Task,
)
from engine.store import Keys, RunStore, parse_timer_member, text, texts, ts
from engine.workflow import InputError, Workflow, validate_inputs

log = logging.getLogger(__name__)

MIN_PREFIX = 8
STEP_JOB = "worker.jobs.execute_step"
FAILED_RECENTLY = timedelta(hours=24)
EVENT_DELIVERY_TTL_SECONDS = 7 * 86400  # how long a delivered event's id is remembered against replays
EVENT_DELIVERY_LEASE_SECONDS = 30  # how long a delivery under way holds its id (one that died lets go)
EVENT_DELIVERY_WAIT_SECONDS = 5.0  # how long a second delivery of an id waits for the first's answer
_CLAIMED = "claimed:"
# Let go of a delivery id, unless the claim expired and another delivery holds it now.
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_run_id() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True)
class StartedStep:
    """What a worker needs to execute a step it was allowed to start."""

    proceed: bool
    message: str
    run: Run
    step: StepState
    workflow: Workflow


@dataclass(frozen=True)
class EventDelivery:
    """What delivering an event did: the runs it woke, then or (``duplicate``) the first time."""

    run_ids: list[str]
    duplicate: bool = False


@dataclass(frozen=True)
class PendingTask:
    run: Run
    task: Task

    @property
    def step(self) -> StepState:
        return self.run.steps[self.task.task_id]


@dataclass(frozen=True)
class RunPage:
    runs: list[Run]
    next_cursor: str | None


@dataclass
class CommandCenter:
    """The operator inbox: four sections, each with its total count and first rows."""

    awaiting_approval: list[PendingTask] = field(default_factory=list)
    stopping_gracefully: list[Run] = field(default_factory=list)
    running_now: list[Run] = field(default_factory=list)
    failed_recently: list[Run] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def awaiting_by_workflow(self) -> dict[str, dict[str, list[PendingTask]]]:
        """Pending tasks grouped by workflow, then by run, in the order they opened."""
        groups: dict[str, dict[str, list[PendingTask]]] = {}
        for pending in self.awaiting_approval:
            runs = groups.setdefault(pending.run.workflow_id, {})
            runs.setdefault(pending.run.run_id, []).append(pending)
        return groups


class Engine:
    def __init__(
        self,
        connection: redis.Redis,
        catalog: Catalog,
        key_prefix: str = "sb:",
        queue_name: str = "switchboard",
        clock: Callable[[], datetime] = utcnow,
        step_job: str = STEP_JOB,
        default_job_timeout: float = 3600,
        retention: float = retention_rules.DEFAULT_RETENTION_SECONDS,
    ) -> None:
        self.redis = connection
        self.catalog = catalog
        self.retention = retention  # seconds a finished run is kept unless its workflow says otherwise
        self.keys = Keys(key_prefix)
        self.queue = Queue(queue_name, connection=connection)
        self.clock = clock
        self.store = RunStore(connection, self.keys, self.queue, step_job, default_job_timeout)
        self._saved_digests: set[str] = set()  # snapshots this process has stored in Redis
        self._workflows_by_digest: dict[str, Workflow] = {w.digest: w for w in catalog.workflows.values()}

    # -- workflows -----------------------------------------------------------------------

    def workflows(self) -> list[Workflow]:
        return sorted(self.catalog.workflows.values(), key=lambda w: w.id)

    def workflow(self, workflow_id: str) -> Workflow:
        return self.catalog.get(workflow_id)

    def workflow_of(self, run: Run) -> Workflow:
        """The exact definition a run started with, even if the file changed since."""
        workflow = self._workflows_by_digest.get(run.workflow_digest)
        if workflow is None:
            workflow = self.store.load_workflow(run.workflow_digest)
            if workflow is None:
                raise NotFound(f"The workflow definition of run {run.short_id} is missing.")
            self._workflows_by_digest[run.workflow_digest] = workflow
        return workflow

    # -- operator commands ---------------------------------------------------------------

    def start(
        self,
        workflow_id: str,
        inputs: dict[str, Any] | None,
        actor: Actor,
        trigger: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        run_id: str | None = None,
    ) -> Run:
        """Start a run; with an ``idempotency_key`` seen before, return that earlier run.

        ``run_id`` lets a caller that promised an id before starting (the webhook inbox)
        keep its word; pair it with an ``idempotency_key`` so a retry cannot start it twice.
        """
        workflow = self.workflow(workflow_id)
        return self._create(workflow, inputs or {}, actor, trigger, idempotency_key, run_id=run_id)

    def _create(
        self,
        workflow: Workflow,
        inputs: dict[str, Any],
        actor: Actor,
        trigger: dict[str, Any] | None,
        idempotency_key: str | None = None,
        replay_of: str | None = None,
        run_id: str | None = None,
    ) -> Run:
        try:
            values = validate_inputs(workflow, inputs)
        except InputError as exc:
            raise InvalidInput(str(exc), exc.problems) from exc
        if workflow.digest not in self._saved_digests:
            self.store.save_workflow(workflow)
            self._saved_digests.add(workflow.digest)
            self._workflows_by_digest[workflow.digest] = workflow
        now = self.clock()
        outcome = core.new_run(workflow, run_id or new_run_id(), values, actor, now, trigger, replay_of)
        unlimited = workflow.settings.concurrency is None
        if unlimited:
            # Nothing to wait for: admit in the same transaction that creates the run.
            admitted = core.apply(workflow, outcome.run, core.Admit(Actor.system("admission")), now)
            admitted.events[:0] = outcome.events
            outcome = admitted
        run, created = self.store.create(outcome, idempotency_key)
        if created:
            log.info("run started", extra={"run_id": run.run_id, "workflow": workflow.id})
            if not unlimited:
                self._admit_waiting(workflow)
                return self.get_run(run.run_id)
        return run

    def pause(self, run_ref: str, actor: Actor) -> Run:
        return self._command(run_ref, core.Pause(actor))

    def resume(self, run_ref: str, actor: Actor) -> Run:
        return self._command(run_ref, core.Resume(actor))

    def stop(self, run_ref: str, actor: Actor, mode: Literal["immediate", "graceful"] = "immediate") -> Run:
        if mode not in ("immediate", "graceful"):
            raise InvalidInput(f"Stop mode must be 'immediate' or 'graceful', not {mode!r}.")
        return self._command(run_ref, core.Stop(actor, mode))

    def complete_task(
        self,
        run_ref: str,
        task_id: str,
        actor: Actor,
        approved: bool,
        result: dict[str, Any] | None = None,
        comment: str | None = None,
    ) -> Run:
        if result is not None and not isinstance(result, dict):
            raise InvalidInput("A task result must be an object of field values.")
        command = core.CompleteTask(actor, task_id, approved, result or {}, comment)
        return self._command(run_ref, command)

    def replay(self, run_ref: str, actor: Actor, inputs: dict[str, Any] | None = None) -> Run:
        """Run a finished run again as a new run, linked both ways, inputs optionally overridden."""
        original = self.get_run(run_ref)
        if not original.status.terminal:
            raise CommandRefused(
                f"Cannot replay run {original.short_id}: it is {original.status.value};"
                " only completed, failed or stopped runs can be replayed."
                f" You can {core.RUN_ACTIONS[original.status]}."
            )
        # A replay runs the definition the original ran, not whatever the file says now.
        merged = {**original.inputs, **(inputs or {})}
        trigger = {"kind": "replay", "of": original.run_id}
        replay = self._create(self.workflow_of(original), merged, actor, trigger, replay_of=original.run_id)

        def link(_pipe: Pipeline, run: Run) -> Outcome:
            out = Outcome(run=run.clone())
            out.run.replays.append(replay.run_id)
            out.events.append(
                Event(
                    type="run_replayed",
                    at=self.clock(),
                    actor=actor,
                    run_id=run.run_id,
                    data={"replay_run_id": replay.run_id},
                )
            )
            return out

        self.store.transact(original.run_id, link)
        return replay

    def deliver_event(self, name: str, key: str, payload: Any, actor: Actor) -> list[str]:
        """Hand an external event to every step waiting for it; returns the run ids woken.

        Each step takes it in its own run's transaction, at most once: a step that got it
        stops waiting, so delivering the same event again wakes only those still waiting.
        """
        woken: list[str] = []
        for run_id, step_id in self.store.waiting_steps(f"{name}|{key}"):
            try:
                self._apply(run_id, core.EventDelivered(step_id, payload, actor))
                woken.append(run_id)
            except (CommandRefused, NotFound):
                continue  # it stopped waiting in the meantime, or the run is gone
        return woken

    def deliver_event_once(
        self, name: str, key: str, payload: Any, actor: Actor, delivery: str
    ) -> EventDelivery:
        """:meth:`deliver_event` once per ``delivery`` id, remembered only after it took effect.

        The id is claimed (for a lease) while the event is delivered and recorded with the
        runs it woke when that is done. A delivery that fails, say Redis went away, lets the
        id go, so the sender's retry delivers the event instead of hearing "duplicate". A
        second delivery of the id meanwhile waits for the first one's answer, or takes over
        if it let go; past ``EVENT_DELIVERY_WAIT_SECONDS`` it is refused, to be retried.
        """
        seen = self.keys.event_delivery(delivery)
        claim = f"{_CLAIMED}{secrets.token_hex(8)}"
        deadline = time.monotonic() + EVENT_DELIVERY_WAIT_SECONDS
        while not self.redis.set(seen, claim, nx=True, ex=EVENT_DELIVERY_LEASE_SECONDS):
            earlier = self.redis.get(seen)
            if earlier is not None and not text(earlier).startswith(_CLAIMED):
                return EventDelivery(json.loads(earlier)["run_ids"], duplicate=True)
            if time.monotonic() > deadline:
                raise DeliveryInProgress(
                    f"Delivery {delivery!r} is being handled by another request; try again shortly."
                )
            time.sleep(0.02)
        try:
            woken = self.deliver_event(name, key, payload, actor)
        except BaseException:
            with contextlib.suppress(redis.RedisError):
                self.redis.eval(_RELEASE, 1, seen, claim)
            raise
        self.redis.set(seen, json.dumps({"run_ids": woken}), ex=EVENT_DELIVERY_TTL_SECONDS)
        return EventDelivery(woken)

    # -- worker reports ------------------------------------------------------------------

    def step_started(
        self, run_id: str, step_id: str, attempt: int, dispatch: int, worker: str
    ) -> StartedStep:
        """Called by a worker before executing: ``proceed`` is False for a stale, cancelled or held step."""
        try:
            run, outcome = self._apply(run_id, core.StepStarted(step_id, attempt, dispatch, worker))
        except CommandRefused as refused:
            run = self.get_run(run_id)
            return StartedStep(False, str(refused), run, run.steps[step_id], self.workflow_of(run))
        proceed = outcome.proceed if outcome else False
        return StartedStep(
            proceed=proceed,
            message=outcome.message if outcome else "",
            run=run,
            step=run.steps[step_id],
            workflow=self.workflow_of(run),
        )

    def step_finished(
        self,
        run_id: str,
        step_id: str,
        attempt: int,
        result: Any = None,
        error: StepError | None = None,
    ) -> Run:
        run, _ = self._apply(run_id, core.StepFinished(step_id, attempt, result, error))
        return run

    def step_lost(self, run_id: str, step_id: str, attempt: int, worker: str) -> Run:
        run, _ = self._apply(run_id, core.StepLost(step_id, attempt, worker))
        return run

    def requeue_step(self, run_id: str, step_id: str) -> bool:
        """Enqueue a queued step's job again under the same id, for a job RQ lost.

        The worker-side reaper calls it when Redis evicted the job or the worker that
        dequeued it died before the step started. A duplicate is harmless: the start
        check refuses it. False when the step is no longer queued.
        """
        run = self.get_run(run_id)
        st = run.steps.get(step_id)
        if st is None or st.status is not StepStatus.QUEUED or not st.job_id:
            return False
        timeout = self.workflow_of(run).step(step_id).timeout
        self.store.enqueue(run, core.StepJob(step_id, st.job_id, st.attempt, st.dispatch, timeout))
        return True

    def fire_due_timers(self, now: datetime | None = None, limit: int = 100) -> int:
        """Apply every timer that is due (expiries, sleeps, retries, drain timeouts)."""
        moment = now or self.clock()
        fired = 0
        for member in self.store.claim_due_timers(moment, limit):
            run_id, kind, step_id, token = parse_timer_member(member)
            try:
                self._apply(run_id, core.TimerFired(kind, step_id, token), now=moment)  # type: ignore[arg-type]
                fired += 1
            except (CommandRefused, NotFound) as exc:
                log.info("timer ignored", extra={"timer": member, "reason": str(exc)})
            self.store.drop_timer(member)
        return fired

    # -- retention -----------------------------------------------------------------------

    def retention_of(self, workflow_id: str) -> float:
        """Seconds a finished run of ``workflow_id`` is kept: its current definition's
        ``settings.retention``, else the engine's (a policy, so a changed file applies to old runs)."""
        workflow = self.catalog.workflows.get(workflow_id)
        override = workflow.settings.retention if workflow is not None else None
        return override or self.retention

    def purge_finished(self, now: datetime | None = None, limit: int = retention_rules.PURGE_LIMIT) -> int:
        """Remove the finished runs kept longer than their retention (see :mod:`engine.retention`)."""
        overrides = [w.settings.retention for w in self.catalog.workflows.values() if w.settings.retention]
        shortest = min([self.retention, *overrides])
        moment = now or self.clock()
        return retention_rules.purge_finished(self.store, self.retention_of, shortest, moment, limit)

    def trim_feed(self) -> int:
        """Drop global feed entries older than the retention; runs keep their own events."""
        return retention_rules.trim_feed(self.store, self.retention)

    # -- queries -------------------------------------------------------------------------

    def resolve(self, run_ref: str) -> str:
        """A full run id from an id or a unique prefix of at least 8 characters."""
        ref = run_ref.strip().lower()
        if self.redis.exists(self.keys.run(ref)):
            return ref
        if len(ref) < MIN_PREFIX:
            raise NotFound(
                f"No run {run_ref!r}. Name a run by its id or by at least {MIN_PREFIX} characters of it."
            )
        matches = self.store.ids_with_prefix(ref, limit=6)
        if not matches:
            raise NotFound(f"No run {run_ref!r}.")
        if len(matches) > 1:
            raise AmbiguousRunId(run_ref, matches)
        return matches[0]

    def get_run(self, run_ref: str) -> Run:
        run = self.store.load(self.resolve(run_ref))
        if run is None:
            raise NotFound(f"No run {run_ref!r}.")
        return run

    def events(self, run_ref: str, after: str | None = None, limit: int = 1000) -> list[Event]:
        return self.store.events(self.resolve(run_ref), after, limit)

    def context(self, run_ref: str) -> dict[str, Any]:
        """What templates of the run see, plus each step's arguments: the run's data view."""
        run = self.get_run(run_ref)
        ctx = core.template_context(run)
        for step_id, step in run.steps.items():
            ctx["steps"][step_id]["args"] = step.args
        return ctx

    def list_runs(
        self,
        status: RunStatus | None = None,
        workflow_id: str | None = None,
        prefix: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        """Runs newest first, filtered; ``cursor`` continues where the last page ended.

        The narrowest index is read in batches and the other filters applied to each
        batch, so a page costs a few round trips however many runs are stored.
        """
        limit = max(1, min(limit, 500))
        ids: Iterator[str]
        if prefix:
            ids = iter(self.store.ids_with_prefix(prefix.lower(), limit=100_000))
        elif status is not None:
            ids = self.store.scan_index(self.keys.by_status(status))
        elif workflow_id:
            ids = self.store.scan_index(self.keys.by_workflow(workflow_id))
        else:
            ids = self.store.scan_index(self.keys.runs, min_score=ts(since) if since else None)

        def keep(run: Run | None) -> bool:
            return run is not None and (
                (status is None or run.status is status)
                and (workflow_id is None or run.workflow_id == workflow_id)
                and (since is None or run.created_at >= since)
            )

        offset = int(cursor or 0)
        page: list[tuple[int, Run]] = []
        positions = itertools.count(offset)
        rest = itertools.islice(ids, offset, None)
        while len(page) <= limit and (batch := list(itertools.islice(rest, 100))):
            runs = self.store.load_aligned(batch)
            page.extend((pos, run) for pos, run in zip(positions, runs, strict=False) if keep(run))  # type: ignore[misc]
        if len(page) <= limit:
            return RunPage([run for _, run in page], None)
        return RunPage([run for _, run in page[:limit]], str(page[limit][0]))

    def pending_tasks(self, run_ref: str | None = None, limit: int = 200) -> list[PendingTask]:
        if run_ref is not None:
            one = self.get_run(run_ref)
            return [PendingTask(one, s.task) for s in one.open_tasks() if s.task]
        members = self.redis.zrange(self.keys.pending_tasks, 0, limit - 1)
        pairs = [m.split(":", 1) for m in texts(members)]
        runs = {r.run_id: r for r in self.store.load_many(sorted({p[0] for p in pairs}))}
        tasks: list[PendingTask] = []
        for run_id, task_id in pairs:
            run = runs.get(run_id)
            step = run.steps.get(task_id) if run else None
            if run and step and step.task:
                tasks.append(PendingTask(run, step.task))
        return tasks

    def command_center(self, rows: int = 25) -> CommandCenter:
        """The four inbox sections with their counts, from indexes (never a scan of all runs)."""
        now = self.clock()
        keys = self.keys
        recent = ts(now - FAILED_RECENTLY)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(keys.pending_tasks)
        for status in (RunStatus.DRAINING, RunStatus.RUNNING, RunStatus.PAUSED, RunStatus.QUEUED):
            pipe.zcard(keys.by_status(status))
        for status in (RunStatus.FAILED, RunStatus.STOPPED):
            pipe.zcount(keys.by_status(status), recent, "+inf")
        pending, draining, running, paused, queued, failed, stopped = pipe.execute()
        center = CommandCenter(
            counts={
                "pending": pending,
                "draining": draining,
                "running": running + paused + queued,
                "failed": failed + stopped,
            }
        )
        center.awaiting_approval = self.pending_tasks(limit=rows)
        center.stopping_gracefully = self._runs_in(keys.by_status(RunStatus.DRAINING), rows)
        active = [RunStatus.RUNNING, RunStatus.PAUSED, RunStatus.QUEUED]
        center.running_now = sorted(
            (r for s in active for r in self._runs_in(keys.by_status(s), rows)),
            key=lambda r: r.created_at,
            reverse=True,
        )[:rows]
        failed_runs = [
            r
            for s in (RunStatus.FAILED, RunStatus.STOPPED)
            for r in self._runs_in(keys.by_status(s), rows, min_score=recent)
        ]
        center.failed_recently = sorted(
            failed_runs, key=lambda r: r.finished_at or r.updated_at, reverse=True
        )[:rows]
        return center

    def _runs_in(self, key: str, rows: int, min_score: float | None = None) -> list[Run]:
        if min_score is None:
            ids = self.redis.zrevrange(key, 0, rows - 1)
        else:
            ids = self.redis.zrevrangebyscore(key, "+inf", min_score, start=0, num=rows)
        return self.store.load_many(texts(ids))

    # -- internals -----------------------------------------------------------------------

    def _command(self, run_ref: str, command: core.Command) -> Run:
        run, _ = self._apply(self.resolve(run_ref), command)
        return run

    def _apply(
        self, run_id: str, command: core.Command, now: datetime | None = None
    ) -> tuple[Run, Outcome | None]:
        def decide(_pipe: Pipeline, run: Run) -> Outcome:
            return core.apply(self.workflow_of(run), run, command, now or self.clock())

        run, outcome = self.store.transact(run_id, decide)
        if outcome is not None and outcome.changed:
            self._after_commit(outcome)
        return run, outcome

    def _after_commit(self, outcome: Outcome) -> None:
        """Side effects that cannot be part of the transaction: they act on other processes."""
        for job_id in outcome.kill_jobs:
            # Not executing (yet) is fine: the worker's start check will refuse the job.
            with contextlib.suppress(InvalidJobOperation, NoSuchJobError):
                send_stop_job_command(self.redis, job_id)
        if outcome.ended:
            self._admit_waiting(self.workflow_of(outcome.run))  # a slot is free

    def _admit_waiting(self, workflow: Workflow) -> None:
        """Start queued runs of ``workflow`` while it has room under its concurrency limit."""
        limit = workflow.settings.concurrency
        active_key = self.keys.active(workflow.id)
        admission_key = self.keys.admission(workflow.id)
        while True:
            oldest = self.redis.zrange(admission_key, 0, 0)
            if not oldest:
                return
            run_id = texts(oldest)[0]

            def admit(pipe: Pipeline, run: Run) -> Outcome | None:
                if run.status is not RunStatus.QUEUED:
                    return None
                if limit is not None and pipe.zcard(active_key) >= limit:
                    return None
                return core.apply(workflow, run, core.Admit(Actor.system("admission")), self.clock())

            run, outcome = self.store.transact(run_id, admit, watch=[active_key])
            if outcome is None:
                if run.status is RunStatus.QUEUED:
                    return  # full: the next run to finish admits it
                self.redis.zrem(admission_key, run_id)  # stale entry
