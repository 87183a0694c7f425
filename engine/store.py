"""Runs in Redis: a run's head and its steps' states, its event stream, and the indexes queries use.

A run is stored as its head (a JSON document with every step's status, :meth:`Keys.run`)
and a hash of its steps' states (:meth:`Keys.run_steps`), so a change writes the head and
the steps it read, never the whole run: a step of a 500-step run costs what a step of a
10-step run does (:class:`engine.model.Steps` parses a step only when it is read). A run
stored whole by an earlier version (its head holding every step) is read as it is and
stored split on its next change.

A change to a run is optimistic: load the run, compute the outcome with the pure core,
then one script commits the new head and steps together with its events, index updates,
timers and RQ enqueues, if the run's head is still the one read (:meth:`RunStore.transact`).
If another process changed the run in between, the change is recomputed on the new state;
so concurrent commands never interleave, and a step is enqueued exactly when its state says
so. A change that also depends on other keys (admission under a concurrency limit) and a
finished run's removal (:meth:`RunStore.purge`) are WATCH/MULTI transactions.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, get_args

import redis
from redis.client import Pipeline
from rq import Queue
from rq.job import Job
from rq.results import Result
from rq.utils import utcparse
from rq.worker import Worker

from engine import analytics, metrics
from engine.core import Outcome, StepJob, Timer, TimerKind
from engine.errors import NotFound
from engine.model import (
    ACTIVE_RUN_STATUSES,
    STEP_STATUSES_ONLY,
    Event,
    EventType,
    FetchSteps,
    Run,
    RunStatus,
)
from engine.redis_idioms import CLAIM_DUE_SCRIPT, text, texts
from engine.workflow import Workflow

COMMITTED_RUNS = 128  # runs a process keeps as it committed them (see RunStore.transact)
EVENTS_MAXLEN = 100_000  # the global feed the bot and metrics follow; runs keep their own
TIMER_LEASE_SECONDS = 30.0
# A job taken off the queue by a command may still be in a worker's hands (dequeued a moment
# before, or executing and sent a stop): RQ finishes such a job and sets its own expiry. One no
# worker holds would stay forever, so it gets an expiry too: a day, as RQ keeps failed jobs.
CANCELLED_JOB_TTL_SECONDS = 86400
RUN_TIMER_KINDS = ("run_timeout", "drain_timeout")  # timers of the run itself (no step, token 0)
_CLAIMED = "claimed:"  # an event delivery's id while a delivery holds it, before its run ids
# Let go of a delivery id, unless the claim expired and another delivery holds it now.
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
# A run's head and steps in one round trip (inside a WATCH, too: a pipeline in immediate mode):
# all its steps, or (for a transition) those named in ARGV, the rest read when first read.
_LOAD_RUN = "return {redis.call('GET', KEYS[1]), redis.call('HGETALL', KEYS[2])}"
# A change's commands, run only if the run's head (KEYS[1]) is still the one the change was
# computed from. ARGV: the head's SHA-1, how many commands, then each as its word count and
# words (_command_words), then the steps to read from the run's steps (KEYS[2]) once
# committed. The reply: 0 if the head changed, else the steps read.
_COMMIT_IF_UNCHANGED = """
if redis.sha1hex(redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end
local at = 3
for _ = 1, tonumber(ARGV[2]) do
  local count = tonumber(ARGV[at])
  redis.call(unpack(ARGV, at + 1, at + count))
  at = at + count + 1
end
if at > #ARGV then return {} end
return redis.call('HMGET', KEYS[2], unpack(ARGV, at))
"""
_LOAD_HEAD_AND_STEPS = """
local steps = {}
if #ARGV > 0 then steps = redis.call('HMGET', KEYS[2], unpack(ARGV)) end
return {redis.call('GET', KEYS[1]), steps}
"""


def ts(moment: datetime) -> float:
    return moment.timestamp()


def new_run_id() -> str:
    """16 random lowercase hex characters: the prefix index (``runs:ids``, read by ZRANGEBYLEX)
    and the lower-casing of a person's run reference rely on that alphabet."""
    return os.urandom(8).hex()  # secrets.token_hex's bytes, without its two calls (webhook path)


@dataclass(frozen=True)
class Keys:
    """Every Redis key the engine uses, under one prefix so tests and tenants can share a server."""

    prefix: str

    def run(self, run_id: str) -> str:
        return f"{self.prefix}run:{run_id}"

    def run_steps(self, run_id: str) -> str:
        """A run's steps' states, a field per step (the head, :meth:`run`, holds their statuses)."""
        return f"{self.prefix}run:{run_id}:steps"

    def run_events(self, run_id: str) -> str:
        return f"{self.prefix}run:{run_id}:events"

    @property
    def events(self) -> str:
        return f"{self.prefix}events"

    @property
    def runs(self) -> str:
        return f"{self.prefix}runs"

    @property
    def run_ids(self) -> str:
        return f"{self.prefix}runs:ids"

    def by_status(self, status: RunStatus | str) -> str:
        return f"{self.prefix}runs:status:{status}"

    def by_workflow(self, workflow_id: str) -> str:
        return f"{self.prefix}runs:workflow:{workflow_id}"

    def admitted(self, workflow_id: str) -> str:
        """Runs of a workflow admitted past its concurrency limit and not finished (queued ones are
        not: they wait in :meth:`admission`). The key keeps its first name, so existing data counts."""
        return f"{self.prefix}runs:active:{workflow_id}"

    def admission(self, workflow_id: str) -> str:
        """Queued runs of a workflow waiting for a free slot, oldest first."""
        return f"{self.prefix}runs:admission:{workflow_id}"

    @property
    def pending_tasks(self) -> str:
        return f"{self.prefix}tasks:pending"

    @property
    def open_questions(self) -> str:
        """``ask`` steps waiting for an answer, by when they asked (members as :func:`step_member`)."""
        return f"{self.prefix}questions:open"

    @property
    def timers(self) -> str:
        return f"{self.prefix}timers"

    def waits(self, wait_key: str) -> str:
        return f"{self.prefix}waits:{wait_key}"

    def workflow_snapshot(self, digest: str) -> str:
        return f"{self.prefix}workflow:{digest}"

    def idempotency(self, key: str) -> str:
        return f"{self.prefix}idempotency:{key}"

    @property
    def intake(self) -> str:
        return f"{self.prefix}intake"

    def intake_request(self, run_id: str) -> str:
        return f"{self.prefix}intake:request:{run_id}"

    def intake_delivery(self, delivery: str) -> str:
        return f"{self.prefix}intake:delivery:{delivery}"

    @property
    def step_durations(self) -> str:
        """Step durations for Prometheus, for all time (:mod:`engine.metrics`)."""
        return f"{self.prefix}metrics:step_durations"

    def stats_hour(self, hour: int) -> str:
        """An hour's analytics counters (:mod:`engine.analytics`); ``hour`` counts from the epoch."""
        return f"{self.prefix}stats:hour:{hour}"

    def event_delivery(self, delivery: str) -> str:
        """An event delivery's id: claimed while it is delivered, then the runs it woke."""
        return f"{self.prefix}event-delivery:{delivery}"


def timer_member(run_id: str, timer: Timer) -> str:
    return _timer_member(run_id, timer.kind, timer.step_id, timer.token)


def _timer_member(run_id: str, kind: str, step_id: str, token: int) -> str:
    return f"{run_id}|{kind}|{step_id}|{token}"


def run_timer_members(run: Run) -> list[str]:
    """Every timer ``run`` can have set: the run's own, and each step's for each of its attempts."""
    members = [_timer_member(run.run_id, kind, "", 0) for kind in RUN_TIMER_KINDS]
    step_kinds = [kind for kind in get_args(TimerKind) if kind not in RUN_TIMER_KINDS]
    for st in run.steps.values():
        for token in range(1, st.attempt + 1):
            members += [_timer_member(run.run_id, kind, st.step_id, token) for kind in step_kinds]
    return members


def parse_timer_member(member: str) -> tuple[str, str, str, int]:
    run_id, kind, step_id, token = member.split("|", 3)
    return run_id, kind, step_id, int(token)


def step_member(run_id: str, step_id: str) -> str:
    """A run's step in a set shared by all runs (pending tasks, waits)."""
    return f"{run_id}:{step_id}"


task_member = step_member


def parse_step_member(member: str) -> tuple[str, str]:
    run_id, step_id = member.split(":", 1)
    return run_id, step_id


@dataclass(frozen=True)
class Written:
    """What :meth:`RunStore.write` stores of a run: its head, and the steps it writes (JSON by id)."""

    head: str
    steps: dict[str, str | bytes]


class RunStore:
    """Reads and writes runs, their events and indexes: the engine's Redis commands on them are here.

    Used by the command API (:class:`engine.api.Engine`), the read side
    (:class:`engine.queries.Queries`) and retention, never by the edges directly. The
    intake's stream is :mod:`engine.intake`'s; asyncio readers use
    :class:`engine.queries.LiveQueries` over the same :class:`Keys`.
    """

    def __init__(
        self,
        connection: redis.Redis,
        keys: Keys,
        queue: Queue,
        step_job: str,
        default_job_timeout: float,
    ) -> None:
        self.redis = connection
        self.keys = keys
        self.queue = queue
        self.step_job = step_job
        self.default_job_timeout = default_job_timeout
        # Due timers are claimed for a lease: one whose process died fires again, not lost.
        self._claim_timers = connection.register_script(CLAIM_DUE_SCRIPT)
        self._commit = connection.register_script(_COMMIT_IF_UNCHANGED)
        # The runs this process changed last, as committed: head and the steps known with it.
        self._committed: dict[str, tuple[bytes, dict[str, str | bytes]]] = {}
        self._committed_lock = threading.Lock()
        # RQ's records of a job that name it by id, beside its hash and result stream.
        self._job_registries = [
            queue.finished_job_registry.key,
            queue.failed_job_registry.key,
            queue.canceled_job_registry.key,
            queue.deferred_job_registry.key,
            queue.scheduled_job_registry.key,
        ]

    # -- reads ---------------------------------------------------------------------------

    def load(self, run_id: str) -> Run | None:
        return self.load_aligned([run_id])[0]

    def load_many(self, run_ids: list[str]) -> list[Run]:
        return [run for run in self.load_aligned(run_ids) if run is not None]

    def load_aligned(self, run_ids: list[str]) -> list[Run | None]:
        """Runs in the order asked, None where a run is gone; one round trip."""
        if not run_ids:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.get(self.keys.run(run_id))
                pipe.hgetall(self.keys.run_steps(run_id))
            replies = pipe.execute()
        return [decode_run(head, steps) for head, steps in zip(replies[::2], replies[1::2], strict=True)]

    def exists(self, run_id: str) -> bool:
        return bool(self.redis.exists(self.keys.run(run_id)))

    def worker_heartbeats(self, names: list[str]) -> dict[str, datetime]:
        """When each RQ worker named last sent a heartbeat (``last_heartbeat`` of RQ's own worker
        hash, which a worker renews while it runs a job); a worker RQ no longer knows is left out."""
        with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hget(Worker.redis_worker_namespace_prefix + name, "last_heartbeat")
            beats = pipe.execute()
        return {name: utcparse(text(beat)) for name, beat in zip(names, beats, strict=True) if beat}

    def ids_with_prefix(self, prefix: str, limit: int) -> list[str]:
        found = self.redis.zrangebylex(self.keys.run_ids, f"[{prefix}", f"[{prefix}\xff", start=0, num=limit)
        return [text(r) for r in found]

    def events(self, run_id: str, after: str | None, limit: int) -> list[Event]:
        start = f"({after}" if after else "-"
        entries: Any = self.redis.xrange(self.keys.run_events(run_id), min=start, count=limit)
        return [event_from_entry(entry_id, fields) for entry_id, fields in entries]

    def latest_with_status(self, status: RunStatus, count: int, since: float | None = None) -> list[Run]:
        """The ``count`` runs that entered ``status`` last (at ``since`` or later), newest first."""
        key = self.keys.by_status(status)
        if since is None:
            ids = self.redis.zrevrange(key, 0, count - 1)
        else:
            ids = self.redis.zrevrangebyscore(key, "+inf", since, start=0, num=count)
        return self.load_many(texts(ids))

    def status_counts(self, since: dict[RunStatus, float]) -> dict[RunStatus, int]:
        """How many runs are in each status; for those in ``since``, how many entered it since then."""
        statuses = list(RunStatus)
        with self.redis.pipeline(transaction=False) as pipe:
            for status in statuses:
                if status in since:
                    pipe.zcount(self.keys.by_status(status), since[status], "+inf")
                else:
                    pipe.zcard(self.keys.by_status(status))
            return dict(zip(statuses, pipe.execute(), strict=True))

    def pending_task_members(self, limit: int) -> list[tuple[str, str]]:
        """(run id, task id) of the tasks waiting for a decision, oldest first."""
        members = self.redis.zrange(self.keys.pending_tasks, 0, limit - 1)
        return [parse_step_member(m) for m in texts(members)]

    def open_question_members(self, limit: int) -> list[tuple[str, str]]:
        """(run id, step id) of the ``ask`` steps waiting for an answer, oldest first."""
        members = self.redis.zrange(self.keys.open_questions, 0, limit - 1)
        return [parse_step_member(m) for m in texts(members)]

    def open_question_count(self) -> int:
        return int(self.redis.zcard(self.keys.open_questions))

    def pending_task_count(self) -> int:
        return int(self.redis.zcard(self.keys.pending_tasks))

    def feed_end(self) -> str:
        """The id of the global feed's last entry (``0-0`` when it is empty)."""
        last: Any = self.redis.xrevrange(self.keys.events, count=1)
        return text(last[0][0]) if last else "0-0"

    def feed_before(self, before: str | None, count: int) -> list[tuple[str, dict[str, Any]]]:
        """Up to ``count`` global feed entries, newest first, older than entry ``before`` (None: the end)."""
        entries: Any = self.redis.xrevrange(
            self.keys.events, max=f"({before}" if before else "+", count=count
        )
        return [(text(entry_id), {text(k): v for k, v in fields.items()}) for entry_id, fields in entries]

    def stats_hours(self, hours: Iterable[int]) -> list[tuple[int, dict[str, int]]]:
        """The analytics counters of each hour asked (empty for an hour nothing happened in)."""
        asked = list(hours)
        with self.redis.pipeline(transaction=False) as pipe:
            for hour in asked:
                pipe.hgetall(self.keys.stats_hour(hour))
            found = pipe.execute()
        return [
            (hour, {text(k): int(v) for k, v in counts.items()})
            for hour, counts in zip(asked, found, strict=True)
        ]

    def save_workflow(self, workflow: Workflow) -> None:
        self.redis.set(self.keys.workflow_snapshot(workflow.digest), workflow.model_dump_json(by_alias=True))

    def load_workflow(self, digest: str) -> Workflow | None:
        raw = self.redis.get(self.keys.workflow_snapshot(digest))
        return Workflow.model_validate_json(raw) if raw else None

    def scan_index(
        self,
        key: str,
        newest_first: bool = True,
        chunk: int = 200,
        min_score: float | None = None,
        below: float | None = None,
    ) -> Iterator[str]:
        """Run ids from a sorted-set index, in chunks, so a page never loads the whole set;
        scored from ``min_score`` and below ``below`` (excluded) when given."""
        offset = 0
        low = "-inf" if min_score is None else min_score
        high = "+inf" if below is None else f"({below}"
        while True:
            if newest_first:
                ids = self.redis.zrevrangebyscore(key, high, low, start=offset, num=chunk)
            else:
                ids = self.redis.zrangebyscore(key, low, high, start=offset, num=chunk)
            if not ids:
                return
            yield from texts(ids)
            offset += len(ids)

    # -- writes --------------------------------------------------------------------------

    def create(self, outcome: Outcome, idempotency_key: str | None = None) -> tuple[Run, bool]:
        """Store a new run; with an idempotency key seen before, return the earlier run."""
        run = outcome.run
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    if idempotency_key:
                        key = self.keys.idempotency(idempotency_key)
                        pipe.watch(key)
                        existing = pipe.get(key)
                        if existing:
                            pipe.reset()
                            earlier = self.load(text(existing))
                            if earlier is not None:
                                return earlier, False
                    pipe.multi()
                    if idempotency_key:
                        run.idempotency_key = idempotency_key  # so the run's removal takes it along
                        pipe.set(self.keys.idempotency(idempotency_key), run.run_id, ex=7 * 86400)
                    pipe.zadd(self.keys.run_ids, {run.run_id: 0})
                    pipe.zadd(self.keys.runs, {run.run_id: ts(run.created_at)})
                    pipe.zadd(self.keys.by_workflow(run.workflow_id), {run.run_id: ts(run.created_at)})
                    pipe.zadd(self.keys.admission(run.workflow_id), {run.run_id: ts(run.created_at)})
                    self.write(pipe, None, outcome)
                    pipe.execute()
                    return run, True
                except redis.WatchError:
                    continue

    def transact(
        self,
        run_id: str,
        decide: Callable[[Run], Outcome | None],
        steps: Iterable[str] = (),
        read_after: Callable[[Outcome], Iterable[str]] | None = None,
    ) -> tuple[Run, Outcome | None]:
        """Apply ``decide`` to the current run atomically, retrying on a concurrent change.

        Compare and set: the run is read, ``decide`` computes the change, and one script
        commits it only if the run's head is still what was read (every change of a run
        rewrites its head), else the change is computed again on the new state. That is two
        round trips where WATCH, read and MULTI/EXEC took three, and one reply to read where
        EXEC had one per command.

        The run comes with its head and the ``steps`` named (the ones the change is about);
        any other step is read from Redis when first read (:class:`engine.model.Steps`), so a
        transition of a long run reads what it needs, not every step. What it reads is checked
        with the head at commit. A step read after the transaction is read as it is then: a
        caller that wants a consistent picture of the whole run loads it (:meth:`load`).

        A run this process changed last is not read back: its next change starts from the
        head and steps as committed (with the steps ``read_after`` names for the change,
        read by the commit for the change expected next), and the commit's check of the head
        finds out if another process changed it since. So a worker's two reports on a step
        cost a round trip each.
        A refusal, or no change at all, is only ever judged on the run as read from Redis.
        """
        while True:
            with self._committed_lock:
                remembered = self._committed.pop(run_id, None)
            if remembered is not None:
                before, head = self._decode_for_change(run_id, *remembered)
            else:
                before, head = self._load_for_change(run_id, steps)
            try:
                outcome = decide(before)
            except Exception:
                if remembered is None:
                    raise
                continue  # judged on what this process wrote last: judge it on the run as stored
            if outcome is None or not outcome.changed:
                if remembered is None:
                    return before, outcome
                continue  # likewise
            with self.redis.pipeline() as pipe:
                pipe.multi()  # only collects the commands (RQ's enqueue wants a MULTI): never executed
                written = self.write(pipe, before, outcome)
                commands = _command_words(pipe)
            wanted = list(read_after(outcome)) if read_after is not None else []
            read = self._commit_if_unchanged(run_id, head, commands, wanted)
            if read is not None:
                known = {**outcome.run.steps.as_loaded(), **written.steps, **read}
                self._remember(run_id, written.head.encode(), known)
                return outcome.run, outcome

    def _remember(self, run_id: str, head: bytes, steps: dict[str, str | bytes]) -> None:
        """Keep a run as this process committed it, for its next change here (see :meth:`transact`)."""
        with self._committed_lock:  # the web process runs commands on several threads
            self._committed[run_id] = (head, steps)
            if len(self._committed) > COMMITTED_RUNS:
                self._committed.pop(next(iter(self._committed)))

    def transact_watching(
        self,
        run_id: str,
        decide: Callable[[Pipeline, Run], Outcome | None],
        watch: Iterable[str],
    ) -> tuple[Run, Outcome | None]:
        """:meth:`transact` for a change that also depends on other keys: ``watch`` names them,
        and ``decide`` may read them through the pipeline (it is in immediate mode)."""
        key = self.keys.run(run_id)
        with self._committed_lock:
            self._committed.pop(run_id, None)  # read from Redis under the watch
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key, *watch)
                    before, _head = self._load_for_change(run_id, (), pipe)
                    outcome = decide(pipe, before)
                    if outcome is None or not outcome.changed:
                        pipe.reset()
                        return before, outcome
                    pipe.multi()
                    self.write(pipe, before, outcome)
                    pipe.execute()
                    return outcome.run, outcome
                except redis.WatchError:
                    continue

    def _load_for_change(
        self, run_id: str, steps: Iterable[str], client: redis.Redis | Pipeline | None = None
    ) -> tuple[Run, bytes]:
        """The run as a change reads it (its head, the ``steps`` named, the others on demand),
        and its head as stored."""
        key, steps_key = self.keys.run(run_id), self.keys.run_steps(run_id)
        named = list(dict.fromkeys(steps))
        head, found = (client or self.redis).eval(_LOAD_HEAD_AND_STEPS, 2, key, steps_key, *named)
        stored = {step: raw for step, raw in zip(named, found, strict=True) if raw is not None}
        return self._decode_for_change(run_id, head, stored)

    def _decode_for_change(
        self, run_id: str, head: bytes | None, stored: dict[str, str | bytes]
    ) -> tuple[Run, bytes]:
        """The run of ``head`` with the steps ``stored`` in hand, the others read when first read."""
        steps_key = self.keys.run_steps(run_id)

        def fetch(step_ids: list[str]) -> list[bytes | str | None]:
            return self.redis.hmget(steps_key, step_ids)

        run = decode_run(head, stored, fetch)
        if run is None or head is None:
            raise NotFound(f"No run {run_id!r}.")
        return run, head

    def _commit_if_unchanged(
        self, run_id: str, head: bytes, commands: list[Any], read_after: list[str]
    ) -> dict[str, str | bytes] | None:
        """Run ``commands`` (:func:`_command_words`) in one script if the run's head is still
        ``head``, then read the ``read_after`` steps (those stored, by id); None if the head changed."""
        keys = [self.keys.run(run_id), self.keys.run_steps(run_id)]
        reply = self._commit(keys=keys, args=[hashlib.sha1(head).hexdigest(), *commands, *read_after])
        if reply == 0:
            return None
        return {step: raw for step, raw in zip(read_after, reply, strict=True) if raw is not None}

    def write(self, pipe: Pipeline, before: Run | None, outcome: Outcome) -> Written:
        """Queue in ``pipe`` (already in MULTI) everything that commits ``outcome``."""
        run = outcome.run
        run.version = (before.version if before else 0) + 1
        keys = self.keys
        head = run.model_dump_json(context=STEP_STATUSES_ONLY)
        pipe.set(keys.run(run.run_id), head)
        # The steps this change read: the only ones it can have changed.
        touched = run.steps.touched()
        if touched:
            pipe.hset(keys.run_steps(run.run_id), mapping=touched)  # type: ignore[arg-type]
        self._write_indexes(pipe, before, run, touched)
        for event in outcome.events:
            body = event.model_dump_json(exclude={"id"})
            fields: dict[Any, Any] = {"type": event.type, "run_id": run.run_id, "event": body}
            pipe.xadd(keys.run_events(run.run_id), fields)
            feed_fields = {**fields, "workflow_id": run.workflow_id}  # the Logs page filters by it
            pipe.xadd(keys.events, feed_fields, maxlen=EVENTS_MAXLEN, approximate=True)
        for hour, counts in analytics.tally(run, outcome.events).items():
            for name, amount in counts.items():
                pipe.hincrby(keys.stats_hour(hour), name, amount)
            pipe.expire(keys.stats_hour(hour), analytics.KEEP_SECONDS)
        for name, amount in metrics.tally(run, outcome.events).items():
            pipe.hincrby(keys.step_durations, name, amount)
        for timer in outcome.timers:
            pipe.zadd(keys.timers, {timer_member(run.run_id, timer): ts(timer.due)})
        for wait_key, step_id in outcome.waits_added:
            pipe.sadd(keys.waits(wait_key), step_member(run.run_id, step_id))
        for wait_key, step_id in outcome.waits_removed:
            pipe.srem(keys.waits(wait_key), step_member(run.run_id, step_id))
        for job_id in outcome.cancel_jobs:
            pipe.lrem(self.queue.key, 0, job_id)
            pipe.expire(Job.key_for(job_id), CANCELLED_JOB_TTL_SECONDS)
        for job in outcome.enqueue:
            self._enqueue(pipe, run, job)
        if outcome.claimed is not None:
            self._claim(pipe, run, outcome.claimed)
        return Written(head, touched)

    def _write_indexes(self, pipe: Pipeline, before: Run | None, run: Run, touched: Iterable[str]) -> None:
        keys = self.keys
        moment = ts(run.updated_at)
        if before is None or before.status is not run.status:
            if before is not None:
                pipe.zrem(keys.by_status(before.status), run.run_id)
            pipe.zadd(keys.by_status(run.status), {run.run_id: moment})
            if run.status is not RunStatus.QUEUED:
                pipe.zrem(keys.admission(run.workflow_id), run.run_id)
            elif before is not None:  # queued again (a recovery): it waits for a slot from now
                pipe.zadd(keys.admission(run.workflow_id), {run.run_id: moment})
            if run.status in ACTIVE_RUN_STATUSES and run.status is not RunStatus.QUEUED:
                pipe.zadd(keys.admitted(run.workflow_id), {run.run_id: ts(run.created_at)})
            else:
                pipe.zrem(keys.admitted(run.workflow_id), run.run_id)
        # Only a step the change read can have changed: only those can open or close a task.
        for step_id in touched:
            now = run.steps[step_id]
            was = before.steps[step_id] if before is not None and step_id in before.steps else None
            member = step_member(run.run_id, step_id)
            if now.awaits_decision and not (was and was.awaits_decision):
                opened = ts(now.task.opened_at) if now.task else moment
                pipe.zadd(keys.pending_tasks, {member: opened})
            elif was and was.awaits_decision and not now.awaits_decision:
                pipe.zrem(keys.pending_tasks, member)
            if now.awaits_answer and not (was and was.awaits_answer):
                asked = ts(now.question.asked_at) if now.question else moment
                pipe.zadd(keys.open_questions, {member: asked})
            elif was and was.awaits_answer and not now.awaits_answer:
                pipe.zrem(keys.open_questions, member)

    # -- admission -----------------------------------------------------------------------

    def oldest_waiting(self, workflow_id: str) -> str | None:
        """The queued run of ``workflow_id`` that has waited longest for a slot."""
        oldest = self.redis.zrange(self.keys.admission(workflow_id), 0, 0)
        return texts(oldest)[0] if oldest else None

    def admitted_count(self, pipe: Pipeline, workflow_id: str) -> int:
        """How many runs of ``workflow_id`` hold a slot, read in a transaction watching
        :meth:`Keys.admitted` (the pipeline is in immediate mode after WATCH)."""
        return int(pipe.zcard(self.keys.admitted(workflow_id)))

    def stop_waiting(self, workflow_id: str, run_id: str) -> None:
        """Drop a stale admission entry (a run no longer queued)."""
        self.redis.zrem(self.keys.admission(workflow_id), run_id)

    def enqueue(self, run: Run, job: StepJob) -> None:
        """Enqueue a step job outside a run transaction (a re-enqueue of a job RQ lost)."""
        with self.redis.pipeline() as pipe:
            self._enqueue(pipe, run, job)
            pipe.execute()

    def _enqueue(self, pipe: Pipeline, run: Run, job: StepJob) -> None:
        self.queue.enqueue_call(
            self.step_job,
            args=(run.run_id, job.step_id, job.attempt, job.dispatch),
            job_id=job.job_id,
            timeout=self.job_timeout(job),
            result_ttl=600,
            failure_ttl=86400,
            description=f"{run.workflow_id} {run.short_id} {job.step_id} attempt {job.attempt}",
            pipeline=pipe,
        )

    def _claim(self, pipe: Pipeline, run: Run, job: StepJob) -> None:
        """Take a job just enqueued back off the queue for the worker its step started on (eager
        dispatch, :class:`engine.core.StepFinishedThenNext`): RQ's job as any step's, marked as
        that worker's at once, so a stop command finds it before its worker records the start."""
        pipe.lrem(self.queue.key, -1, job.job_id)  # from the tail, where it was just pushed
        pipe.hset(Job.key_for(job.job_id), "worker_name", run.steps[job.step_id].worker or "")

    def job_timeout(self, job: StepJob) -> int:
        """A step job's RQ timeout: the step's own, else the default, in whole seconds (as RQ takes it)."""
        return math.ceil(job.timeout or self.default_job_timeout)

    # -- retention -----------------------------------------------------------------------

    def finished_before(
        self, status: RunStatus, moment: float, offset: int, count: int
    ) -> list[tuple[str, float]]:
        """Runs that entered ``status`` before ``moment``, oldest first, with when they entered it."""
        found: Any = self.redis.zrangebyscore(
            self.keys.by_status(status), "-inf", moment, start=offset, num=count, withscores=True
        )
        return [(text(run_id), float(score)) for run_id, score in found]

    def purge(self, run_id: str) -> bool:
        """Remove a finished run and everything that names it, in one transaction.

        That is: its head, steps and event stream, its entries in every index (all runs, ids,
        status, workflow, admitted, admission, pending tasks, open questions, timers, waits),
        the keys that still point at it (its start's idempotency key, the intake's delivery key
        and request) and RQ's records of its step jobs (hash, result stream, registries, queue),
        whose ids are read off the run's ``step_queued`` events. Shared keys stay: the
        global feed (trimmed by age, :meth:`trim_feed`) and workflow snapshots.

        False, touching nothing, when the run is not finished; True once it is gone (also
        for an index entry whose document was already missing: the entry is removed).
        """
        key = self.keys.run(run_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    head, steps = pipe.eval(_LOAD_RUN, 2, key, self.keys.run_steps(run_id))
                    run = decode_run(head, steps)
                    if run is not None and not run.status.terminal:
                        pipe.reset()
                        return False
                    pointers = self._pointer_keys(run) if run is not None else []
                    owned: list[str] = []
                    if pointers:
                        pipe.watch(*pointers)
                        values = pipe.mget(pointers)
                        owned = [k for k, v in zip(pointers, values, strict=True) if v and text(v) == run_id]
                    job_ids = self._job_ids(pipe, run_id, run)
                    pipe.multi()
                    self._remove(pipe, run_id, run, owned, job_ids)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def _pointer_keys(self, run: Run) -> list[str]:
        """Keys whose value may be this run's id: its start's idempotency key and, for a
        webhook start, the intake's delivery key (``engine.intake.StartRequest.idempotency_key``)."""
        if not run.idempotency_key:
            return []
        pointers = [self.keys.idempotency(run.idempotency_key)]
        delivery = run.idempotency_key.removeprefix("delivery:")
        if delivery != run.idempotency_key:
            pointers.append(self.keys.intake_delivery(delivery))
        return pointers

    def _job_ids(self, pipe: Pipeline, run_id: str, run: Run | None) -> set[str]:
        """Every RQ job id the run's steps were handed to workers under (retries, re-dispatches)."""
        job_ids = {st.job_id for st in run.steps.values() if st.job_id} if run is not None else set()
        start = "-"
        while True:
            entries: Any = pipe.xrange(self.keys.run_events(run_id), min=start, count=1000)
            for entry_id, fields in entries:
                if text(fields.get(b"type") or fields.get("type")) == EventType.STEP_QUEUED:
                    job_id = event_from_entry(entry_id, fields).data.get("job_id")
                    if job_id:
                        job_ids.add(str(job_id))
            if len(entries) < 1000:
                return job_ids
            start = f"({text(entries[-1][0])}"

    def _remove(
        self, pipe: Pipeline, run_id: str, run: Run | None, owned: list[str], job_ids: set[str]
    ) -> None:
        keys = self.keys
        stored = [keys.run(run_id), keys.run_steps(run_id), keys.run_events(run_id)]
        pipe.delete(*stored, keys.intake_request(run_id), *owned)
        pipe.zrem(keys.runs, run_id)
        pipe.zrem(keys.run_ids, run_id)
        for status in RunStatus:
            pipe.zrem(keys.by_status(status), run_id)
        if run is not None:
            pipe.zrem(keys.by_workflow(run.workflow_id), run_id)
            pipe.zrem(keys.admitted(run.workflow_id), run_id)
            pipe.zrem(keys.admission(run.workflow_id), run_id)
            members = [step_member(run_id, step_id) for step_id in run.steps]
            pipe.zrem(keys.pending_tasks, *members)
            pipe.zrem(keys.open_questions, *members)
            pipe.zrem(keys.timers, *run_timer_members(run))
            for st in run.steps.values():
                if st.wait_event:
                    pipe.srem(keys.waits(st.wait_event), step_member(run_id, st.step_id))
        for job_id in sorted(job_ids):
            pipe.delete(Job.key_for(job_id), Result.get_key(job_id))
            pipe.lrem(self.queue.key, 0, job_id)
            for registry in self._job_registries:
                pipe.zrem(registry, job_id)

    def trim_feed(self, max_age_seconds: float) -> int:
        """Drop global feed entries older than ``max_age_seconds``; returns how many.

        Entry ids are times on Redis's clock, so the age is judged on it, no machine's.
        """
        seconds, micros = self.redis.time()
        oldest_ms = max(int(seconds * 1000 + micros // 1000 - max_age_seconds * 1000), 0)
        return int(self.redis.xtrim(self.keys.events, minid=f"{oldest_ms}-0", approximate=False))

    # -- event deliveries ----------------------------------------------------------------

    def claim_event_delivery(self, delivery: str, claim: str, lease_seconds: int) -> bool:
        """Hold delivery id ``delivery`` under ``claim`` for a lease; False if it is held or done."""
        value = f"{_CLAIMED}{claim}"
        return bool(self.redis.set(self.keys.event_delivery(delivery), value, nx=True, ex=lease_seconds))

    def event_delivered(self, delivery: str) -> list[str] | None:
        """The runs a delivery woke once it took effect; None while it is claimed or unknown."""
        raw = self.redis.get(self.keys.event_delivery(delivery))
        if raw is None or text(raw).startswith(_CLAIMED):
            return None
        return list(json.loads(raw)["run_ids"])

    def release_event_delivery(self, delivery: str, claim: str) -> None:
        """Let go of a claim, unless it expired and another delivery holds the id now."""
        self.redis.eval(_RELEASE, 1, self.keys.event_delivery(delivery), f"{_CLAIMED}{claim}")

    def record_event_delivery(self, delivery: str, run_ids: list[str], ttl_seconds: int) -> None:
        """Remember that a delivery took effect, and the runs it woke, for ``ttl_seconds``."""
        self.redis.set(self.keys.event_delivery(delivery), json.dumps({"run_ids": run_ids}), ex=ttl_seconds)

    # -- timers and waits ----------------------------------------------------------------

    def claim_due_timers(self, now: datetime, limit: int = 100) -> list[str]:
        lease = ts(now) + TIMER_LEASE_SECONDS
        claimed = self._claim_timers(keys=[self.keys.timers], args=[ts(now), lease, limit])
        return [text(m) for m in claimed]

    def drop_timer(self, member: str) -> None:
        self.redis.zrem(self.keys.timers, member)

    def waiting_steps(self, wait_key: str) -> list[tuple[str, str]]:
        return [parse_step_member(m) for m in texts(self.redis.smembers(self.keys.waits(wait_key)))]


def _command_words(pipe: Pipeline) -> list[Any]:
    """The commands queued on ``pipe`` (in MULTI mode, never executed: the store's writes and
    RQ's enqueues build them) as the commit script's words: how many, then each as its word
    count and its words. A script runs atomically, as MULTI/EXEC does, and answers once."""
    words: list[Any] = [len(pipe.command_stack)]
    for args, _options in pipe.command_stack:
        words += [len(args), *args]
    return words


def decode_run(
    head: bytes | str | None, steps: dict[Any, Any] | list[Any] | None, fetch: FetchSteps | None = None
) -> Run | None:
    """A run from its stored head and steps' hash (a reply of HGETALL, or of it inside a
    script: a flat list); None when there is no head. ``fetch`` reads the steps not given
    when they are read. A head holding every step (a run stored whole by an earlier
    version) needs no steps."""
    if head is None:
        return None
    if isinstance(steps, list):
        steps = dict(zip(steps[::2], steps[1::2], strict=True))
    states = {text(step_id): state for step_id, state in (steps or {}).items()}
    return Run.model_validate_json(head, context={"steps": states, "fetch": fetch})


def event_from_entry(entry_id: Any, fields: Any) -> Event:
    """Decode an entry of a run's stream or of the global feed."""
    body = fields.get(b"event") or fields.get("event")
    event = Event.model_validate_json(body)
    event.id = text(entry_id)
    return event
