"""Redis goes away and comes back: workers ride it out, every run moves on, the web answers 503.

Each test owns a real redis-server (AOF, on a free port: ``tests.redis_servers``), stops or
kills it while real worker processes are in the middle of their steps, and starts it again
on the same port and data. Nothing here touches the shared Redis on 6379, so these tests
run beside any others.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import yaml
from rq.job import Job

from engine.api import Engine
from engine.catalog import load_folder
from engine.intake import ACCEPT_TIMEOUT_SECONDS
from engine.model import Run, RunStatus
from tests.engine_helpers import Clock, engine_for
from tests.redis_servers import RedisServer, needs_redis_server, redis_server
from tests.test_worker_e2e import OPERATOR, WORKER_TUNING, action, marker_lines, workflow
from tests.web_helpers import APPROVAL_WORKFLOW, bearer, problem, standard_headers, web_settings
from webhooks.server import create_app
from webhooks.settings import WebSettings

pytestmark = needs_redis_server

RUNS = 50
STEPS = ("fetch", "build", "ship")
# Not idempotent (the default): a step lost with its worker would fail its run, so a run
# that completes shows each step ran once, and its marker file says how often it ran.
OUTAGE_WORKFLOW = workflow(
    "outage",
    [
        action(
            step,
            "worker.actions:slow_write",
            [STEPS[i - 1]] if i else [],
            args={
                "path": f"{{{{ inputs.marker }}}}.{step}",
                "seconds": 0.1,
            },
        )
        for i, step in enumerate(STEPS)
    ],
)
# One slow idempotent step: lost with a killed worker, it runs again.
LONG_WORKFLOW = workflow(
    "long",
    [
        action(
            "slow",
            "worker.actions:slow_write",
            args={"path": "{{ inputs.marker }}", "seconds": 2},
            retry={"max_attempts": 2, "backoff": 0.1, "idempotent": True},
        )
    ],
)
PREFIX = "outage:"
T = TypeVar("T")


def answered(call: Callable[[], T]) -> T:
    """``call()`` once this test's own client reaches Redis again (it is down on purpose)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return call()
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def outage_engine(server: RedisServer, folder: Path) -> Engine:
    """An engine on ``server`` with the outage workflow, written to ``folder`` for workers to load."""
    folder.mkdir(exist_ok=True)
    for definition in (OUTAGE_WORKFLOW, LONG_WORKFLOW):
        (folder / f"{definition['id']}.yaml").write_text(yaml.safe_dump(definition))
    catalog = load_folder(folder)
    assert not catalog.errors, catalog.errors
    return Engine(server.client(), catalog, key_prefix=PREFIX, queue_name="outage")


class Workers:
    """Real worker processes (``python -m worker``) on the test's own Redis."""

    def __init__(self, tmp_path: Path, server: RedisServer) -> None:
        self.tmp = tmp_path
        folder = tmp_path / "workflows"
        self.engine = outage_engine(server, folder)
        self.env = {
            **os.environ,
            **WORKER_TUNING,
            "SWITCHBOARD_HAND_OFF_GRACE": "1",
            "REDIS_URL": server.url,
            "SWITCHBOARD_KEY_PREFIX": PREFIX,
            "SWITCHBOARD_QUEUE": "outage",
            "SWITCHBOARD_WORKFLOWS": str(folder),
        }
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, count: int) -> None:
        for index in range(count):
            log = (self.tmp / f"worker-{len(self.processes)}.log").open("wb")
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "worker", "--name", f"outage-w{index}"],
                    env=self.env,
                    cwd=self.tmp,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    def alive(self) -> bool:
        return all(process.poll() is None for process in self.processes)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def logs(self, tail: int = 4000) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}" for path in self.tmp.glob("*.log")
        )

    def runs(self, run_ids: list[str]) -> list[Run]:
        return [answered(lambda run_id=run_id: self.engine.get_run(run_id)) for run_id in run_ids]  # type: ignore[misc]

    def wait_for(self, run_ids: list[str], condition: Callable[[list[Run]], bool], what: str) -> list[Run]:
        deadline = time.monotonic() + 45
        while True:
            runs = self.runs(run_ids)
            if condition(runs):
                return runs
            if time.monotonic() > deadline:
                states = {
                    r.short_id: (r.status.value, {s.step_id: s.status.value for s in r.steps.values()})
                    for r in runs
                    if not r.status.terminal
                }
                pytest.fail(f"never {what}: {states}\n{self.logs()}")
            time.sleep(0.1)


@pytest.fixture
def always_fsynced(tmp_path: Path) -> Iterator[RedisServer]:
    """A server that fsyncs its AOF before each reply: a SIGKILL loses nothing it acknowledged.

    (With ``appendfsync everysec`` a crash may lose the last second of acknowledged
    writes: a step start or report the engine was told had happened. No client can tell.)
    """
    with redis_server(tmp_path / "redis-always", args=("--appendfsync", "always")) as server:
        yield server


