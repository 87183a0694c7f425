"""No-op steps on one worker process: Switchboard against Celery and raw RQ, measured in the same run.

    .venv/bin/pip install -e '.[bench]'      # Celery, for its half
    .venv/bin/python bench/steps.py [--runs 50] [--rounds 3] [--redis-url URL]

Every contender is a real worker process started by this script on the same Redis, one
at a time, with one process executing (concurrency 1), and is measured in rounds that
alternate between them; each figure is the median over the rounds.

- **Switchboard**: ``python -m worker`` (its reused work horse); a run is a workflow of
  10 sequential ``worker.actions:echo`` steps, each a job that asks the engine to start,
  runs the action and reports back (which commits the step and enqueues the next).
- **Celery**: ``celery worker --pool prefork --concurrency 1`` with Redis as the broker
  and no result backend (its fastest setting); a run is a chain of 10 no-op tasks whose
  last one pushes to a Redis list, so the bench hears of its end.
- **raw RQ**: the same number of no-op jobs enqueued straight onto a queue, executed by
  RQ's own forking ``rq.Worker`` and by Switchboard's worker (``--burst``); no engine.
  Timed from the first job's start to the last one's end, by RQ's records.

Printed: steps/s with ``--runs`` runs started at once (throughput), the median time of a
10-step run started alone (latency), their ratios to Celery, and Switchboard's cost per
step for runs of 10, 100 and 500 steps (one run at a time), which should not grow with
the run. Targets: steps/s at least Celery's, a 10-step run under 50 ms, per-step costs
within 1.5x of each other.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
import yaml
from rq import Queue
from rq.job import Job

from engine.api import Engine
from engine.catalog import load_folder
from engine.model import Actor, EventType
from engine.store import Keys

ROOT = Path(__file__).resolve().parent.parent
STEPS_PER_RUN = 10
PER_STEP_SIZES = (10, 100, 500)
ACTOR = Actor.system("bench")

CELERY_APP = '''
"""The Celery half of bench/steps.py: a no-op task, the last of a chain says so on a list."""
import os

import redis
from celery import Celery

app = Celery("bench", broker=os.environ["BENCH_REDIS_URL"])
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)
done = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])


@app.task(ignore_result=True)
def step(run, i, last):
    if i == last:
        done.rpush(run, 1)
'''


# -- processes ---------------------------------------------------------------------------------


@contextmanager
def process(argv: list[str], env: dict[str, str], log: Path, ready: Callable[[], bool]) -> Iterator[None]:
    """A worker process for the duration of the block, once ``ready()`` says it listens."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"{argv[2]} worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def switchboard_env(namespace: str, redis_url: str, folder: Path) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "SWITCHBOARD_KEY_PREFIX": f"{namespace}:",
        "SWITCHBOARD_QUEUE": namespace,
        "SWITCHBOARD_WORKFLOWS": str(folder),
        "SWITCHBOARD_LOG_LEVEL": "WARNING",  # measure the machinery, not per-job log lines
    }


def worker_registered(connection: redis.Redis, name: str) -> Callable[[], bool]:
    return lambda: bool(connection.hget(f"rq:worker:{name}", "state") == b"idle")


def cleanup(connection: redis.Redis, *patterns: str) -> None:
    for pattern in patterns:
        for key in connection.scan_iter(pattern, count=1000):
            connection.delete(key)


# -- Switchboard -------------------------------------------------------------------------------


def write_workflows(folder: Path) -> None:
    for size in {STEPS_PER_RUN, *PER_STEP_SIZES}:
        steps = [
            {
                "id": f"s{i}",
                "type": "action",
                "action": "worker.actions:echo",
                "args": {"i": i},
                "needs": [f"s{i - 1}"] if i else [],
            }
            for i in range(size)
        ]
        definition = {"id": f"noop{size}", "name": f"{size} no-op steps", "steps": steps}
        (folder / f"noop{size}.yaml").write_text(yaml.safe_dump(definition))


class Timed:
    """What both measured systems are timed by: one run alone, and many runs at once."""

    def start(self, size: int) -> str:
        raise NotImplementedError

    def wait_ended(self, run_id: str) -> None:
        raise NotImplementedError

    def run_alone(self, size: int) -> float:
        began = time.perf_counter()
        self.wait_ended(self.start(size))
        return time.perf_counter() - began

    def throughput(self, runs: int) -> float:
        began = time.perf_counter()
        run_ids = [self.start(STEPS_PER_RUN) for _ in range(runs)]
        for run_id in run_ids:
            self.wait_ended(run_id)
        return runs * STEPS_PER_RUN / (time.perf_counter() - began)


