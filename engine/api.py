"""The command API: the one way in for Slack, REST, webhooks, the CLI and workers.

Each command names a run by its id or a unique prefix of at least 8 characters,
carries the :class:`~engine.model.Actor` who asked, and returns the run as it is
after the change. A command that does not fit raises a
:class:`~engine.errors.SwitchboardError` whose message says why and what is possible.
Reads (a run, lists, pending tasks, the Command Center) are :mod:`engine.queries`'s;
the methods here that answer them delegate to ``engine.queries``.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import redis
from redis.asyncio import Redis as AsyncRedis
from redis.client import Pipeline
from rq import Queue
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError

from engine import analytics, core, evidence
from engine import retention as retention_rules
from engine.catalog import Catalog
from engine.core import Outcome
from engine.errors import CommandRefused, DeliveryInProgress, InvalidInput, NotFound
from engine.intake import AcceptedRun
from engine.model import (
    Actor,
    Event,
    EventType,
    Run,
    RunStatus,
    StepError,
    StepState,
    StepStatus,
)
from engine.queries import (
    CommandCenter,
    EventFilter,
    EventPage,
    LiveQueries,
    OpenQuestion,
    PendingTask,
    Queries,
    RunPage,
)
from engine.store import Keys, RunStore, new_run_id, parse_timer_member
from engine.views import RUN_ACTIONS
from engine.workflow import InputError, Workflow, validate_inputs

log = logging.getLogger(__name__)

RECENT_RUNS = 4096  # runs whose workflow definition a process remembers (see Engine._remember_digest)

STEP_JOB = "worker.jobs.execute_step"
EVENT_DELIVERY_TTL_SECONDS = 7 * 86400  # how long a delivered event's id is remembered against replays
EVENT_DELIVERY_LEASE_SECONDS = 30  # how long a delivery under way holds its id (one that died lets go)
EVENT_DELIVERY_WAIT_SECONDS = 5.0  # how long a second delivery of an id waits for the first's answer


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class StartedStep:
    """What a worker needs to execute a step it was allowed to start."""

    proceed: bool
    message: str
    run: Run
    step: StepState
    workflow: Workflow


@dataclass(frozen=True)
class ClaimedStep:
    """A step a worker's report started for that worker (:meth:`Engine.step_finished_then_next`):
    its RQ job, taken off the queue for it, and the job's timeout in seconds."""

    job_id: str
    job_timeout: int
    started: StartedStep


