"""No-op steps through the engine against raw RQ no-op jobs, on the same worker, in one run.

    .venv/bin/python bench/steps.py [--steps 500] [--steps-per-run 10] [--redis-url URL]

Both halves run ``worker.process.run_worker`` in burst mode (a forking ``rq.Worker``
plus the maintenance thread) in this process, each on a fresh queue and key prefix:

- engine: ``steps / steps-per-run`` runs of a workflow of sequential ``worker.actions:echo``
  steps, started before the worker; every step is a job that asks the engine to start,
  runs the action, and reports back (which enqueues the next step);
- raw RQ: the same number of ``worker.actions:echo`` jobs enqueued straight onto the queue.

It prints both rates and their ratio; the target is an engine rate of at least 0.7 of raw RQ.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis
import yaml
from rq import Queue

from engine.model import Actor, RunStatus
from engine.settings import Settings
from worker import jobs
from worker.actions import echo
from worker.process import run_worker


def settings_for(namespace: str, redis_url: str, workflows: Path) -> Settings:
    os.environ.update(
        {
            "REDIS_URL": redis_url,
            "SWITCHBOARD_KEY_PREFIX": f"{namespace}:",
            "SWITCHBOARD_QUEUE": namespace,
            "SWITCHBOARD_WORKFLOWS": str(workflows),
            "SWITCHBOARD_LOG_LEVEL": "WARNING",  # measure the machinery, not per-job log lines
        }
    )
    return Settings()


def write_workflow(folder: Path, steps_per_run: int) -> None:
    steps = [
        {
            "id": f"s{i}",
            "type": "action",
            "action": "worker.actions:echo",
            "args": {"i": i},
            "needs": [f"s{i - 1}"] if i else [],
        }
        for i in range(steps_per_run)
    ]
    definition = {"id": "noop", "name": "No-op steps", "steps": steps}
    (folder / "noop.yaml").write_text(yaml.safe_dump(definition))


def bench_engine(redis_url: str, folder: Path, steps: int, steps_per_run: int) -> float:
    """Steps per second through the engine."""
    namespace = f"bench-engine-{uuid.uuid4().hex[:8]}"
    settings = settings_for(namespace, redis_url, folder)
    engine = jobs.configure(settings)
    actor = Actor.system("bench")
    run_ids = [engine.start("noop", {}, actor).run_id for _ in range(steps // steps_per_run)]
    began = time.perf_counter()
    run_worker(settings, burst=True, name=f"{namespace}-w")
    elapsed = time.perf_counter() - began
    unfinished = [r for r in engine.store.load_many(run_ids) if r.status is not RunStatus.COMPLETED]
    cleanup(engine.redis, namespace, run_ids)
    if unfinished:
        sys.exit(f"{len(unfinished)} runs did not complete, e.g. {unfinished[0].model_dump_json()[:500]}")
    return len(run_ids) * steps_per_run / elapsed


def bench_raw(redis_url: str, folder: Path, steps: int) -> float:
    """Jobs per second of the same no-op action enqueued straight onto RQ."""
    namespace = f"bench-raw-{uuid.uuid4().hex[:8]}"
    settings = settings_for(namespace, redis_url, folder)
    connection = redis.Redis.from_url(redis_url)
    queue = Queue(namespace, connection=connection)
    ids = [f"raw-{namespace}-{i}" for i in range(steps)]
    with connection.pipeline() as pipe:
        for i, job_id in enumerate(ids):
            queue.enqueue_call(echo, kwargs={"i": i}, job_id=job_id, result_ttl=600, pipeline=pipe)
        pipe.execute()
    began = time.perf_counter()
    run_worker(settings, burst=True, name=f"{namespace}-w")
    elapsed = time.perf_counter() - began
    failed = queue.count + queue.failed_job_registry.count
    cleanup(connection, namespace, ids)
    if failed:
        sys.exit(f"{failed} raw jobs did not run or failed")
    return steps / elapsed


def cleanup(connection: redis.Redis, namespace: str, ids: list[str]) -> None:
    for pattern in (f"{namespace}:*", f"rq:*{namespace}*"):
        for key in connection.scan_iter(pattern, count=1000):
            connection.delete(key)
    for key in connection.scan_iter("rq:*sb-*", count=1000):
        if any(i in key.decode() for i in ids):
            connection.delete(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--steps-per-run", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="alternate both halves; keep each one's best")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_workflow(folder, args.steps_per_run)
        raw = engine = 0.0
        for _ in range(args.rounds):
            raw = max(raw, bench_raw(args.redis_url, folder, args.steps))
            engine = max(engine, bench_engine(args.redis_url, folder, args.steps, args.steps_per_run))
    print(f"raw RQ no-op jobs:    {raw:8.1f} jobs/s  ({args.steps} jobs)")
    print(f"engine no-op steps:   {engine:8.1f} steps/s ({args.steps} steps, {args.steps_per_run} per run)")
    print(f"ratio engine/raw RQ:  {engine / raw:8.2f}  (target >= 0.70)")


if __name__ == "__main__":
    main()
