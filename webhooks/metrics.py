"""Prometheus metrics at ``/metrics``: one scrape model, the whole system seen from Redis.

Every ``switchboard_*`` metric is read from Redis when scraped, so any web process answers
the same figures for the whole deployment (scrape one of them, or any behind a load
balancer; do not sum them across processes). Only the ``process_*`` metrics
(prometheus_client's ProcessCollector: CPU, memory, open files, start time) describe the
process that answered. Workers expose nothing: what they do is in Redis.

- ``switchboard_runs{status}``: runs now in each status (the status indexes' sizes).
- ``switchboard_tasks_pending``: human tasks waiting for a decision.
- ``switchboard_queue_depth``: step jobs waiting in the RQ queue for a worker.
- ``switchboard_workers``: RQ workers alive on the queue (their heartbeat keys exist).
- ``switchboard_intake_waiting``: runs accepted from webhooks and not started yet; growing
  means no worker is starting them.
- ``switchboard_slack_outbox_backlog``: Slack conversations with messages still to send.
- ``switchboard_webhook_deliveries_total{source,outcome}``: webhook deliveries by what became
  of them, counted in a Redis hash (unknown sources under ``source="_unknown"``).
- ``switchboard_step_duration_seconds{workflow,type,outcome}``: a histogram of step
  durations counted in Redis as steps finish (:mod:`engine.metrics`): it survives restarts
  and every process reports all of it. Human tasks measure how long people took.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from rq import Worker

from bot.keys import SlackKeys
from engine import metrics
from engine.api import Engine
from engine.asyncio_bridge import EngineBridge
from engine.queries import Gauges, LiveQueries
from engine.redis_idioms import text
from webhooks.keys import WebKeys

log = logging.getLogger(__name__)

UNKNOWN_SOURCE = "_unknown"
BRIDGE = EngineBridge()  # RQ's calls are synchronous: on the loop's default executor


@dataclass
class DeliveryCounts:
    """Delivery outcomes counted in memory and added to the shared Redis hash in batches.

    One HINCRBY per delivery would be a Redis round trip on the webhook hot path; a
    flush each second (and before every scrape, and at shutdown) keeps the total exact.
    """

    aredis: aioredis.Redis
    keys: WebKeys
    pending: Counter[tuple[str, str]] = field(default_factory=Counter)  # by (source, outcome)

    def count(self, source: str, outcome: str) -> None:
        self.pending[source, outcome] += 1

    async def flush(self) -> None:
        batch, self.pending = self.pending, Counter()
        if not batch:
            return
        pipe = self.aredis.pipeline(transaction=False)
        for (source, outcome), n in batch.items():
            pipe.hincrby(self.keys.deliveries, f"{source}|{outcome}", n)
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


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape reports about the system, read from Redis."""

    gauges: Gauges
    queue_depth: int
    workers: int
    outbox_backlog: int
    deliveries: dict[str, int]
    steps: dict[tuple[str, str, str], metrics.Histogram]


class SnapshotCollector(Collector):
    """The snapshot as Prometheus metric families (prometheus_client renders the text)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        runs = GaugeMetricFamily("switchboard_runs", "Runs now in each status.", labels=["status"])
        for status, count in snap.gauges.runs.items():
            runs.add_metric([status.value], count)
        yield runs
        yield GaugeMetricFamily(
            "switchboard_tasks_pending",
            "Human tasks waiting for a decision.",
            value=snap.gauges.pending_tasks,
        )
        yield GaugeMetricFamily(
            "switchboard_queue_depth", "Step jobs waiting in the queue for a worker.", value=snap.queue_depth
        )
        yield GaugeMetricFamily("switchboard_workers", "Workers alive on the queue.", value=snap.workers)
        yield GaugeMetricFamily(
            "switchboard_intake_waiting",
            "Runs accepted from webhooks and not started yet.",
            value=snap.gauges.intake_waiting,
        )
        yield GaugeMetricFamily(
            "switchboard_slack_outbox_backlog",
            "Slack conversations with messages still to send.",
            value=snap.outbox_backlog,
        )
        deliveries = CounterMetricFamily(
            "switchboard_webhook_deliveries",
            "Webhook deliveries by source and outcome.",
            labels=["source", "outcome"],
        )
        for name, count in sorted(snap.deliveries.items()):
            source, _, outcome = name.partition("|")
            deliveries.add_metric([source, outcome], count)
        yield deliveries
        steps = HistogramMetricFamily(
            "switchboard_step_duration_seconds",
            "Step durations, started to finished, by workflow, step type and outcome (all time).",
            labels=["workflow", "type", "outcome"],
        )
        for labels, histogram in sorted(snap.steps.items()):
            steps.add_metric(list(labels), histogram.cumulative(), histogram.total_seconds)
        yield steps


async def snapshot(
    engine: Engine, live: LiveQueries, aredis: aioredis.Redis, deliveries: DeliveryCounts
) -> Snapshot:
    """Read what a scrape reports: index sizes and counters (a handful of round trips, no scan)."""
    await deliveries.flush()
    gauges = await live.gauges()
    steps = metrics.histograms(await live.step_durations())
    backlog = await aredis.zcard(SlackKeys(engine.keys.prefix).outbox_due)
    depth, workers = await BRIDGE.call(_queue_and_workers, engine)
    return Snapshot(gauges, depth, workers, int(backlog), await deliveries.totals(), steps)


def _queue_and_workers(engine: Engine) -> tuple[int, int]:
    """RQ's own answers: the queue's length and its live workers (whose keys have not expired)."""
    return engine.queue.count, len(Worker.all(queue=engine.queue))


def exposition(snap: Snapshot) -> bytes:
    """The ``/metrics`` page: the snapshot and this process's own figures, in the text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snap))
    ProcessCollector(registry=registry)
    return generate_latest(registry)
