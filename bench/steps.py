"""No-op steps on one worker process: Switchboard against Celery, Dramatiq and raw RQ, measured in the same run.

    .venv/bin/pip install -e '.[bench]'      # Celery and Dramatiq, for their parts
    .venv/bin/python bench/steps.py [--runs 50] [--rounds 3] [--redis-url URL]

Every contender is a real worker process started by this script on the same Redis, one
at a time, with one process executing (concurrency 1), and is measured in rounds in which
each goes first in turn; each figure is the median over the rounds.

- **Switchboard**: ``python -m worker`` (its reused work horse); a run is a workflow of
  10 sequential ``worker.actions:echo`` steps, each a job that asks the engine to start,
  runs the action and reports back (which commits the step and enqueues the next, and, by
  eager dispatch, starts it for the same horse: up to 16 steps in a row, then the horse
  takes the queue's next job).
- **Celery**: ``celery worker --pool prefork --concurrency 1`` with Redis as the broker
  and no result backend (its fastest setting); a run is a chain of 10 no-op tasks whose
  last one pushes to a Redis list, so the bench hears of its end.
- **Dramatiq**: ``dramatiq --processes 1 --threads 1`` with its Redis broker and its
  default middleware; a run is a pipeline of 10 no-op actors (no result passed along)
  whose last one pushes to a Redis list, as Celery's does. Its consumer polls an empty
  queue with a backoff (5 ms doubling, up to 1 s), so the next step of a run started
  alone often waits for the next poll; runs started at once keep the queue full.
- **raw RQ**: the same number of no-op jobs enqueued straight onto a queue, executed by
  RQ's own forking ``rq.Worker`` and by Switchboard's worker (``--burst``); no engine.
  Timed from the first job's start to the last one's end, by RQ's records.

Printed: steps/s with ``--runs`` runs started at once (throughput), the median time of a
10-step run started alone (latency), Switchboard's ratios to Celery and Dramatiq, and
Switchboard's cost per step for runs of 10, 100 and 500 steps (one run at a time), which
should not grow with the run. Targets: steps/s at least Celery's, a 10-step run under
50 ms, per-step costs within 1.5x of each other.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import types
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fnmatch import fnmatchcase as fnmatch
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
STEP_JOB_RUN = re.compile(r"\bsb-([0-9a-f]+)-s")  # the run id in a step job's id
NO_PROGRESS_SECONDS = 4  # a run that long without news failed (below redis-py's 5 s socket timeout)

# The peers' app modules: their worker process imports one, and this process runs the same
# source in a module of its own for each contender (the keys' namespace differs every time).
# Every key either puts in Redis is under BENCH_NAMESPACE, which the bench deletes after.
CELERY_APP = '''
"""The Celery part of bench/steps.py: a no-op task, the last of a chain says so on a list."""
import os

import redis
from celery import Celery

app = Celery("bench", broker=os.environ["BENCH_REDIS_URL"])
app.conf.update(
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"global_keyprefix": os.environ["BENCH_NAMESPACE"] + ":"},
)
done = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])


@app.task(name="bench.step", ignore_result=True)
def step(run, i, last):
    if i == last:
        done.rpush(run, 1)
'''

DRAMATIQ_APP = '''
"""The Dramatiq part of bench/steps.py: a no-op actor, the last of a pipeline says so on a list."""
import os

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"], namespace=os.environ["BENCH_NAMESPACE"])
dramatiq.set_broker(broker)
done = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])


@dramatiq.actor(queue_name="steps", max_retries=0)
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
    """Delete the keys matching ``patterns``, and RQ's mentions of the queues among them."""
    for pattern in patterns:
        for key in connection.scan_iter(pattern, count=1000):
            connection.delete(key)
    members: Any = connection.smembers("rq:queues")
    queues = [name for name in members if any(fnmatch(name.decode(), p) for p in patterns)]
    if queues:
        connection.srem("rq:queues", *queues)


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
        self.run_ids: set[str] = set()

    actor = ACTOR

    @contextmanager
    def worker(self, warm_up: bool = True) -> Iterator[None]:
        name = f"{self.namespace}-w"
        argv = [sys.executable, "-m", "worker", "--name", name]
        try:  # the keys go also when a run fails or the bench is interrupted
            with process(argv, self.env, self.log, worker_registered(self.redis, name)):
                if warm_up:  # a first run, unmeasured: the horse is forked, modules imported
                    self.run_alone(STEPS_PER_RUN)
                yield
        finally:
            cleanup(self.redis, f"{self.namespace}:*", f"rq:*{self.namespace}*")
            self.cleanup_jobs()

    def cleanup_jobs(self) -> None:
        """RQ's keys of this bench's step jobs, whose ids (``sb-<run id>-…``) do not name the queue.

        Other Switchboards may share the Redis: only the keys of runs started here go.
        """
        for key in self.redis.scan_iter("rq:*sb-*", count=1000):
            found = STEP_JOB_RUN.search(key.decode())
            if found and found.group(1) in self.run_ids:
                self.redis.delete(key)

    def start(self, size: int) -> str:
        run_id = self.engine.start(f"noop{size}", {}, ACTOR).run_id
        self.run_ids.add(run_id)
        return run_id

    def wait_ended(self, run_id: str) -> None:
        """Block on the run's event stream until it records the run's end."""
        stream, last = self.keys.run_events(run_id), "0"
        while True:
            reply: Any = self.redis.xread({stream: last}, block=NO_PROGRESS_SECONDS * 1000)
            if not reply:
                sys.exit(
                    f"run {run_id} made no progress for {NO_PROGRESS_SECONDS} s:\n{self.log.read_text()[-3000:]}"
                )
            for entry_id, fields in reply[0][1]:
                last = entry_id
                kind = EventType(fields[b"type"].decode())
                if kind.ends_run:
                    if kind is not EventType.RUN_COMPLETED:
                        sys.exit(f"run {run_id} ended {kind.value}:\n{self.log.read_text()[-3000:]}")
                    return


