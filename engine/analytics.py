"""Analytics: runs, steps, durations, approval waits and failures, counted per hour as they happen.

Counting when a run changes is what keeps the figures cheap however many runs are stored:
the transaction that commits a transition (:meth:`engine.store.RunStore.write`) also adds
what it counts (:func:`tally`) to the hash of the hour it happened in, so a summary of a
week reads 168 small hashes and never a run document. Each hour's hash expires
:data:`KEEP_SECONDS` after its last write (hours are written while they last, so that is
about 91 days after the hour): counters never grow without bound and outlive the runs
they counted, whose retention (``SWITCHBOARD_RETENTION``) is usually shorter.

What an hour's hash holds (``wf`` a workflow id, which cannot contain ``|``):

- ``started|wf``: runs that started (left ``queued``; a recovered run is not started again);
  ``ended|<status>|wf``: runs that finished completed, failed or stopped; ``failure|<code>|wf``:
  their failure codes; ``recovered|wf``: failed or stopped runs recovered. An ending is counted
  when it happens: a run that failed, was recovered and then completed counts one failure, one
  recovery and one completion (the failure did happen; the recovery says it was made good);
- ``steps|wf``: steps executed (finished after they ran: succeeded or failed; skipped and
  cancelled steps are not counted);
- ``run_n|wf|<bin>`` and ``run_ms|wf|<bin>``: finished runs' durations (start to finish);
  ``wait_n|<bin>`` and ``wait_ms|<bin>``: approval waits (task opened to decided by a
  person); ``expired``: tasks nobody decided in time.

Durations are log-scale histograms: a bin counts its samples and sums their milliseconds,
and bins are 20 to a decade (each 12% wider than the last). A percentile is the mean of the
bin its rank falls in: exact when the samples there are equal (one approval, one run), and
otherwise within the bin's width of the true value.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field, computed_field

from engine.errors import InvalidInput
from engine.model import (
    FAILURE_MEANINGS,
    RUN_END_EVENT_OF,
    Event,
    EventType,
    FailureCode,
    Run,
)

HOUR = 3600
DAY = 86400
DEFAULT_WINDOW = timedelta(days=7)
MAX_WINDOW = timedelta(days=90)  # how far back figures go (and the longest window asked for)
KEEP_SECONDS = int(MAX_WINDOW.total_seconds()) + DAY  # an hour's counters outlive the longest window
BINS_PER_DECADE = 20
Bucket = Literal["hour", "day"]
_ENDED_STATUS = {event: status for status, event in RUN_END_EVENT_OF.items()}
_OUTCOMES = ("started", "completed", "failed", "stopped", "recovered", "steps")


def hour_of(moment: datetime) -> int:
    """The hour a moment falls in, as hours since the epoch: the counters' bucket key."""
    return int(moment.timestamp() // HOUR)


def bin_of(milliseconds: int) -> int:
    """The histogram bin of a duration: 0 below a millisecond, then 20 bins a decade."""
    return 0 if milliseconds < 1 else 1 + int(math.log10(milliseconds) * BINS_PER_DECADE)


def _millis(span: timedelta) -> int:
    return max(0, round(span.total_seconds() * 1000))


def tally(run: Run, events: Iterable[Event]) -> dict[int, Counter[str]]:
    """What one committed change of ``run`` adds to the counters, by hour (see the module docstring)."""
    counts: dict[int, Counter[str]] = defaultdict(Counter)
    wf = run.workflow_id
    for event in events:
        hour = counts[hour_of(event.at)]
        match event.type:
            case EventType.RUN_STARTED if not event.data.get("recovered"):
                hour[f"started|{wf}"] += 1
            case EventType.RUN_RECOVERED:
                hour[f"recovered|{wf}"] += 1
            case EventType.STEP_FAILED:
                hour[f"steps|{wf}"] += 1
            case EventType.STEP_COMPLETED if not event.data.get("skipped"):
                hour[f"steps|{wf}"] += 1
            case EventType.TASK_EXPIRED:
                hour["expired"] += 1
            case EventType.TASK_COMPLETED:
                step = run.steps.get(event.step_id or "")
                if step is not None and step.task is not None:
                    _sample(hour, "wait", _millis(event.at - step.task.opened_at))
            case kind if kind.ends_run:
                hour[f"ended|{_ENDED_STATUS[kind].value}|{wf}"] += 1
                if run.failure is not None:
                    hour[f"failure|{run.failure.code.value}|{wf}"] += 1
                if run.started_at is not None:
                    _sample(hour, f"run|{wf}", _millis((run.finished_at or event.at) - run.started_at))
    return {moment: hour for moment, hour in counts.items() if hour}


def _sample(counts: Counter[str], name: str, milliseconds: int) -> None:
    kind, _, rest = name.partition("|")
    suffix = f"{rest}|" if rest else ""
    at = bin_of(milliseconds)
    counts[f"{kind}_n|{suffix}{at}"] += 1
    counts[f"{kind}_ms|{suffix}{at}"] += milliseconds


# -- the figures -------------------------------------------------------------------------------


class Durations(BaseModel):
    """A distribution of durations in seconds (None where there is nothing to measure)."""

    count: int = 0
    median_seconds: float | None = None
    p95_seconds: float | None = None
    mean_seconds: float | None = None


class Outcomes(BaseModel):
    """How many runs started and finished each way, and how many steps were executed."""

    runs_started: int = 0
    runs_completed: int = 0
    runs_failed: int = 0
    runs_stopped: int = 0
    runs_recovered: int = 0  # failed or stopped runs that were recovered (their ending stays counted)
    steps_executed: int = 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def runs_finished(self) -> int:
        return self.runs_completed + self.runs_failed + self.runs_stopped

    @computed_field  # type: ignore[prop-decorator]
    @property
    def success_rate(self) -> float | None:
        """Completed runs out of finished ones (completed, failed, stopped); None if none finished."""
        return self.runs_completed / self.runs_finished if self.runs_finished else None


class WorkflowFigures(Outcomes):
    workflow_id: str
    name: str
    durations: Durations


class ApprovalWaits(BaseModel):
    decided: int = Field(description="tasks decided by a person in the window")
    expired: int = Field(description="tasks nobody decided before they expired")
    wait: Durations = Field(description="from the task opening to its decision")


class FailureCount(BaseModel):
    code: FailureCode
    meaning: str
    count: int


class Summary(BaseModel):
    """The figures of a window: ``since`` and ``until`` are its whole hours (UTC)."""

    since: datetime
    until: datetime
    totals: Outcomes
    durations: Durations = Field(description="finished runs' durations, every workflow")
    workflows: list[WorkflowFigures]
    approvals: ApprovalWaits
    failures: list[FailureCount]


class Point(Outcomes):
    start: datetime
    approvals_decided: int = 0


class Timeseries(BaseModel):
    bucket: Bucket
    since: datetime
    until: datetime
    points: list[Point]


@dataclass(frozen=True)
class Window:
    """The hours a question covers: from ``since`` to ``until``, aligned out to whole buckets."""

    since: datetime
    until: datetime

    @classmethod
    def asked(
        cls, now: datetime, since: datetime | None, until: datetime | None, bucket: Bucket = "hour"
    ) -> Window:
        """The window a caller asks for (default: the last 7 days), refused with a sentence if it
        ends before it starts or reaches back further than the counters are kept."""
        until = until or now
        since = since or until - DEFAULT_WINDOW
        if since >= until:
            raise InvalidInput(
                f"The window must end after it starts; since {since.isoformat()} is not before "
                f"until {until.isoformat()}."
            )
        if since < _start_of_day(now - MAX_WINDOW):  # a day's leeway: "90 days ago" computed a moment ago
            raise InvalidInput(
                f"Analytics go back {MAX_WINDOW.days} days; since {since.isoformat()} is earlier."
            )
        step = DAY if bucket == "day" else HOUR
        start = math.floor(since.timestamp() / step) * step
        end = math.ceil(until.timestamp() / step) * step
        return cls(datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC))

    @property
    def hours(self) -> range:
        return range(hour_of(self.since), hour_of(self.until))