def interrupt(server: RedisServer, how: str) -> None:
    if how == "SIGTERM":
        server.stop()
    else:
        server.kill()


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_workers_ride_out_a_redis_restart_and_every_run_completes(
    how: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server: RedisServer = request.getfixturevalue("own_redis" if how == "SIGTERM" else "always_fsynced")
    workers = Workers(tmp_path, server)
    workers.start(2)
    pids = [process.pid for process in workers.processes]
    try:
        run_ids = [
            workers.engine.start("outage", {"marker": str(tmp_path / f"run{i}")}, OPERATOR).run_id
            for i in range(RUNS)
        ]
        # Redis goes away while both workers are in the middle of steps and most runs have
        # steps still to go.
        workers.wait_for(
            run_ids,
            lambda runs: sum(r.steps["fetch"].status.value == "succeeded" for r in runs) >= 10,
            "got going",
        )
        in_flight = sum(not r.status.terminal for r in workers.runs(run_ids))
        interrupt(server, how)
        assert in_flight >= RUNS // 2
        down_until = time.monotonic() + 4  # the outage itself: workers fail to reach Redis throughout
        while time.monotonic() < down_until:
            assert workers.alive(), workers.logs()
            time.sleep(0.2)
        server.start()

        runs = workers.wait_for(run_ids, lambda runs: all(r.status.terminal for r in runs), "finished")

        assert [r.status for r in runs] == [RunStatus.COMPLETED] * RUNS, workers.logs()
        assert workers.alive() and [p.pid for p in workers.processes] == pids
        for i in range(RUNS):
            for step in STEPS:
                assert marker_lines(tmp_path / f"run{i}.{step}") == ["1"], (i, step)
        # One warning per retry, none with a traceback.
        logs = workers.logs(tail=10**7)
        assert "Redis unavailable" in logs and "Redis answers again" in logs
        assert "Traceback" not in logs and " ERROR " not in logs, logs
    finally:
        workers.stop()


def test_a_job_left_between_queue_and_start_is_enqueued_again(own_redis: RedisServer, tmp_path: Path) -> None:
    # What a worker leaves behind when Redis goes away between its BLMOVE and the step's start:
    # the job in RQ's intermediate list, status queued, in no queue. Nobody will ever take it.
    workers = Workers(tmp_path, own_redis)
    run = workers.engine.start("outage", {"marker": str(tmp_path / "stranded")}, OPERATOR)
    job_id = run.steps["fetch"].job_id
    assert job_id is not None
    queue = workers.engine.queue
    assert own_redis.client().lmove(queue.key, queue.intermediate_queue_key) == job_id.encode()
    assert Job.fetch(job_id, connection=workers.engine.redis).get_status() == "queued"
    workers.start(1)
    try:
        (run,) = workers.wait_for([run.run_id], lambda runs: runs[0].status.terminal, "finished")
        assert run.status is RunStatus.COMPLETED, run.failure
        assert run.steps["fetch"].job_id == job_id and run.steps["fetch"].attempt == 1
        assert marker_lines(tmp_path / "stranded.fetch") == ["1"]
        assert own_redis.client().llen(queue.intermediate_queue_key) == 0
    finally:
        workers.stop()


async def test_the_web_answers_503_while_redis_is_down_and_recovers_by_itself(
    own_redis: RedisServer, tmp_path: Path, aiohttp_client: Any
) -> None:
    engine = outage_engine(own_redis, tmp_path / "workflows")
    client = await aiohttp_client(create_app(engine, web_settings(tmp_path)))
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/v1/runs", headers=bearer("viewer"))).status == 200

    own_redis.stop()
    for path, headers in (("/healthz", {}), ("/v1/runs", bearer("viewer"))):
        response = await client.get(path, headers=headers)
        await problem(response, 503)
        assert int(response.headers["Retry-After"]) >= 1, path
    starters = [t for t in threading.enumerate() if t.name.startswith("switchboard-starter-web")]
    assert starters and all(t.is_alive() for t in starters)

    own_redis.start()
    deadline = time.monotonic() + 15
    while (await client.get("/healthz")).status != 200:
        assert time.monotonic() < deadline, "the web app never saw Redis again"
        await asyncio.sleep(0.1)
    assert (await client.get("/v1/runs", headers=bearer("viewer"))).status == 200
    started = await client.post(
        "/v1/workflows/outage/runs",
        json={"inputs": {"marker": str(tmp_path / "web")}},
        headers=bearer("operator"),
    )
    assert started.status in (201, 202), await started.text()
    assert all(t.is_alive() for t in starters)


def test_a_worker_restarted_under_its_name_takes_over_from_its_killed_self(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    # A supervisor restarts a SIGKILLed worker under the same --name at once: its RQ record
    # has no death date and its liveness key has not expired yet. RQ alone refuses the name.
    workers = Workers(tmp_path, own_redis)
    workers.start(1)
    try:
        run = workers.engine.start("long", {"marker": str(tmp_path / "long.marker")}, OPERATOR)
        running = workers.wait_for(
            [run.run_id], lambda runs: runs[0].steps["slow"].status.value == "running", "ran its step"
        )
        assert running[0].steps["slow"].worker == "outage-w0"
        workers.processes[0].kill()
        workers.processes[0].wait()
        assert own_redis.client().exists(f"{PREFIX}worker:alive:outage-w0")

        workers.start(1)  # the same name, outage-w0

        (run,) = workers.wait_for([run.run_id], lambda runs: runs[0].status.terminal, "finished")
        assert run.status is RunStatus.COMPLETED, run.failure
        assert run.steps["slow"].attempt == 2 and run.steps["slow"].worker == "outage-w0"
        assert marker_lines(tmp_path / "long.marker") == ["2"]
        assert workers.processes[1].poll() is None, workers.logs()
    finally:
        workers.stop()


def test_workers_register_again_with_a_redis_that_restarted_empty(tmp_path: Path) -> None:
    # No persistence: the restarted server knows nothing, not even the workers. They say who
    # they are again by themselves and take new work.
    with redis_server(tmp_path / "redis-empty", appendonly=False) as server:
        workers = Workers(tmp_path, server)
        workers.env["SWITCHBOARD_WORKER_TTL"] = "16"  # an idle worker beats every second
        workers.start(1)
        client = server.client()
        try:
            record = "rq:worker:outage-w0"
            answered(lambda: wait_until(lambda: client.hget(record, "birth") is not None, "registered"))
            server.stop()
            server.start()
            assert not client.exists(record)
            wait_until(lambda: client.hget(record, "birth") is not None, "registered again", workers.logs)
            assert client.sismember("rq:workers", record)
            wait_until(lambda: bool(client.exists(f"{PREFIX}worker:alive:outage-w0")), "beating again")
            run = workers.engine.start("outage", {"marker": str(tmp_path / "after")}, OPERATOR)
            (run,) = workers.wait_for([run.run_id], lambda runs: runs[0].status.terminal, "finished")
            assert run.status is RunStatus.COMPLETED, run.failure
            assert workers.alive()
        finally:
            workers.stop()


def wait_until(condition: Callable[[], bool], what: str, logs: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"never {what}\n{logs()}")
        time.sleep(0.1)


def test_a_worker_told_to_stop_while_redis_is_down_stops_cleanly(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    workers = Workers(tmp_path, own_redis)
    workers.start(1)
    client = own_redis.client()
    wait_until(lambda: client.exists("rq:worker:outage-w0") == 1, "registered", workers.logs)
    own_redis.stop()
    wait_until(lambda: "Redis unavailable" in workers.logs(), "noticed the outage", workers.logs)

    workers.processes[0].terminate()

    assert workers.processes[0].wait(timeout=15) == 0, workers.logs()
    assert "Traceback" not in workers.logs(tail=10**7), workers.logs()


async def test_a_delivery_meeting_a_frozen_redis_is_answered_503_and_the_next_one_accepted(
    own_redis: RedisServer, tmp_path: Path, aiohttp_client: Any, settings: WebSettings
) -> None:
    # A Redis that stops answering (SIGSTOP: no reset, no error) must not hold a delivery
    # forever: the acceptor's own deadline answers it as Redis being away.
    engine = engine_for(own_redis.client(), "frozen", APPROVAL_WORKFLOW, clock=Clock(datetime.now(UTC)))
    client = await aiohttp_client(create_app(engine, settings.model_copy(update={"starts_after": 3600})))
    body = b'{"service": "api"}'
    accepted = await client.post("/webhooks/releases", data=body, headers=standard_headers(body, msg_id="m1"))
    assert accepted.status == 202, await accepted.text()

    assert own_redis.process is not None
    own_redis.process.send_signal(signal.SIGSTOP)
    try:
        began = time.monotonic()
        frozen = await client.post(
            "/webhooks/releases", data=body, headers=standard_headers(body, msg_id="m2")
        )
        document = await problem(frozen, 503)
        assert int(frozen.headers["Retry-After"]) >= 1
        assert "Redis" in document["detail"]
        assert time.monotonic() - began < ACCEPT_TIMEOUT_SECONDS + 3
    finally:
        own_redis.process.send_signal(signal.SIGCONT)
    # The sender's retry is accepted; the frozen call may have reached Redis (then it ran on
    # SIGCONT and the retry is its duplicate): either way one delivery, one run id.
    retried = await client.post("/webhooks/releases", data=body, headers=standard_headers(body, msg_id="m2"))
    assert retried.status == 202, await retried.text()
    again = await client.post("/webhooks/releases", data=body, headers=standard_headers(body, msg_id="m2"))
    assert (await again.json()) | {"duplicate": None} == (await retried.json()) | {"duplicate": None}
    assert (await again.json())["duplicate"] is True