class Switchboard(Timed):
    """A Switchboard worker process and an engine to start runs and hear them end."""

    def __init__(self, redis_url: str, folder: Path, logs: Path) -> None:
        self.namespace = f"bench-sb-{uuid.uuid4().hex[:8]}"
        self.redis = redis.Redis.from_url(redis_url)
        catalog = load_folder(folder)
        self.engine = Engine(self.redis, catalog, key_prefix=f"{self.namespace}:", queue_name=self.namespace)
        self.keys = Keys(f"{self.namespace}:")
        self.env = switchboard_env(self.namespace, redis_url, folder)
        self.log = logs / f"{self.namespace}.log"

    actor = ACTOR

    @contextmanager
    def worker(self, warm_up: bool = True) -> Iterator[None]:
        name = f"{self.namespace}-w"
        argv = [sys.executable, "-m", "worker", "--name", name]
        with process(argv, self.env, self.log, worker_registered(self.redis, name)):
            if warm_up:  # a first run, unmeasured: the horse is forked, modules imported
                self.run_alone(STEPS_PER_RUN)
            yield
        cleanup(self.redis, f"{self.namespace}:*", f"rq:*{self.namespace}*", "rq:*sb-*")

    def start(self, size: int) -> str:
        return self.engine.start(f"noop{size}", {}, ACTOR).run_id

    def wait_ended(self, run_id: str) -> None:
        """Block on the run's event stream until it records the run's end."""
        stream, last = self.keys.run_events(run_id), "0"
        while True:
            reply: Any = self.redis.xread({stream: last}, block=10_000)
            if not reply:
                sys.exit(f"run {run_id} made no progress for 10 s:\n{self.log.read_text()[-3000:]}")
            for entry_id, fields in reply[0][1]:
                last = entry_id
                kind = EventType(fields[b"type"].decode())
                if kind.ends_run:
                    if kind is not EventType.RUN_COMPLETED:
                        sys.exit(f"run {run_id} ended {kind.value}:\n{self.log.read_text()[-3000:]}")
                    return


# -- Celery ------------------------------------------------------------------------------------


