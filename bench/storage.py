"""What a finished run costs in Redis, before and after retention removes it.

    .venv/bin/python bench/storage.py [--runs 200] [--redis-url URL]

Runs ``--runs`` runs of the sample workflows (``workflows/``: deploy-approval,
edit-then-send, parallel-checks, in turn) to the end through the engine's command API,
under a key prefix and queue of their own: actions are executed in this process as a
worker would (``sleep`` without sleeping), HTTP steps answered 200, tasks approved,
timers fired by travelling the engine's clock. Then the clock travels past the
retention and ``Engine.purge_finished`` runs, then the global feed is trimmed by age.

After each phase it sums ``MEMORY USAGE`` over every key of the prefix, of its RQ queue
and registries and of the runs' RQ jobs (so other users of the server do not disturb the
figures), by kind of key, and prints bytes per finished run. RQ job hashes stay queued
here, as no worker takes them; a worker's finished jobs expire after 10 minutes anyway.
The bot is not running, so its per-run feed cursor (about 100 bytes, expiring a day after
the run is removed) is not counted. Everything is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis

from engine.api import Engine
from engine.catalog import load_folder
from engine.model import Actor, ActorKind, Run, StepStatus
from engine.workflow import StepType
from worker.action_step import run_action

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
INPUTS: dict[str, dict[str, Any]] = {
    "deploy-approval": {"service": "api", "version": "1.4.2"},
    "edit-then-send": {"topic": "the new pricing"},
    "parallel-checks": {"ref": "main"},
}
STARTER = Actor(kind=ActorKind.CLI, id="alice", name="alice")
APPROVER = Actor(kind=ActorKind.SLACK, id="U0BOB", name="bob")


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


def finish(engine: Engine, clock: Clock, run: Run) -> Run:
    """Drive ``run`` to its end as workers, approvers and time would."""
    while not run.status.terminal:
        progressed = False
        for st in list(run.steps.values()):
            if st.status is StepStatus.QUEUED:
                started = engine.step_started(run.run_id, st.step_id, st.attempt, st.dispatch, "bench")
                result = perform(started.step.type, started.workflow.step(st.step_id).action, st.args)
                engine.step_finished(run.run_id, st.step_id, st.attempt, result=result)
                progressed = True
            elif st.status is StepStatus.WAITING and st.task is not None and st.task.decided_at is None:
                engine.complete_task(run.run_id, st.step_id, APPROVER, approved=True)
                progressed = True
        if not progressed:
            clock.now += timedelta(seconds=5)  # sleeps and retries are timers
            engine.fire_due_timers()
        run = engine.get_run(run.run_id)
    return run


def perform(kind: StepType, action: str | None, args: Any) -> Any:
    if kind is StepType.HTTP:
        return {"status": 200, "headers": {"content-type": "application/json"}, "body": {"ok": True}}
    assert action is not None
    if action == "worker.actions:sleep":
        args = {**args, "seconds": 0}
    return run_action(action, args, {})


def category(key: str, namespace: str) -> str:
    if key.startswith("rq:"):
        return "RQ jobs, queue, registries"
    name = key.removeprefix(f"{namespace}:")
    if name.startswith("run:"):
        return "run documents and event streams"
    if name == "events":
        return "global feed"
    if name.startswith("workflow:"):
        return "workflow snapshots (shared)"
    return "indexes, timers, other"


def measure(connection: redis.Redis, namespace: str, run_ids: set[str]) -> tuple[Counter[str], Counter[str]]:
    """Bytes and keys by category, over the namespace's keys and the runs' RQ keys."""
    keys = {
        k for pattern in (f"{namespace}:*", f"rq:*{namespace}*") for k in connection.scan_iter(pattern, 1000)
    }
    keys |= {
        k for k in connection.scan_iter("rq:*sb-*", 1000) if k.decode().split("sb-", 1)[1][:16] in run_ids
    }
    sizes, counts = Counter[str](), Counter[str]()
    with connection.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.memory_usage(key, samples=0)
        for key, size in zip(keys, pipe.execute(), strict=True):
            kind = category(key.decode(), namespace)
            sizes[kind] += size or 0
            counts[kind] += 1
    return sizes, counts


def table(phases: list[tuple[str, Counter[str], Counter[str]]], runs: int) -> str:
    kinds = sorted({kind for _, sizes, _ in phases for kind in sizes})
    lines = [f"{'':34}" + "".join(f"{title:>24}" for title, _, _ in phases)]
    lines.append(f"{'':34}" + "".join(f"{'keys':>8}{'bytes/run':>16}" for _ in phases))
    for kind in [*kinds, "total"]:
        cells = ""
        for _, sizes, counts in phases:
            size = sum(sizes.values()) if kind == "total" else sizes[kind]
            count = sum(counts.values()) if kind == "total" else counts[kind]
            cells += f"{count:>8}{size / runs:>16,.0f}"
        lines.append(f"{kind:34}{cells}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()
    connection = redis.Redis.from_url(args.redis_url)
    namespace = f"bench-storage-{uuid.uuid4().hex[:8]}"
    catalog = load_folder(WORKFLOWS)
    clock = Clock(datetime.now(UTC))
    engine = Engine(connection, catalog, key_prefix=f"{namespace}:", queue_name=namespace, clock=clock)
    run_ids: set[str] = set()
    endings: Counter[str] = Counter()
    phases: list[tuple[str, Counter[str], Counter[str]]] = []

    def phase(title: str, step: Callable[[], object]) -> None:
        step()
        phases.append((title, *measure(connection, namespace, run_ids)))

    def run_all() -> None:
        workflows = sorted(INPUTS)
        for i in range(args.runs):
            workflow = workflows[i % len(workflows)]
            run = finish(engine, clock, engine.start(workflow, INPUTS[workflow], STARTER))
            run_ids.add(run.run_id)
            endings[f"{workflow} {run.status.value}"] += 1

    def purge() -> None:
        clock.now += timedelta(seconds=max(engine.retention_of(w) for w in INPUTS) + 86400)
        purged = 0
        while batch := engine.purge_finished():
            purged += batch
        assert purged == args.runs, f"purged {purged} of {args.runs} runs"

    try:
        phase(f"{args.runs} finished runs", run_all)
        phase("after purge", purge)
        # The feed goes by age on Redis's clock, which the bench cannot travel: trim it as a pass would.
        phase("after feed trim", lambda: engine.store.trim_feed(0.001))
    finally:
        for pattern in (f"{namespace}:*", f"rq:*{namespace}*"):
            for key in connection.scan_iter(pattern, 1000):
                connection.delete(key)
        connection.srem("rq:queues", f"rq:queue:{namespace}")
        for key in connection.scan_iter("rq:*sb-*", 1000):
            if key.decode().split("sb-", 1)[1][:16] in run_ids:
                connection.delete(key)
    print(f"Redis memory of {args.runs} finished runs (MEMORY USAGE per key, divided by the runs)")
    print(", ".join(f"{count} {ending}" for ending, count in sorted(endings.items())) + "\n")
    print(table(phases, args.runs))
    total = sum(phases[0][1].values()) / args.runs
    print(
        f"\nbefore retention: {total / 1024:.1f} KiB per run, {total * 1e6 / 2**30:.1f} GiB per million runs"
    )


if __name__ == "__main__":
    main()
