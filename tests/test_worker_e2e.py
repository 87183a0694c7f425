"""Steps executed by real RQ worker processes (``python -m worker``) on the real Redis.

Each test gets its own key prefix and queue, writes the workflows it needs to a
folder the workers load, starts worker processes, drives runs through the engine's
command API and polls the run state until it shows the expected outcome.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from rq.job import Job, JobStatus

from engine.api import Engine
from engine.catalog import load_folder
from engine.errors import NotFound
from engine.intake import Intake, StartRequest
from engine.model import Actor, ActorKind, FailureCode, Run, RunStatus, StepStatus
from tests.conftest import REDIS_URL

OPERATOR = Actor(kind=ActorKind.CLI, id="operator", name="Olive Operator")

# Fast settings so lost workers are noticed in seconds, not the production 15-25.
WORKER_TUNING = {
    "SWITCHBOARD_MAINTENANCE_INTERVAL": "0.2",
    "SWITCHBOARD_REAPER_INTERVAL": "0.5",
    "SWITCHBOARD_HEARTBEAT_INTERVAL": "1",
    "SWITCHBOARD_WORKER_LOST_AFTER": "3",
    "SWITCHBOARD_LOG_LEVEL": "INFO",
}


def action(step_id: str, ref: str, needs: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "type": "action", "action": ref, "needs": needs or [], **extra}


def workflow(workflow_id: str, steps: list[dict[str, Any]], **settings: Any) -> dict[str, Any]:
    return {
        "id": workflow_id,
        "name": workflow_id,
        "inputs": {"marker": {"type": "string", "default": ""}, "url": {"type": "string", "default": ""}},
        "settings": settings,
        "steps": steps,
    }


SLOW = "worker.actions:slow_write"
WORKFLOWS = [
    workflow(
        "chain",
        [
            action("first", "worker.actions:echo", args={"n": 41}),
            action("second", "worker.actions:echo", ["first"], args={"n": "{{ steps.first.result.n + 1 }}"}),
        ],
    ),
    workflow("not-json", [action("odd", "types:SimpleNamespace", args={"x": 1})]),
    workflow("no-such-action", [action("missing", "worker.actions:does_not_exist")]),
    workflow(
        "permanent",
        [
            action(
                "refuse",
                "worker.actions:fail",
                args={"message": "bad input", "retryable": False},
                retry={"max_attempts": 3, "backoff": 0.1},
            )
        ],
    ),
    workflow(
        "http",
        [
            {
                "id": "call",
                "type": "http",
                "http": {
                    "method": "POST",
                    "url": "{{ inputs.url }}",
                    "headers": {"X-Run": "{{ run.id }}"},
                    "json": {"hello": "world"},
                    "expect_status": [200],
                },
                "timeout": 5,
                "retry": {"max_attempts": 2, "backoff": 0.1, "idempotent": True},
            }
        ],
    ),
    workflow(
        "slow-then-echo",
        [
            action("slow", SLOW, args={"path": "{{ inputs.marker }}", "seconds": 1.5}),
            action("after", "worker.actions:echo", ["slow"]),
        ],
    ),
    workflow("long", [action("slow", SLOW, args={"path": "{{ inputs.marker }}", "seconds": 3})]),
    workflow(
        "long-drain-timeout",
        [action("slow", SLOW, args={"path": "{{ inputs.marker }}", "seconds": 3})],
        drain_timeout=1,
    ),
    workflow(
        "timeout",
        [action("slow", SLOW, args={"path": "{{ inputs.marker }}", "seconds": 10}, timeout=1)],
    ),
    workflow(
        "flaky",
        [
            action(
                "flaky",
                "worker.actions:flaky",
                args={"succeed_on_attempt": 3},
                retry={"max_attempts": 3, "backoff": 0.3, "backoff_factor": 2},
            )
        ],
    ),
    workflow(
        "lost-idempotent",
        [
            action(
                "slow",
                SLOW,
                args={"path": "{{ inputs.marker }}", "seconds": 3},
                retry={"max_attempts": 2, "backoff": 0.1, "idempotent": True},
            ),
            action("after", "worker.actions:echo", ["slow"]),
        ],
    ),
    workflow(
        "horse-killed",
        [
            action(
                "oom",
                "crashing:killed_on_first_attempt",
                retry={"max_attempts": 2, "backoff": 0.1, "idempotent": True},
            )
        ],
    ),
    workflow(
        "lost-once",
        [
            action("slow", SLOW, args={"path": "{{ inputs.marker }}", "seconds": 30}),
            action("after", "worker.actions:echo", ["slow"]),
        ],
    ),
]


class Harness:
    """Workers, engine and waiting, for one test's namespace."""

    def __init__(self, tmp_path: Path, namespace: str, connection: redis.Redis) -> None:
        self.tmp = tmp_path
        self.namespace = namespace
        self.redis = connection
        folder = tmp_path / "workflows"
        folder.mkdir()
        for definition in WORKFLOWS:
            (folder / f"{definition['id']}.yaml").write_text(yaml.safe_dump(definition))
        catalog = load_folder(folder)
        assert not catalog.errors, catalog.errors
        self.engine = Engine(connection, catalog, key_prefix=f"{namespace}:", queue_name=namespace)
        self.env = {
            **os.environ,
            **WORKER_TUNING,
            "REDIS_URL": REDIS_URL,
            "SWITCHBOARD_KEY_PREFIX": f"{namespace}:",
            "SWITCHBOARD_QUEUE": namespace,
            "SWITCHBOARD_WORKFLOWS": str(folder),
        }
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def start_worker(self, suffix: str = "w1") -> str:
        name = f"{self.namespace}-{suffix}"
        log = (self.tmp / f"{name}.log").open("wb")
        self.workers[name] = subprocess.Popen(
            [sys.executable, "-m", "worker", "--name", name],
            env=self.env,
            cwd=self.tmp,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return name

    def kill_worker(self, name: str) -> None:
        self.workers[name].send_signal(signal.SIGKILL)
        self.workers[name].wait(timeout=5)

    def stop_workers(self) -> None:
        for process in self.workers.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.workers.values():
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}" for path in self.tmp.glob("*.log")
        )

    def start(self, workflow_id: str, **inputs: Any) -> Run:
        return self.engine.start(workflow_id, inputs, OPERATOR)

    def wait_for(self, run_id: str, condition: Callable[[Run], bool], what: str, timeout: float = 20) -> Run:
        """Poll the run until ``condition`` holds; fail with the run's state and the worker logs."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                run = self.engine.get_run(run_id)
            except NotFound:  # accepted, not started yet
                if time.monotonic() > deadline:
                    pytest.fail(f"run {run_id} never started\n{self.logs()}")
                time.sleep(0.05)
                continue
            if condition(run):
                return run
            if time.monotonic() > deadline:
                steps = {s.step_id: (s.status.value, s.attempt, s.error) for s in run.steps.values()}
                pytest.fail(f"run {run_id} never {what}: {run.status.value} {steps}\n{self.logs()}")
            time.sleep(0.05)

    def wait_until_finished(self, run_id: str, timeout: float = 20) -> Run:
        return self.wait_for(run_id, lambda r: r.status.terminal, "finished", timeout)

    def wait_until_running(self, run_id: str, step_id: str) -> Run:
        return self.wait_for(
            run_id, lambda r: r.steps[step_id].status is StepStatus.RUNNING, f"ran step {step_id}"
        )

    def event_types(self, run_id: str) -> list[str]:
        return [e.type for e in self.engine.events(run_id)]


@pytest.fixture
def harness(tmp_path: Path, namespace: str, redis_conn: redis.Redis) -> Iterator[Harness]:
    h = Harness(tmp_path, namespace, redis_conn)
    yield h
    h.stop_workers()  # the namespace fixture then removes their jobs and RQ registrations


class Endpoint(BaseHTTPRequestHandler):
    """``/status/<code>`` answers with that code and echoes what it was sent."""

    def do_POST(self) -> None:
        code = int(self.path.rsplit("/", 1)[-1])
        length = int(self.headers.get("Content-Length") or 0)
        received = json.loads(self.rfile.read(length) or b"null")
        body = json.dumps({"received": received, "run": self.headers.get("X-Run")}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def marker_lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def sleep_past(run: Run, step_id: str, seconds: float) -> None:
    """Wait until ``seconds`` after the step started: past when its action would have written."""
    started = run.steps[step_id].started_at
    assert started is not None
    time.sleep(max(0.0, seconds - (time.time() - started.timestamp())))


# -- step types --------------------------------------------------------------------------------------


def test_a_worker_starts_accepted_runs_and_runs_them(harness: Harness) -> None:
    # What a webhook's 202 promised: the run id now, the run moments later, started by a worker.
    intake = Intake(harness.engine)
    requests = [StartRequest("chain", {}, OPERATOR, {"kind": "webhook"}, f"src:d{i}") for i in range(3)]
    accepted = intake.accept(requests)
    assert [a.run_id for a in accepted] == [r.run_id for r in requests]
    assert intake.request(requests[0].run_id) is not None  # readable by its id before it starts
    harness.start_worker()
    for request in requests:
        run = harness.wait_until_finished(request.run_id)
        assert run.status is RunStatus.COMPLETED and run.trigger["kind"] == "webhook"
        assert intake.request(request.run_id) is None
    assert intake.waiting_for() == 0


def test_actions_run_in_order_and_pass_results_on(harness: Harness) -> None:
    harness.start_worker()
    run = harness.start("chain")

    run = harness.wait_until_finished(run.run_id)

    assert run.status is RunStatus.COMPLETED, run.failure
    assert run.steps["first"].result == {"n": 41}
    assert run.steps["second"].result == {"n": 42}
    assert run.steps["second"].worker == f"{harness.namespace}-w1"


def test_action_failures_carry_a_clear_error(harness: Harness) -> None:
    harness.start_worker()
    odd = harness.start("not-json")
    missing = harness.start("no-such-action")
    refused = harness.start("permanent")

    odd_run = harness.wait_until_finished(odd.run_id)
    missing_run = harness.wait_until_finished(missing.run_id)
    refused_run = harness.wait_until_finished(refused.run_id)

    odd_error = odd_run.steps["odd"].error
    assert odd_error is not None and odd_error.code is FailureCode.STEP_FAILED
    assert "JSON cannot carry" in odd_error.message and "SimpleNamespace" in odd_error.message
    missing_error = missing_run.steps["missing"].error
    assert missing_error is not None and "Cannot load action 'worker.actions:does_not_exist'" in (
        missing_error.message
    )
    # A PermanentError is not retried although the policy allows three attempts.
    refused_step = refused_run.steps["refuse"]
    assert refused_run.status is RunStatus.FAILED
    assert refused_step.attempt == 1 and refused_step.error is not None
    assert refused_step.error.retryable is False and "bad input" in refused_step.error.message


def test_http_step_success_and_failures(harness: Harness, endpoint: str) -> None:
    harness.start_worker()
    ok = harness.start("http", url=f"{endpoint}/status/200")
    unavailable = harness.start("http", url=f"{endpoint}/status/503")
    not_found = harness.start("http", url=f"{endpoint}/status/404")
    unreachable = harness.start("http", url="http://127.0.0.1:9/nothing-listens-here")

    ok_run = harness.wait_until_finished(ok.run_id)
    assert ok_run.status is RunStatus.COMPLETED, ok_run.failure
    result = ok_run.steps["call"].result
    assert result["status"] == 200
    assert result["body"] == {"received": {"hello": "world"}, "run": ok.run_id}
    assert result["headers"]["content-type"] == "application/json"

    # 503 may pass on retry: attempted twice (the policy's maximum), then failed.
    failed = harness.wait_until_finished(unavailable.run_id)
    error = failed.steps["call"].error
    assert failed.status is RunStatus.FAILED and failed.steps["call"].attempt == 2
    assert error is not None and error.code is FailureCode.HTTP_REQUEST_FAILED
    assert error.provider_status == 503 and error.retryable is True

    # 404 will not: one attempt only.
    failed = harness.wait_until_finished(not_found.run_id)
    error = failed.steps["call"].error
    assert failed.steps["call"].attempt == 1
    assert error is not None and error.provider_status == 404 and error.retryable is False
    assert "returned 404, expected 200" in error.message

    failed = harness.wait_until_finished(unreachable.run_id)
    error = failed.steps["call"].error
    assert error is not None and error.code is FailureCode.HTTP_REQUEST_FAILED
    assert error.retryable is True and error.provider_status is None


# -- operator controls -------------------------------------------------------------------------------


def test_immediate_stop_kills_the_running_step(harness: Harness) -> None:
    marker = harness.tmp / "long.marker"
    harness.start_worker()
    run = harness.start("long", marker=str(marker))
    running = harness.wait_until_running(run.run_id, "slow")
    job_id = running.steps["slow"].job_id
    assert job_id is not None

    stopped = harness.engine.stop(run.run_id, OPERATOR, mode="immediate")

    assert stopped.status is RunStatus.STOPPED
    assert stopped.steps["slow"].status is StepStatus.CANCELLED
    assert stopped.failure is not None and stopped.failure.code is FailureCode.RUN_STOPPED
    job = Job.fetch(job_id, connection=harness.redis)
    deadline = time.monotonic() + 10
    while job.get_status() is JobStatus.STARTED and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.get_status() in (JobStatus.STOPPED, JobStatus.FAILED)
    sleep_past(running, "slow", 3.5)
    assert marker_lines(marker) == []
    # The worker survived the kill of its work horse and takes the next step.
    again = harness.start("chain")
    assert harness.wait_until_finished(again.run_id).status is RunStatus.COMPLETED


def test_graceful_stop_lets_the_running_step_finish_and_starts_nothing_new(harness: Harness) -> None:
    marker = harness.tmp / "drain.marker"
    harness.start_worker()
    run = harness.start("slow-then-echo", marker=str(marker))
    harness.wait_until_running(run.run_id, "slow")

    draining = harness.engine.stop(run.run_id, OPERATOR, mode="graceful")
    assert draining.status is RunStatus.DRAINING

    run = harness.wait_until_finished(run.run_id)
    assert run.status is RunStatus.STOPPED
    assert run.failure is not None and run.failure.code is FailureCode.RUN_STOPPED
    assert run.steps["slow"].status is StepStatus.SUCCEEDED
    assert run.steps["after"].status is StepStatus.SKIPPED
    assert marker_lines(marker) == ["1"]


def test_drain_timeout_escalates_and_kills_the_step(harness: Harness) -> None:
    marker = harness.tmp / "drain-timeout.marker"
    harness.start_worker()
    run = harness.start("long-drain-timeout", marker=str(marker))
    running = harness.wait_until_running(run.run_id, "slow")

    harness.engine.stop(run.run_id, OPERATOR, mode="graceful")

    run = harness.wait_until_finished(run.run_id)
    assert run.status is RunStatus.STOPPED
    assert run.failure is not None and run.failure.code is FailureCode.DRAIN_TIMEOUT
    assert run.steps["slow"].status is StepStatus.CANCELLED
    sleep_past(running, "slow", 3.5)
    assert marker_lines(marker) == []


def test_paused_run_holds_queued_steps_until_resumed(harness: Harness) -> None:
    marker = harness.tmp / "pause.marker"
    # No worker yet: the first step waits in the queue when the run is paused.
    run = harness.start("slow-then-echo", marker=str(marker))
    assert run.steps["slow"].status is StepStatus.QUEUED
    harness.engine.pause(run.run_id, OPERATOR)

    harness.start_worker()
    harness.wait_for(run.run_id, lambda r: "step_held" in harness.event_types(r.run_id), "held")
    # Read after the event: the run read before it may predate the hold (one transaction writes both).
    held = harness.engine.get_run(run.run_id)
    assert held.status is RunStatus.PAUSED
    assert held.steps["slow"].status is StepStatus.PENDING
    assert marker_lines(marker) == []

    harness.engine.resume(run.run_id, OPERATOR)
    run = harness.wait_until_finished(run.run_id)
    assert run.status is RunStatus.COMPLETED, run.failure
    assert marker_lines(marker) == ["1"]
    types = harness.event_types(run.run_id)
    assert types.index("step_held") < types.index("run_resumed") < types.index("step_started")


# -- timeouts, retries and lost workers ----------------------------------------------------------------


def test_step_timeout_stops_the_step(harness: Harness) -> None:
    marker = harness.tmp / "timeout.marker"
    harness.start_worker()
    run = harness.start("timeout", marker=str(marker))

    run = harness.wait_until_finished(run.run_id)

    error = run.steps["slow"].error
    assert run.status is RunStatus.FAILED
    assert error is not None and error.code is FailureCode.STEP_TIMED_OUT
    assert "1s timeout" in error.message
    assert marker_lines(marker) == []


def test_retry_with_backoff_then_success(harness: Harness) -> None:
    harness.start_worker()
    run = harness.start("flaky")

    run = harness.wait_until_finished(run.run_id)

    assert run.status is RunStatus.COMPLETED, run.failure
    assert run.steps["flaky"].result == {"attempt": 3}
    events = harness.engine.events(run.run_id)
    retries = [e for e in events if e.type == "step_retry_scheduled"]
    assert [e.data["attempt"] for e in retries] == [2, 3]
    assert [e.data["error"]["code"] for e in retries] == ["STEP_FAILED", "STEP_FAILED"]
    starts = {e.data["attempt"]: e.at for e in events if e.type == "step_started"}
    for retry in retries:
        # Each attempt gets its own job and starts no earlier than its backoff allows.
        assert starts[retry.data["attempt"]].isoformat() >= retry.data["retry_at"]
    delays = [(e.at.fromisoformat(e.data["retry_at"]) - e.at).total_seconds() for e in retries]
    assert delays == pytest.approx([0.3, 0.6])
    job_ids = {e.data["job_id"] for e in events if e.type == "step_queued"}
    assert len(job_ids) == 3


def test_killed_worker_idempotent_step_is_retried_elsewhere(harness: Harness) -> None:
    marker = harness.tmp / "lost.marker"
    names = [harness.start_worker("w1"), harness.start_worker("w2")]
    run = harness.start("lost-idempotent", marker=str(marker))
    running = harness.wait_until_running(run.run_id, "slow")
    victim = running.steps["slow"].worker
    assert victim in names

    harness.kill_worker(victim)

    run = harness.wait_until_finished(run.run_id, timeout=30)
    assert run.status is RunStatus.COMPLETED, run.failure
    slow = run.steps["slow"]
    assert slow.attempt == 2 and slow.worker != victim
    lost = [e for e in harness.engine.events(run.run_id) if e.type == "step_retry_scheduled"]
    assert [e.data["error"]["code"] for e in lost] == ["WORKER_LOST"]
    assert victim in lost[0].data["error"]["message"]
    # Only the retry wrote its line: the dead worker's work horse ended with it.
    assert marker_lines(marker) == ["2"]


CRASHING_ACTION = """
import os, signal