class CeleryWorker(Timed):
    """A Celery prefork worker (concurrency 1) on the same Redis, and the app to send it chains."""

    def __init__(self, redis_url: str, logs: Path) -> None:
        try:
            import celery  # noqa: F401
        except ImportError:
            sys.exit("Celery is a bench-only dependency: .venv/bin/pip install -e '.[bench]'")
        self.queue = f"bench-celery-{uuid.uuid4().hex[:8]}"
        self.redis = redis.Redis.from_url(redis_url)
        self.folder = logs / "celery-app"
        self.folder.mkdir(exist_ok=True)
        (self.folder / "bench_celery_app.py").write_text(CELERY_APP)
        self.env = {**os.environ, "BENCH_REDIS_URL": redis_url, "PYTHONPATH": str(self.folder)}
        self.log = logs / f"{self.queue}.log"
        os.environ["BENCH_REDIS_URL"] = redis_url
        sys.path.insert(0, str(self.folder))
        import bench_celery_app

        self.app: Any = bench_celery_app.app
        self.step: Any = bench_celery_app.step

    @contextmanager
    def worker(self) -> Iterator[None]:
        argv = [
            sys.executable, "-m", "celery", "-A", "bench_celery_app", "worker",
            "--pool", "prefork", "--concurrency", "1", "--queues", self.queue,
            "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        with process(argv, self.env, self.log, self._answers):
            self.run_alone(STEPS_PER_RUN)
            yield
        cleanup(self.redis, f"{self.queue}*", "bench-celery-run-*")

    def _answers(self) -> bool:
        replies = self.app.control.ping(timeout=0.2)
        return bool(replies)

    def start(self, size: int) -> str:
        from celery import chain

        run = f"bench-celery-run-{uuid.uuid4().hex}"
        tasks = [self.step.si(run, i, size - 1).set(queue=self.queue) for i in range(size)]
        chain(*tasks).apply_async()
        return run

    def wait_ended(self, run: str) -> None:
        if self.redis.blpop([run], timeout=10) is None:
            sys.exit(f"Celery chain {run} made no progress for 10 s:\n{self.log.read_text()[-3000:]}")


# -- raw RQ ------------------------------------------------------------------------------------


def raw_rq(redis_url: str, folder: Path, jobs: int, switchboard_worker: bool) -> float:
    """Jobs per second of a no-op function enqueued straight onto RQ, executed by a burst worker."""
    namespace = f"bench-raw-{uuid.uuid4().hex[:8]}"
    connection = redis.Redis.from_url(redis_url)
    queue = Queue(namespace, connection=connection)
    job_ids = [f"{namespace}-{i}" for i in range(jobs)]
    with connection.pipeline() as pipe:
        for i, job_id in enumerate(job_ids):
            queue.enqueue_call(
                "worker.actions.echo", kwargs={"i": i}, job_id=job_id, result_ttl=600, pipeline=pipe
            )
        pipe.execute()
    if switchboard_worker:
        argv = [sys.executable, "-m", "worker", "--burst", "--name", f"{namespace}-w"]
    else:
        argv = [sys.executable, "-m", "rq.cli", "worker", "--burst", "--quiet", "--url", redis_url, namespace]
    subprocess.run(argv, env=switchboard_env(namespace, redis_url, folder), cwd=ROOT, check=True)
    failed = queue.count + queue.failed_job_registry.count
    # From the first job's start to the last one's end, by RQ's own records: the process's
    # start (a second or more of imports) is not the jobs' cost.
    done = [job for job in Job.fetch_many(job_ids, connection=connection) if job is not None]
    began = min(job.started_at for job in done if job.started_at)
    ended = max(job.ended_at for job in done if job.ended_at)
    cleanup(connection, f"{namespace}:*", f"rq:*{namespace}*")
    if failed or len(done) < jobs:
        sys.exit(f"{failed} raw jobs did not run or failed")
    return (jobs - 1) / (ended - began).total_seconds()


# -- the report --------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="10-step runs started at once for steps/s")
    parser.add_argument("--latency-runs", type=int, default=30, help="10-step runs, one at a time, per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--no-celery", action="store_true", help="skip Celery (not installed)")
    args = parser.parse_args()
    figures: dict[str, list[float]] = {}

    def note(name: str, value: float) -> None:
        figures.setdefault(name, []).append(value)

    with tempfile.TemporaryDirectory() as tmp:
        folder, logs = Path(tmp) / "workflows", Path(tmp)
        folder.mkdir()
        write_workflows(folder)
        jobs = args.runs * STEPS_PER_RUN
        for round_ in range(args.rounds):
            print(f"round {round_ + 1} of {args.rounds} ...", file=sys.stderr)
            contenders: list[tuple[str, Any]] = [("switchboard", Switchboard(args.redis_url, folder, logs))]
            if not args.no_celery:
                contenders.append(("celery", CeleryWorker(args.redis_url, logs)))
            if round_ % 2:
                contenders.reverse()
            for name, contender in contenders:
                with contender.worker():
                    note(f"{name} steps/s", contender.throughput(args.runs))
                    for _ in range(args.latency_runs):
                        note(f"{name} run", contender.run_alone(STEPS_PER_RUN))
                    if name == "switchboard":
                        for size in PER_STEP_SIZES:
                            repeat = max(1, 1000 // (size * 4))
                            for _ in range(repeat):
                                note(f"per step {size}", contender.run_alone(size) / size)
            note("raw RQ forking", raw_rq(args.redis_url, folder, jobs, switchboard_worker=False))
            note("raw RQ reused horse", raw_rq(args.redis_url, folder, jobs, switchboard_worker=True))

    m = {name: median(values) for name, values in figures.items()}
    print(f"One worker process each, {args.rounds} rounds alternating, medians; Redis at {args.redis_url}")
    print(f"steps/s, {args.runs} runs of {STEPS_PER_RUN} sequential no-op steps started at once:")
    print(f"  switchboard              {m['switchboard steps/s']:8.1f}")
    if "celery steps/s" in m:
        print(f"  celery (prefork, c=1)    {m['celery steps/s']:8.1f}")
        print(
            f"  ratio switchboard/celery {m['switchboard steps/s'] / m['celery steps/s']:8.2f}  (target >= 1.00)"
        )
    print(f"  raw RQ jobs, RQ's forking worker     {m['raw RQ forking']:8.1f} jobs/s")
    print(f"  raw RQ jobs, Switchboard's worker    {m['raw RQ reused horse']:8.1f} jobs/s")
    print(f"  ratio switchboard/raw RQ (forking)   {m['switchboard steps/s'] / m['raw RQ forking']:8.2f}")
    print(f"a {STEPS_PER_RUN}-step run started alone, median of {len(figures['switchboard run'])}:")
    print(f"  switchboard              {m['switchboard run'] * 1000:8.1f} ms  (target < 50 ms)")
    if "celery run" in m:
        print(f"  celery                   {m['celery run'] * 1000:8.1f} ms")
        print(f"  ratio switchboard/celery {m['switchboard run'] / m['celery run']:8.2f}")
    print("switchboard cost per step, one run at a time:")
    costs = {size: m[f"per step {size}"] for size in PER_STEP_SIZES}
    for size, cost in costs.items():
        print(f"  {size:4d} steps per run      {cost * 1000:8.2f} ms")
    print(f"  largest/smallest         {max(costs.values()) / min(costs.values()):8.2f}  (target <= 1.50)")


if __name__ == "__main__":
    main()