# -- Celery and Dramatiq -----------------------------------------------------------------------


class ListSignalled(Timed):
    """A peer whose run is a chain of no-op tasks on its own worker process; the last task pushes to a list.

    Subclasses give their app module's source, their worker's command and how a chain is
    sent; ``self.app`` is the app module as this process runs it, under this contender's
    key namespace.
    """

    kind = ""  # names the namespace, the log and the lists
    source = ""

    def __init__(self, redis_url: str, logs: Path) -> None:
        try:
            __import__(self.kind)
        except ImportError:
            sys.exit(f"{self.kind} is a bench-only dependency: .venv/bin/pip install -e '.[bench]'")
        self.namespace = f"bench-{self.kind}-{uuid.uuid4().hex[:8]}"
        self.redis = redis.Redis.from_url(redis_url)
        self.module = f"bench_{self.kind}_app"
        folder = logs / "apps"
        folder.mkdir(exist_ok=True)
        (folder / f"{self.module}.py").write_text(self.source)
        env = {"BENCH_REDIS_URL": redis_url, "BENCH_NAMESPACE": self.namespace}
        self.env = {**os.environ, **env, "PYTHONPATH": str(folder)}
        self.log = logs / f"{self.namespace}.log"
        os.environ.update(env)
        self.app: Any = types.ModuleType(self.module)
        exec(compile(self.source, str(folder / f"{self.module}.py"), "exec"), self.app.__dict__)

    def argv(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def send(self, run_id: str, size: int) -> None:
        raise NotImplementedError

    @contextmanager
    def worker(self) -> Iterator[None]:
        try:
            with process(self.argv(), self.env, self.log, self.ready):
                self.run_alone(STEPS_PER_RUN)  # unmeasured: the worker's first task imports and connects
                yield
        finally:
            cleanup(self.redis, f"{self.namespace}*")

    def start(self, size: int) -> str:
        run_id = f"{self.namespace}:run-{uuid.uuid4().hex}"
        self.send(run_id, size)
        return run_id

    def wait_ended(self, run_id: str) -> None:
        if self.redis.blpop([run_id], timeout=NO_PROGRESS_SECONDS) is None:
            sys.exit(
                f"{self.kind} chain {run_id} made no progress for {NO_PROGRESS_SECONDS} s:\n{self.log.read_text()[-3000:]}"
            )


class CeleryWorker(ListSignalled):
    """A Celery prefork worker (concurrency 1) on the same Redis, and the app to send it chains."""

    kind, source = "celery", CELERY_APP

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", self.module, "worker",
            "--pool", "prefork", "--concurrency", "1",
            "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip

    def ready(self) -> bool:
        return bool(self.app.app.control.ping(timeout=0.2))

    def send(self, run_id: str, size: int) -> None:
        from celery import chain

        chain(*(self.app.step.si(run_id, i, size - 1) for i in range(size))).apply_async()


class DramatiqWorker(ListSignalled):
    """A Dramatiq worker (one process, one thread) on its Redis broker, and the app to send it pipelines.

    The worker is ready once its consumer has fetched from the queue (it then has a heartbeat).
    """

    kind, source = "dramatiq", DRAMATIQ_APP

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "dramatiq", self.module, "--processes", "1", "--threads", "1"]

    def ready(self) -> bool:
        return bool(self.redis.zcard(f"{self.namespace}:__heartbeats__"))

    def send(self, run_id: str, size: int) -> None:
        from dramatiq import pipeline

        # pipe_ignore: each message keeps its own arguments (no result is passed along).
        messages = [
            self.app.step.message_with_options(args=(run_id, i, size - 1), pipe_ignore=True)
            for i in range(size)
        ]
        pipeline(messages, broker=self.app.broker).run()


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
    try:
        subprocess.run(argv, env=switchboard_env(namespace, redis_url, folder), cwd=ROOT, check=True)
        failed = queue.count + queue.failed_job_registry.count
        # From the first job's start to the last one's end, by RQ's own records: the process's
        # start (a second or more of imports) is not the jobs' cost.
        done = [job for job in Job.fetch_many(job_ids, connection=connection) if job is not None]
    finally:
        cleanup(connection, f"{namespace}:*", f"rq:*{namespace}*")
    began = min(job.started_at for job in done if job.started_at)
    ended = max(job.ended_at for job in done if job.ended_at)
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
    parser.add_argument("--no-dramatiq", action="store_true", help="skip Dramatiq (not installed)")
    args = parser.parse_args()
    peers: dict[str, type[ListSignalled]] = {}
    if not args.no_celery:
        peers["celery"] = CeleryWorker
    if not args.no_dramatiq:
        peers["dramatiq"] = DramatiqWorker
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
            contenders += [(name, peer(args.redis_url, logs)) for name, peer in peers.items()]
            turn = round_ % len(contenders)  # each goes first in turn
            for name, contender in contenders[turn:] + contenders[:turn]:
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
    labels = {"celery": "celery (prefork, c=1)", "dramatiq": "dramatiq (p=1, t=1)"}
    print(f"One worker process each, {args.rounds} rounds in turn, medians; Redis at {args.redis_url}")
    print(f"steps/s, {args.runs} runs of {STEPS_PER_RUN} sequential no-op steps started at once:")
    print(f"  {'switchboard':24} {m['switchboard steps/s']:8.1f}")
    for peer in peers:
        print(f"  {labels[peer]:24} {m[f'{peer} steps/s']:8.1f}")
    for peer in peers:
        ratio = m["switchboard steps/s"] / m[f"{peer} steps/s"]
        print(f"  {'ratio switchboard/' + peer:24} {ratio:8.2f}  (target >= 1.00)")
    print(f"  raw RQ jobs, RQ's forking worker     {m['raw RQ forking']:8.1f} jobs/s")
    print(f"  raw RQ jobs, Switchboard's worker    {m['raw RQ reused horse']:8.1f} jobs/s")
    print(f"  ratio switchboard/raw RQ (forking)   {m['switchboard steps/s'] / m['raw RQ forking']:8.2f}")
    print(f"a {STEPS_PER_RUN}-step run started alone, median of {len(figures['switchboard run'])}:")
    print(f"  {'switchboard':24} {m['switchboard run'] * 1000:8.1f} ms  (target < 50 ms)")
    for peer in peers:
        print(f"  {peer:24} {m[f'{peer} run'] * 1000:8.1f} ms")
    for peer in peers:
        print(f"  {'ratio switchboard/' + peer:24} {m['switchboard run'] / m[f'{peer} run']:8.2f}")
    print("switchboard cost per step, one run at a time:")
    costs = {size: m[f"per step {size}"] for size in PER_STEP_SIZES}
    for size, cost in costs.items():
        print(f"  {size:4d} steps per run      {cost * 1000:8.2f} ms")
    print(f"  largest/smallest         {max(costs.values()) / min(costs.values()):8.2f}  (target <= 1.50)")


if __name__ == "__main__":
    main()
