"""Prometheus metrics, written in the text exposition format by hand.

What each metric means:

- ``switchboard_runs{status}``: runs now in each status, from the status indexes
  (a ZCARD each, never a scan of runs). Shared by every process.
- ``switchboard_tasks_pending``: human tasks waiting for a decision (index size).
- ``switchboard_intake_waiting``: runs accepted from webhooks and not started yet (the
  intake stream's length); growing means no worker is starting them.
- ``switchboard_webhook_deliveries_total{source,outcome}``: webhook deliveries by what
  became of them, counted in a Redis hash, so it is the total over every web process
  and survives restarts. Unknown sources are counted under ``source="_unknown"``.
- ``switchboard_step_duration_seconds{workflow,type,outcome}``: a histogram of step
  durations (started to succeeded or failed, from the run's own timestamps; human
  tasks measure how long people took). Only steps that finished while this web
  process followed the global event feed count, like any per-process counter.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from engine.model import EventType, Run, StepStatus
from engine.queries import LiveQueries
from engine.redis_idioms import text
from webhooks.keys import WebKeys

log = logging.getLogger(__name__)

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 86400.0)
FINISHED_EVENTS = frozenset({EventType.STEP_COMPLETED, EventType.STEP_FAILED})
UNKNOWN_SOURCE = "_unknown"


@dataclass
class DeliveryCounts:
    """Delivery outcomes counted in memory and added to the shared Redis hash in batches.

    One HINCRBY per delivery would be a Redis round trip on the webhook hot path; a
    flush each second (and before every scrape, and at shutdown) keeps the total exact.
    """

    aredis: aioredis.Redis
    keys: WebKeys
    pending: Counter[str] = field(default_factory=Counter)

    def count(self, source: str, outcome: str) -> None:
        self.pending[f"{source}|{outcome}"] += 1

    async def flush(self) -> None:
        batch, self.pending = self.pending, Counter()
        if not batch:
            return
        pipe = self.aredis.pipeline(transaction=False)
        for field_name, n in batch.items():
            pipe.hincrby(self.keys.deliveries, field_name, n)
        try:
            await pipe.execute()
        except aioredis.RedisError:
            self.pending.update(batch)  # keep them for the next flush
            raise

    async def flush_every(self, stop: asyncio.Event, seconds: float = 1.0) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)
            try:
                await self.flush()
            except aioredis.RedisError as exc:
                log.warning("delivery counts not flushed", extra={"error": str(exc)})

    async def totals(self) -> dict[str, int]:
        """Deliveries counted by every web process, by ``source|outcome`` (flushed ones)."""
        counted: dict[bytes | str, bytes | str] = await self.aredis.hgetall(self.keys.deliveries)
        return {text(name): int(value) for name, value in counted.items()}


@dataclass
class _Histogram:
    buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    count: int = 0
    total: float = 0.0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(BUCKETS, value)
        if index < len(BUCKETS):
            self.buckets[index] += 1
        self.count += 1
        self.total += value


@dataclass
class StepDurations:
    """Step durations observed by following the global event feed."""

    series: dict[tuple[str, str, str], _Histogram] = field(default_factory=lambda: defaultdict(_Histogram))

    def observe_runs(self, finished: Iterable[tuple[str, int]], runs: dict[str, Run]) -> None:
        for key, attempt in finished:
            run_id, step_id = key.split("|", 1)
            run = runs.get(run_id)
            step = run.steps.get(step_id) if run else None
            if run is None or step is None or step.attempt != attempt:
                continue
            if step.started_at is None or step.finished_at is None:
                continue
            if step.status not in (StepStatus.SUCCEEDED, StepStatus.FAILED):
                continue
            seconds = (step.finished_at - step.started_at).total_seconds()
            self.series[(run.workflow_id, step.type.value, step.status.value)].observe(max(seconds, 0.0))

    async def follow(self, live: LiveQueries, stop: asyncio.Event, block_ms: int = 1000) -> None:
        """Tail the global feed from now on, until ``stop`` is set."""
        last = "$"
        while not stop.is_set():
            try:
                events = await live.feed_events(last, block_ms, 500)
            except (aioredis.ConnectionError, aioredis.TimeoutError) as exc:
                log.warning("metrics feed unavailable", extra={"error": str(exc)})
                await asyncio.sleep(1.0)
                continue
            finished: list[tuple[str, int]] = []
            for event in events:
                last = event.id or last
                if event.type in FINISHED_EVENTS and event.step_id and not event.data.get("skipped"):
                    finished.append((f"{event.run_id}|{event.step_id}", int(event.data.get("attempt", 0))))
            if finished:
                runs = await live.runs(sorted({key.split("|", 1)[0] for key, _ in finished}))
                self.observe_runs(finished, runs)


async def exposition(live: LiveQueries, durations: StepDurations, deliveries: DeliveryCounts) -> str:
    """The whole ``/metrics`` page."""
    await deliveries.flush()
    gauges = await live.gauges()
    delivered = await deliveries.totals()
    lines = [
        "# HELP switchboard_runs Runs now in each status (from the status indexes).",
        "# TYPE switchboard_runs gauge",
        *(f'switchboard_runs{{status="{s.value}"}} {n}' for s, n in gauges.runs.items()),
        "# HELP switchboard_tasks_pending Human tasks waiting for a decision.",
        "# TYPE switchboard_tasks_pending gauge",
        f"switchboard_tasks_pending {gauges.pending_tasks}",
        "# HELP switchboard_intake_waiting Runs accepted from webhooks and not started yet.",
        "# TYPE switchboard_intake_waiting gauge",
        f"switchboard_intake_waiting {gauges.intake_waiting}",
        "# HELP switchboard_webhook_deliveries_total Webhook deliveries by source and outcome.",
        "# TYPE switchboard_webhook_deliveries_total counter",
    ]
    for field_name, value in sorted(delivered.items()):
        source, _, outcome = field_name.partition("|")
        lines.append(
            f'switchboard_webhook_deliveries_total{{source="{_label(source)}",outcome="{_label(outcome)}"}}'
            f" {int(value)}"
        )
    lines += [
        "# HELP switchboard_step_duration_seconds Step durations, started to finished,"
        " for steps that finished while this process ran.",
        "# TYPE switchboard_step_duration_seconds histogram",
    ]
    for (workflow, step_type, outcome), hist in sorted(durations.series.items()):
        labels = f'workflow="{_label(workflow)}",type="{step_type}",outcome="{outcome}"'
        cumulative = 0
        for bound, n in zip(BUCKETS, hist.buckets, strict=True):
            cumulative += n
            lines.append(f'switchboard_step_duration_seconds_bucket{{{labels},le="{bound:g}"}} {cumulative}')
        lines.append(f'switchboard_step_duration_seconds_bucket{{{labels},le="+Inf"}} {hist.count}')
        lines.append(f"switchboard_step_duration_seconds_sum{{{labels}}} {hist.total:.6f}")
        lines.append(f"switchboard_step_duration_seconds_count{{{labels}}} {hist.count}")
    return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