@dataclass(frozen=True)
class EventDelivery:
    """What delivering an event did: the runs it woke, then or (``duplicate``) the first time."""

    run_ids: list[str]
    duplicate: bool = False


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
        self.queries = Queries(self.store, clock)  # the read side; the methods below delegate to it
        self._saved_digests: set[str] = set()  # snapshots this process has stored in Redis
        self._workflows_by_digest: dict[str, Workflow] = {w.digest: w for w in catalog.workflows.values()}
        self._run_digests: OrderedDict[str, str] = OrderedDict()  # recent runs' definitions

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

    def answer(self, run_ref: str, step_id: str, actor: Actor, answer: str) -> Run:
        """Answer an ``ask`` step's question; the answer is the step's result."""
        return self._command(run_ref, core.AnswerQuestion(actor, step_id, answer or ""))

    def request_changes(self, run_ref: str, task_id: str, actor: Actor, comment: str) -> Run:
        """The third decision on a task: what the workflow does next is its ``on_changes_requested``."""
        return self._command(run_ref, core.RequestChanges(actor, task_id, comment or ""))

    def replay(
        self,
        run_ref: str,
        actor: Actor,
        inputs: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Run:
        """Run a finished run again as a new run, linked both ways, inputs optionally overridden.

        With an ``idempotency_key`` seen before, the replay that key started (linked once).
        """
        original = self.get_run(run_ref)
        if not original.status.terminal:
            raise CommandRefused(
                f"Cannot replay run {original.short_id}: it is {original.status.value};"
                " only completed, failed or stopped runs can be replayed."
                f" You can {RUN_ACTIONS[original.status]}."
            )
        # A replay runs the definition the original ran, not whatever the file says now.
        merged = {**original.inputs, **(inputs or {})}
        trigger = {"kind": "replay", "of": original.run_id}
        replay = self._create(
            self.workflow_of(original), merged, actor, trigger, idempotency_key, replay_of=original.run_id
        )
        if replay.run_id in original.replays:
            return replay  # a retry: that replay is linked already

        def link(run: Run) -> Outcome:
            out = Outcome(run=run.clone())
            out.run.replays.append(replay.run_id)
            out.events.append(
                Event(
                    type=EventType.RUN_REPLAYED,
                    at=self.clock(),
                    actor=actor,
                    run_id=run.run_id,
                    data={"replay_run_id": replay.run_id},
                )
            )
            return out

        self.store.transact(original.run_id, link)
        return replay

    def recover(
        self,
        run_ref: str,
        actor: Actor,
        from_step: str | None = None,
        inputs: dict[str, Any] | None = None,
        force: bool = False,
    ) -> Run:
        """Continue a failed or stopped run, the same run, from its failed step (or ``from_step``).

        Succeeded steps keep their results; the others, and with ``from_step`` that step and
        everything downstream of it, run again as their next attempt (see ``core.Recover``).
        ``inputs`` correct the run's inputs and are validated as a start's are; a step that
        already ran and is not idempotent is refused unless ``force``.
        """
        run = self.get_run(run_ref)
        corrected = None
        if inputs:
            try:
                corrected = validate_inputs(self.workflow_of(run), {**run.inputs, **inputs})
            except InputError as exc:
                raise InvalidInput(str(exc), exc.problems) from exc
        recovered = self._command(run.run_id, core.Recover(actor, from_step, corrected, force))
        if recovered.status is RunStatus.QUEUED:  # under a concurrency limit: admitted if there is room
            self._admit_waiting(self.workflow_of(recovered))
            return self.get_run(recovered.run_id)
        return recovered

    def evidence(
        self, run_ref: str, actor: Actor, attachments: Mapping[str, Any] | None = None
    ) -> evidence.EvidencePack:
        """The run's evidence pack (see :mod:`engine.evidence`), its digest recorded in the run's events.

        ``attachments`` are files the edges add (the Slack app's message references); the
        ``evidence_exported`` event names the digest, the file and who exported it.
        """
        run = self.get_run(run_ref)
        events: list[Event] = []
        while page := self.events(run.run_id, events[-1].id if events else None, 1000):
            events += page
        now = self.clock()
        pack = evidence.build_pack(run, self.workflow_of(run), events, actor, now, attachments)

        def record(current: Run) -> Outcome:
            out = Outcome(run=current.clone())
            data = {"digest": pack.digest, "filename": pack.filename, "bytes": len(pack.content)}
            out.events.append(
                Event(type=EventType.EVIDENCE_EXPORTED, at=now, actor=actor, run_id=run.run_id, data=data)
            )
            return out

        self.store.transact(run.run_id, record)
        return pack

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
        claim = secrets.token_hex(8)
        deadline = time.monotonic() + EVENT_DELIVERY_WAIT_SECONDS
        while not self.store.claim_event_delivery(delivery, claim, EVENT_DELIVERY_LEASE_SECONDS):
            earlier = self.store.event_delivered(delivery)
            if earlier is not None:
                return EventDelivery(earlier, duplicate=True)
            if time.monotonic() > deadline:
                raise DeliveryInProgress(
                    f"Delivery {delivery!r} is being handled by another request; try again shortly."
                )
            time.sleep(0.02)
        try:
            woken = self.deliver_event(name, key, payload, actor)
        except BaseException:
            with contextlib.suppress(redis.RedisError):
                self.store.release_event_delivery(delivery, claim)
            raise
        self.store.record_event_delivery(delivery, woken, EVENT_DELIVERY_TTL_SECONDS)
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

    def step_finished_then_next(
        self,
        run_id: str,
        step_id: str,
        attempt: int,
        worker: str,
        result: Any = None,
        error: StepError | None = None,
    ) -> ClaimedStep | None:
        """A worker's report that starts, in the same commit and for that ``worker``, the
        step it makes ready (:class:`engine.core.StepFinishedThenNext`); that step, for the
        worker to run now, or None if the report started none."""
        finished = core.StepFinished(step_id, attempt, result, error)
        run, outcome = self._apply(run_id, core.StepFinishedThenNext(finished, worker))
        if outcome is None or outcome.claimed is None:
            return None
        claimed = outcome.claimed
        step = run.steps[claimed.step_id]
        started = StartedStep(proceed=True, message="", run=run, step=step, workflow=self.workflow_of(run))
        return ClaimedStep(claimed.job_id, self.store.job_timeout(claimed), started)

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

    # -- queries (the read side, engine.queries) ------------------------------------------

    def resolve(self, run_ref: str) -> str:
        """A full run id from an id or a unique prefix of at least 8 characters."""
        return self.queries.resolve(run_ref)

    def get_run(self, run_ref: str) -> Run:
        return self.queries.get_run(run_ref)

    def run_or_accepted(self, run_ref: str) -> Run | AcceptedRun:
        """The run, or what a webhook start accepted and not started yet will be (:mod:`engine.intake`)."""
        return self.queries.run_or_accepted(run_ref)

    def events(self, run_ref: str, after: str | None = None, limit: int = 1000) -> list[Event]:
        return self.queries.events(run_ref, after, limit)

    def context(self, run_ref: str) -> dict[str, Any]:
        """What templates of the run see, plus each step's arguments: the run's data view."""
        return self.queries.context(run_ref)

    def list_runs(
        self,
        status: RunStatus | None = None,
        workflow_id: str | None = None,
        prefix: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> RunPage:
        """Runs newest first, filtered; ``offset`` (a page's ``next_offset``) continues after a page."""
        return self.queries.list_runs(status, workflow_id, prefix, since, limit, offset)

    def pending_tasks(self, run_ref: str | None = None, limit: int = 200) -> list[PendingTask]:
        return self.queries.pending_tasks(run_ref, limit)

    def open_questions(self, run_ref: str | None = None, limit: int = 200) -> list[OpenQuestion]:
        return self.queries.open_questions(run_ref, limit)

    def command_center(self, rows: int = 25) -> CommandCenter:
        return self.queries.command_center(rows)

    def search_events(self, where: EventFilter, limit: int = 50, before: str | None = None) -> EventPage:
        """Events of all runs, newest first, filtered; ``before`` (a page's ``next_before``) continues."""
        return self.queries.search_events(where, limit, before)

    def analytics_summary(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> analytics.Summary:
        """The figures of a window (default the last 7 days), workflows named as the catalog names them."""
        names = {w.id: w.name for w in self.catalog.workflows.values()}
        return self.queries.analytics_summary(since, until, names)

    def analytics_timeseries(
        self, bucket: analytics.Bucket = "hour", since: datetime | None = None, until: datetime | None = None
    ) -> analytics.Timeseries:
        return self.queries.analytics_timeseries(bucket, since, until)

    def live_queries(self, aredis: AsyncRedis) -> LiveQueries:
        """The read side on an asyncio client (event streams, the global feed, gauges)."""
        return LiveQueries(aredis, self.keys)

    # -- internals -----------------------------------------------------------------------

    def _command(self, run_ref: str, command: core.Command) -> Run:
        run, _ = self._apply(self.resolve(run_ref), command)
        return run

    def _apply(
        self, run_id: str, command: core.Command, now: datetime | None = None
    ) -> tuple[Run, Outcome | None]:
        def decide(run: Run) -> Outcome:
            return core.apply(self.workflow_of(run), run, command, now or self.clock())

        known = self._workflows_by_digest.get(self._run_digests.get(run_id, ""))

        def read_next(outcome: Outcome) -> list[str]:
            return core.steps_read_next(command, outcome, self.workflow_of(outcome.run))

        run, outcome = self.store.transact(
            run_id, decide, steps=core.steps_named(command, known), read_after=read_next
        )
        self._remember_digest(run)
        if outcome is not None and outcome.changed:
            self._after_commit(outcome)
        return run, outcome

    def _remember_digest(self, run: Run) -> None:
        """Which workflow definition a run ran, for the next command on it: a worker reports
        the step it started, and the store can load the steps that may start next at once."""
        self._run_digests[run.run_id] = run.workflow_digest
        self._run_digests.move_to_end(run.run_id)
        if len(self._run_digests) > RECENT_RUNS:
            self._run_digests.popitem(last=False)

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

        def admit(pipe: Pipeline, run: Run) -> Outcome | None:
            if run.status is not RunStatus.QUEUED:
                return None
            if limit is not None and self.store.admitted_count(pipe, workflow.id) >= limit:
                return None
            return core.apply(workflow, run, core.Admit(Actor.system("admission")), self.clock())

        while (run_id := self.store.oldest_waiting(workflow.id)) is not None:
            slots = [self.keys.admitted(workflow.id)]
            run, outcome = self.store.transact_watching(run_id, admit, watch=slots)
            if outcome is None:
                if run.status is RunStatus.QUEUED:
                    return  # full: the next run to finish admits it
                self.store.stop_waiting(workflow.id, run_id)  # stale entry