def _start_of_day(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass
class _Totals:
    """Counter fields of some hours, added up and read back by meaning."""

    outcomes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    runs: dict[str, dict[int, list[int]]] = field(default_factory=lambda: defaultdict(dict))
    waits: dict[int, list[int]] = field(default_factory=dict)
    expired: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    def add(self, counts: Mapping[str, int]) -> None:
        for name, value in counts.items():
            kind, *parts = name.split("|")
            match kind, parts:
                case "started" | "steps" | "recovered", [wf]:
                    self.outcomes[wf][kind] += value
                case "ended", [status, wf]:
                    self.outcomes[wf][status] += value
                case "failure", [code, _wf]:
                    self.failures[code] += value
                case "run_n" | "run_ms", [wf, at]:
                    _bin_add(self.runs[wf], int(at), kind, value)
                case "wait_n" | "wait_ms", [at]:
                    _bin_add(self.waits, int(at), kind, value)
                case "expired", []:
                    self.expired += value

    def outcome(self, workflow_id: str | None = None) -> dict[str, int]:
        rows = [self.outcomes[workflow_id]] if workflow_id else list(self.outcomes.values())
        total = {kind: sum(row[kind] for row in rows) for kind in _OUTCOMES}
        return {
            "runs_started": total["started"],
            "runs_completed": total["completed"],
            "runs_failed": total["failed"],
            "runs_stopped": total["stopped"],
            "runs_recovered": total["recovered"],
            "steps_executed": total["steps"],
        }


def _bin_add(bins: dict[int, list[int]], at: int, kind: str, value: int) -> None:
    n_ms = bins.setdefault(at, [0, 0])
    n_ms[1 if kind.endswith("_ms") else 0] += value


def durations(bins: Mapping[int, list[int]]) -> Durations:
    """Count, median, p95 and mean of a histogram (see the module docstring)."""
    filled = sorted((at, n, ms) for at, (n, ms) in bins.items() if n > 0)
    count = sum(n for _, n, _ in filled)
    if not count:
        return Durations()

    def quantile(q: float) -> float:
        rank = max(1, math.ceil(q * count))
        seen = 0
        for _, n, ms in filled:
            seen += n
            if seen >= rank:
                return ms / n / 1000
        raise AssertionError("unreachable: the ranks add up to count")

    mean = sum(ms for _, _, ms in filled) / count / 1000
    return Durations(count=count, median_seconds=quantile(0.5), p95_seconds=quantile(0.95), mean_seconds=mean)


def summarize(window: Window, hours: Iterable[Mapping[str, int]], names: Mapping[str, str]) -> Summary:
    """The figures of ``window`` from its hours' counters; ``names`` names workflows by id."""
    totals = _Totals()
    for counts in hours:
        totals.add(counts)
    everything: dict[int, list[int]] = {}
    for bins in totals.runs.values():
        for at, (n, ms) in bins.items():
            _bin_add(everything, at, "_n", n)
            _bin_add(everything, at, "_ms", ms)
    workflows = [
        WorkflowFigures(
            workflow_id=wf,
            name=names.get(wf, wf),
            durations=durations(totals.runs.get(wf, {})),
            **totals.outcome(wf),
        )
        for wf in sorted(set(totals.outcomes) | set(totals.runs), key=lambda w: names.get(w, w).casefold())
    ]
    failures = [
        FailureCount(code=FailureCode(code), meaning=FAILURE_MEANINGS.get(FailureCode(code), ""), count=n)
        for code, n in totals.failures.most_common()
        if code in FailureCode.__members__
    ]
    return Summary(
        since=window.since,
        until=window.until,
        totals=Outcomes(**totals.outcome()),
        durations=durations(everything),
        workflows=workflows,
        approvals=ApprovalWaits(
            decided=sum(n for n, _ in totals.waits.values()),
            expired=totals.expired,
            wait=durations(totals.waits),
        ),
        failures=failures,
    )


def series(window: Window, bucket: Bucket, hours: Iterable[tuple[int, Mapping[str, int]]]) -> Timeseries:
    """One point per hour or day of ``window`` (aligned to whole days for ``day``), empty ones too."""
    step = DAY if bucket == "day" else HOUR
    first = int(window.since.timestamp())
    points = [_Totals() for _ in range(first, int(window.until.timestamp()), step)]
    for hour, counts in hours:
        index = (hour * HOUR - first) // step
        if 0 <= index < len(points):
            points[index].add(counts)
    return Timeseries(
        bucket=bucket,
        since=window.since,
        until=window.until,
        points=[
            Point(
                start=datetime.fromtimestamp(first + i * step, UTC),
                approvals_decided=sum(n for n, _ in totals.waits.values()),
                **totals.outcome(),
            )
            for i, totals in enumerate(points)
        ],
    )
