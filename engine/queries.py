"""The engine's read side: runs by id, prefix and filters, pending tasks, the Command Center, event feeds.

Commands (:mod:`engine.api`) change runs; everything here only reads them, through the
store's indexes, never a scan of all runs. Two halves share the rules:

- :class:`Queries`, on the engine's (synchronous) Redis client: what the CLI, workers and
  the edges' engine calls read. :class:`~engine.api.Engine` delegates its read methods here.
- :class:`LiveQueries`, on an asyncio client: what must wait without holding a thread,
  such as following a run's events (Server-Sent Events), tailing the global feed
  (``/metrics``, the Slack feed through a consumer group) and reading gauges.

A run id is 16 hex characters; people name a run by it or by a unique prefix of at
least :data:`MIN_PREFIX` characters. A run accepted from a webhook and not started yet
has no document: :meth:`Queries.run_or_accepted` answers for it with the intake's view.

Two reads span runs without reading them all: :meth:`Queries.search_events` pages through
the global feed newest first within a scan budget, and :meth:`Queries.analytics_summary`
and :meth:`Queries.analytics_timeseries` add up the hourly counters of
:mod:`engine.analytics`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel, computed_field
from redis.asyncio.client import Pipeline as AsyncPipeline

from engine import analytics, core
from engine.errors import AmbiguousRunId, NotFound
from engine.intake import AcceptedRun, read_accepted
from engine.model import Event, EventType, Question, Run, RunStatus, Severity, StepState, Task
from engine.redis_idioms import ensure_group, text
from engine.store import Keys, RunStore, decode_run, event_from_entry, ts

MIN_PREFIX = 8
FAILED_RECENTLY = timedelta(hours=24)
PAGE_LIMIT = 500  # runs per page at most
_BATCH = 100  # run documents loaded per round trip while filtering a page
SEARCH_BUDGET = 10_000  # global feed entries one event search looks at, at most
_FEED_BATCH = 500  # feed entries read per round trip while searching
# Feed entries are in the order they were recorded; their times come from the clocks of the
# processes that recorded them, which may differ by this much. A search for events since a
# moment stops at the first event older than that by more.
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class PendingTask:
    """A human task waiting for a decision, with the run it belongs to."""

    run: Run
    task: Task


@dataclass(frozen=True)
class OpenQuestion:
    """An ``ask`` step's question waiting for an answer, with its run."""

    run: Run
    step_id: str
    question: Question


@dataclass(frozen=True)
class RunPage:
    """One page of runs; ``next_offset`` is where the next page starts (None: this was the last)."""

    runs: list[Run]
    next_offset: int | None


@dataclass(frozen=True)
class EventFilter:
    """What an event search keeps; an empty set or None keeps everything."""

    types: frozenset[EventType] = frozenset()
    severities: frozenset[Severity] = frozenset()
    workflow_id: str | None = None
    run_prefix: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def keeps_entry(self, event_type: str, run_id: str) -> bool:
        """What can be judged from a feed entry's fields, before its event is decoded."""
        try:
            kind = EventType(event_type)
        except ValueError:
            return False
        return (
            (not self.types or kind in self.types)
            and (not self.severities or kind.severity in self.severities)
            and (not self.run_prefix or run_id.startswith(self.run_prefix.lower()))
        )


class LoggedEvent(Event):
    """An event found by a search, with its run's workflow and its severity."""

    workflow_id: str | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def severity(self) -> Severity:
        return self.type.severity


class EventPage(BaseModel):
    """One page of an event search, newest first.

    ``next_before`` continues the search (the ``before`` of the next page), None when
    nothing older can match. ``budget_reached`` says the search stopped after looking at
    ``searched`` events, its budget, rather than at the oldest event or a full page.
    """

    events: list[LoggedEvent]
    next_before: str | None
    searched: int
    budget_reached: bool