def killed_on_first_attempt(context=None, **args):
    if context["attempt"] == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does to a work horse
    return {"attempt": context["attempt"]}
"""


def test_a_work_horse_killed_mid_step_is_reported_by_its_worker_at_once(harness: Harness) -> None:
    # The worker survives and sees its horse die: it reports the step lost itself. The
    # reaper is made too slow to be the one that notices.
    (harness.tmp / "crashing.py").write_text(CRASHING_ACTION)
    harness.env["SWITCHBOARD_REAPER_INTERVAL"] = "600"
    harness.start_worker()
    run = harness.start("horse-killed")
    run = harness.wait_until_finished(run.run_id, timeout=15)
    assert run.status is RunStatus.COMPLETED, run.failure
    assert run.steps["oom"].attempt == 2 and run.steps["oom"].result == {"attempt": 2}
    lost = [e for e in harness.engine.events(run.run_id) if e.type == "step_retry_scheduled"]
    assert [e.data["error"]["code"] for e in lost] == ["WORKER_LOST"]


def test_killed_worker_fails_a_step_that_is_not_idempotent(harness: Harness) -> None:
    marker = harness.tmp / "lost-once.marker"
    victim = harness.start_worker("w1")
    harness.start_worker("w2")
    run = harness.start("lost-once", marker=str(marker))
    running = harness.wait_until_running(run.run_id, "slow")
    victim = running.steps["slow"].worker or victim

    harness.kill_worker(victim)

    run = harness.wait_until_finished(run.run_id, timeout=30)
    assert run.status is RunStatus.FAILED
    assert run.failure is not None and run.failure.code is FailureCode.WORKER_LOST
    assert run.steps["slow"].status is StepStatus.FAILED and run.steps["slow"].attempt == 1
    assert run.steps["after"].status is StepStatus.SKIPPED
    assert marker_lines(marker) == []


def test_a_worker_whose_clock_is_far_off_is_not_declared_lost(harness: Harness) -> None:
    # RQ's heartbeat records carry the worker machine's time. Make them say the worker was
    # last heard of hours ago (as a clock far behind would) for the whole step: liveness is
    # judged on Redis's clock, so the step must finish once, not be declared lost.
    marker = harness.tmp / "skew.marker"
    name = harness.start_worker()
    run = harness.start("lost-once", marker=str(marker))
    harness.wait_until_running(run.run_id, "slow")
    behind = threading.Event()

    def clock_far_behind() -> None:
        while not behind.is_set():
            harness.redis.hset(f"rq:worker:{name}", "last_heartbeat", "2026-01-01T00:00:00.000000Z")
            time.sleep(0.05)

    skew = threading.Thread(target=clock_far_behind, daemon=True)
    skew.start()
    try:
        time.sleep(5)  # past worker_lost_after (3 s) plus a reaper pass (0.5 s)
        still = harness.engine.get_run(run.run_id)
        assert still.status is RunStatus.RUNNING and still.steps["slow"].status is StepStatus.RUNNING
        assert "step_retry_scheduled" not in harness.event_types(run.run_id)
    finally:
        behind.set()
        skew.join()
    # A live worker whose step is declared lost would fail this run with WORKER_LOST.
    harness.engine.stop(run.run_id, OPERATOR)
    assert harness.wait_until_finished(run.run_id).failure.code is FailureCode.RUN_STOPPED  # type: ignore[union-attr]


def test_queued_step_whose_job_vanished_is_enqueued_again(harness: Harness) -> None:
    run = harness.start("chain")
    job_id = run.steps["first"].job_id
    assert job_id is not None
    # What an evicting Redis would do: the job and its queue entry are gone.
    harness.redis.delete(Job.key_for(job_id))
    harness.redis.lrem(harness.engine.queue.key, 0, job_id)
    assert harness.engine.queue.count == 0

    harness.start_worker()

    run = harness.wait_until_finished(run.run_id)
    assert run.status is RunStatus.COMPLETED, run.failure
    assert run.steps["first"].job_id == job_id and run.steps["first"].attempt == 1