@dataclass
class CommandCenter:
    """The operator inbox: its sections (tasks and questions waiting on people, draining,
    running and recently failed runs), each with its total count and first rows."""

    awaiting_approval: list[PendingTask] = field(default_factory=list)
    awaiting_answer: list[OpenQuestion] = field(default_factory=list)
    stopping_gracefully: list[Run] = field(default_factory=list)
    running_now: list[Run] = field(default_factory=list)
    failed_recently: list[Run] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


class Queries:
    """Reads of runs, tasks and the Command Center; see the module docstring."""

    def __init__(self, store: RunStore, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.clock = clock

    # -- one run -------------------------------------------------------------------------

    def resolve(self, run_ref: str) -> str:
        """A full run id from an id or a unique prefix of at least 8 characters."""
        ref = run_ref.strip().lower()
        if self.store.exists(ref):
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

    def run_or_accepted(self, run_ref: str) -> Run | AcceptedRun:
        """The run, or, for a webhook start accepted and not started yet, what it will be.

        An accepted run is named by its full id (the one its webhook was answered with).
        A starter may start it between the two reads, so the run is looked for again.
        """
        try:
            return self.get_run(run_ref)
        except NotFound:
            accepted = read_accepted(self.store.redis, self.store.keys, run_ref.strip().lower())
            if accepted is not None:
                return accepted
            return self.get_run(run_ref)

    def events(self, run_ref: str, after: str | None = None, limit: int = 1000) -> list[Event]:
        return self.store.events(self.resolve(run_ref), after, limit)

    def context(self, run_ref: str) -> dict[str, Any]:
        """What templates of the run see, plus each step's arguments: the run's data view."""
        run = self.get_run(run_ref)
        ctx = core.template_context(run)
        steps = ctx["steps"]
        ctx["steps"] = {step_id: {**steps[step_id], "args": step.args} for step_id, step in run.steps.items()}
        return ctx

    # -- many runs -----------------------------------------------------------------------

    def list_runs(
        self,
        status: RunStatus | None = None,
        workflow_id: str | None = None,
        prefix: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
        until: datetime | None = None,
    ) -> RunPage:
        """Runs newest first, filtered; ``offset`` (a page's ``next_offset``) continues after a page.

        ``since`` and ``until`` bound when a run was created (from ``since``, before ``until``).
        The narrowest index is read in batches and the other filters applied to each
        batch, so a page costs a few round trips however many runs are stored; the indexes
        scored by creation (all runs, a workflow's) are read only within the time range.
        """
        limit = max(1, min(limit, PAGE_LIMIT))
        keys = self.store.keys
        ids: Iterator[str]
        if prefix:
            ids = iter(self.store.ids_with_prefix(prefix.lower(), limit=100_000))
        elif status is not None:
            ids = self.store.scan_index(keys.by_status(status))
        else:
            index = keys.by_workflow(workflow_id) if workflow_id else keys.runs
            low, below = (ts(since) if since else None), (ts(until) if until else None)
            ids = self.store.scan_index(index, min_score=low, below=below)

        def keep(run: Run | None) -> bool:
            return run is not None and (
                (status is None or run.status is status)
                and (workflow_id is None or run.workflow_id == workflow_id)
                and (since is None or run.created_at >= since)
                and (until is None or run.created_at < until)
            )

        page: list[tuple[int, Run]] = []
        positions = itertools.count(offset)
        rest = itertools.islice(ids, offset, None)
        while len(page) <= limit and (batch := list(itertools.islice(rest, _BATCH))):
            runs = self.store.load_aligned(batch)
            page.extend((pos, run) for pos, run in zip(positions, runs, strict=False) if keep(run))  # type: ignore[misc]
        if len(page) <= limit:
            return RunPage([run for _, run in page], None)
        return RunPage([run for _, run in page[:limit]], page[limit][0])

    def worker_heartbeats(self, names: list[str]) -> dict[str, datetime]:
        """When each worker named (a step's ``worker``) last sent a heartbeat; one round trip."""
        return self.store.worker_heartbeats(names) if names else {}

    def runs_with_status(self, status: RunStatus) -> Iterator[Run]:
        """Every run now in ``status``, newest first, loaded a batch at a time."""
        ids = self.store.scan_index(self.store.keys.by_status(status))
        while batch := list(itertools.islice(ids, _BATCH)):
            yield from (run for run in self.store.load_aligned(batch) if run is not None)

    def pending_tasks(self, run_ref: str | None = None, limit: int = 200) -> list[PendingTask]:
        """Tasks waiting for a decision: one run's, or all runs' (oldest first, up to ``limit``)."""
        if run_ref is not None:
            one = self.get_run(run_ref)
            return [PendingTask(one, s.task) for s in one.open_tasks() if s.task]
        found = self._indexed_steps(self.store.pending_task_members(limit))
        return [PendingTask(run, step.task) for run, step in found if step.task]

    def open_questions(self, run_ref: str | None = None, limit: int = 200) -> list[OpenQuestion]:
        """Questions waiting for an answer: one run's, or all runs' (oldest first, up to ``limit``)."""
        if run_ref is not None:
            one = self.get_run(run_ref)
            return [OpenQuestion(one, s.step_id, s.question) for s in one.open_questions() if s.question]
        found = self._indexed_steps(self.store.open_question_members(limit))
        asked = [(run, s.step_id, s.question) for run, s in found if s.awaits_answer]
        return [OpenQuestion(run, step_id, question) for run, step_id, question in asked if question]

    def _indexed_steps(self, members: list[tuple[str, str]]) -> list[tuple[Run, StepState]]:
        """The (run, step) of each (run id, step id) an index listed, in its order; the runs
        loaded in one round trip, an entry whose run or step is gone left out."""
        runs = {r.run_id: r for r in self.store.load_many(sorted({run_id for run_id, _ in members}))}
        listed = [(runs.get(run_id), step_id) for run_id, step_id in members]
        return [(run, run.steps[step_id]) for run, step_id in listed if run and step_id in run.steps]

    def command_center(self, rows: int = 25) -> CommandCenter:
        """The inbox sections with their counts, from indexes (never a scan of all runs)."""
        recent = ts(self.clock() - FAILED_RECENTLY)
        n = self.store.status_counts(since={RunStatus.FAILED: recent, RunStatus.STOPPED: recent})
        center = CommandCenter(
            counts={
                "pending": self.store.pending_task_count(),
                "questions": self.store.open_question_count(),
                "draining": n[RunStatus.DRAINING],
                "running": n[RunStatus.RUNNING] + n[RunStatus.PAUSED] + n[RunStatus.QUEUED],
                "failed": n[RunStatus.FAILED] + n[RunStatus.STOPPED],  # the section: both
                "failed_runs": n[RunStatus.FAILED],
                "stopped_runs": n[RunStatus.STOPPED],
            }
        )
        center.awaiting_approval = self.pending_tasks(limit=rows)
        center.awaiting_answer = self.open_questions(limit=rows)
        center.stopping_gracefully = self.store.latest_with_status(RunStatus.DRAINING, rows)
        active = [RunStatus.RUNNING, RunStatus.PAUSED, RunStatus.QUEUED]
        center.running_now = sorted(
            (r for s in active for r in self.store.latest_with_status(s, rows)),
            key=lambda r: r.created_at,
            reverse=True,
        )[:rows]
        failed_runs = [
            r
            for s in (RunStatus.FAILED, RunStatus.STOPPED)
            for r in self.store.latest_with_status(s, rows, since=recent)
        ]
        center.failed_recently = sorted(
            failed_runs, key=lambda r: r.finished_at or r.updated_at, reverse=True
        )[:rows]
        return center

    # -- across runs: the event log and analytics ---------------------------------------

    def search_events(
        self,
        where: EventFilter,
        limit: int = 50,
        before: str | None = None,
        budget: int | None = None,
    ) -> EventPage:
        """Events of all runs that ``where`` keeps, newest first, ``limit`` to a page.

        Reads the global feed backwards from entry ``before`` in batches and stops at a full
        page, at the first event older than ``where.since`` (less the clocks' skew), or after
        ``budget`` entries (default :data:`SEARCH_BUDGET`): a search never reads the whole feed
        at once. The feed holds what retention keeps (``SWITCHBOARD_RETENTION``), up to its
        length cap.
        """
        budget = budget or SEARCH_BUDGET
        found: list[LoggedEvent] = []
        searched = 0
        cursor = before
        oldest = where.since - CLOCK_SKEW if where.since else None
        while searched < budget:
            entries = self.store.feed_before(cursor, min(_FEED_BATCH, budget - searched))
            if not entries:
                return EventPage(events=found, next_before=None, searched=searched, budget_reached=False)
            kept = [
                (entry_id, fields)
                for entry_id, fields in entries
                if where.keeps_entry(text(fields.get("type", b"")), text(fields.get("run_id", b"")))
            ]
            workflows = self._workflows_of(kept)
            for entry_id, fields in entries:
                searched += 1
                cursor = entry_id
                if entry_id not in workflows:
                    continue
                workflow_id = workflows[entry_id]
                if where.workflow_id and workflow_id != where.workflow_id:
                    continue
                event = event_from_entry(entry_id, fields)
                if oldest is not None and event.at < oldest:
                    return EventPage(events=found, next_before=None, searched=searched, budget_reached=False)
                if (where.since and event.at < where.since) or (where.until and event.at >= where.until):
                    continue
                if len(found) == limit:  # one more than a page: there is a next page
                    return EventPage(
                        events=found, next_before=found[-1].id, searched=searched, budget_reached=False
                    )
                found.append(LoggedEvent(**event.model_dump(), workflow_id=workflow_id))
        return EventPage(events=found, next_before=cursor, searched=searched, budget_reached=True)

    def _workflows_of(self, entries: list[tuple[str, dict[str, Any]]]) -> dict[str, str | None]:
        """The workflow of each entry's run: the feed says it, else (an entry written before it
        did) the run's document, None for a run that is gone."""
        found = {entry_id: text(f["workflow_id"]) for entry_id, f in entries if "workflow_id" in f}
        unnamed = {text(f.get("run_id", b"")) for entry_id, f in entries if entry_id not in found}
        if unnamed:
            ids = sorted(unnamed)
            runs = {run_id: run for run_id, run in zip(ids, self.store.load_aligned(ids), strict=True)}
            for entry_id, f in entries:
                if entry_id not in found:
                    run = runs.get(text(f.get("run_id", b"")))
                    found[entry_id] = run.workflow_id if run else None
        return found

    def analytics_summary(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        names: dict[str, str] | None = None,
    ) -> analytics.Summary:
        """Success rate, runs, steps, durations, approval waits and failure codes of a window
        (default the last 7 days, at most 90), from hourly counters: no run is read."""
        window = analytics.Window.asked(self.clock(), since, until)
        hours = self.store.stats_hours(window.hours)
        return analytics.summarize(window, (counts for _, counts in hours), names or {})

    def analytics_timeseries(
        self, bucket: analytics.Bucket = "hour", since: datetime | None = None, until: datetime | None = None
    ) -> analytics.Timeseries:
        """Runs started and finished by outcome, steps and approvals per hour or day of a window."""
        window = analytics.Window.asked(self.clock(), since, until, bucket)
        return analytics.series(window, bucket, self.store.stats_hours(window.hours))

    # -- the global feed -----------------------------------------------------------------

    def follow_feed(self, group: str) -> str:
        """Create consumer group ``group`` at the global feed's end, unless it exists.

        Returns the id of the feed's last entry before that (``0-0`` when empty), so a
        new follower can tell the runs already under way from those that start after it.
        """
        last = self.store.feed_end()
        ensure_group(self.store.redis, self.store.keys.events, group, start="$")
        return last


@dataclass(frozen=True)
class FeedEntry:
    """An entry of the global feed as a consumer group hands it out.

    The event is decoded on demand, so an entry that cannot be understood can still be
    acknowledged by its ``entry_id``.
    """

    entry_id: str
    fields: dict[Any, Any]

    def event(self) -> Event:
        return event_from_entry(self.entry_id, self.fields)


@dataclass(frozen=True)
class Gauges:
    """What ``/metrics`` reports as gauges: all from index sizes, never a scan of runs."""

    runs: dict[RunStatus, int]
    pending_tasks: int
    intake_waiting: int  # webhook starts accepted and not started yet


class LiveQueries:
    """The read side on an asyncio client, for readers that wait without holding a thread."""

    def __init__(self, aredis: aioredis.Redis, keys: Keys) -> None:
        self.redis = aredis
        self.keys = keys

    async def run_events(
        self, run_id: str, after: str = "0-0", block_ms: int | None = None, count: int = 200
    ) -> list[Event]:
        """Events of one run after event id ``after``, waiting up to ``block_ms`` for some."""
        return await self._read(self.keys.run_events(run_id), after, block_ms, count)

    async def feed_events(
        self, after: str = "$", block_ms: int | None = None, count: int = 500
    ) -> list[Event]:
        """Events of all runs (the global feed) after entry id ``after`` (``$``: from now on)."""
        return await self._read(self.keys.events, after, block_ms, count)

    async def _read(self, key: str, after: str, block_ms: int | None, count: int) -> list[Event]:
        reply: Any = await self.redis.xread({key: after}, block=block_ms, count=count)
        if not reply:
            return []
        return [event_from_entry(entry_id, fields) for entry_id, fields in reply[0][1]]

    async def read_feed(
        self, group: str, consumer: str, count: int | None = None, block_ms: int | None = None
    ) -> list[FeedEntry]:
        """New feed entries for ``consumer`` of ``group`` (see :meth:`Queries.follow_feed`)."""
        reply: Any = await self.redis.xreadgroup(
            group, consumer, {self.keys.events: ">"}, count=count, block=block_ms
        )
        return [FeedEntry(text(i), fields) for _stream, batch in reply or [] for i, fields in batch]

    async def claim_feed(self, group: str, consumer: str, idle_ms: int, count: int) -> list[FeedEntry]:
        """Entries another consumer of ``group`` read and left unacknowledged for ``idle_ms``."""
        stream = self.keys.events
        reply: Any = await self.redis.xautoclaim(stream, group, consumer, idle_ms, "0-0", count=count)
        return [FeedEntry(text(entry_id), fields) for entry_id, fields in reply[1] if fields]

    async def ack_feed(self, group: str, entry_id: str) -> None:
        await self.redis.xack(self.keys.events, group, entry_id)

    def ack_feed_in(self, pipe: AsyncPipeline, group: str, entry_id: str) -> None:
        """Queue the acknowledgement in ``pipe``, to commit with the caller's other writes."""
        pipe.xack(self.keys.events, group, entry_id)

    async def runs(self, run_ids: list[str]) -> dict[str, Run]:
        """The runs of ``run_ids`` that exist, by id."""
        if not run_ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.get(self.keys.run(run_id))
            pipe.hgetall(self.keys.run_steps(run_id))
        replies = await pipe.execute()
        runs = (decode_run(head, steps) for head, steps in zip(replies[::2], replies[1::2], strict=True))
        return {run.run_id: run for run in runs if run is not None}

    async def gauges(self) -> Gauges:
        pipe = self.redis.pipeline(transaction=False)
        statuses = list(RunStatus)
        for status in statuses:
            pipe.zcard(self.keys.by_status(status))
        pipe.zcard(self.keys.pending_tasks)
        pipe.xlen(self.keys.intake)
        *counts, pending, intake = await pipe.execute()
        return Gauges(dict(zip(statuses, counts, strict=True)), pending, intake)

    async def step_durations(self) -> dict[str, int]:
        """The all-time step-duration counters (:mod:`engine.metrics`), as stored."""
        counted: dict[Any, Any] = await self.redis.hgetall(self.keys.step_durations)
        return {text(name): int(value) for name, value in counted.items()}
