"""Redis Sentinel: the engine and a real worker process follow the master through a failover.

A master, its replica and a sentinel are real redis-server processes of this test's own;
the engine and a ``switchboard worker`` are configured only by the Sentinel settings.
The master is SIGKILLed while steps run; the sentinel promotes the replica, the clients
find it through the sentinel, and every run completes (steps cut off by the failover
are found by the reaper and retried).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from redis.sentinel import SentinelConnectionPool

from engine.api import Engine
from engine.factory import build_engine
from engine.model import Run, RunStatus, StepStatus
from engine.settings import Settings
from tests.redis_servers import RedisServer, Sentinel, free_port, needs_redis_server
from tests.test_worker_e2e import OPERATOR, WORKER_TUNING, action, workflow

MASTER = "sbmaster"
RUNS = 4
FAILOVER = workflow(
    "failover",
    [
        action("first", "worker.actions:sleep", args={"seconds": 1}, retry=(retry := {
            "max_attempts": 5, "backoff": "500ms", "idempotent": True,
        })),
        action("second", "worker.actions:sleep", ["first"], args={"seconds": 1}, retry=retry),
    ],
)  # fmt: skip


def wait_until(condition: Callable[[], Any], what: str, timeout: float, logs: Callable[[], str]) -> Any:
    """Poll ``condition`` until it is truthy; Redis errors count as "not yet" (a failover is under way)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if result := condition():
                return result
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:g} s for {what}\n{logs()}")
        time.sleep(0.1)


class Cluster:
    """A master, a replica and a sentinel watching them, all killed when the test ends."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        # No 5 s pause before the first full sync (repl-diskless-sync-delay): the replica is in sync at once.
        self.master = RedisServer(folder / "master", args=("--repl-diskless-sync-delay", "0")).start()
        self.replica = RedisServer(folder / "replica", args=("--replicaof", "127.0.0.1", str(self.master.port)))
        self.replica.start()
        self.sentinel: Sentinel | None = None

    def watch(self) -> Sentinel:
        """Start the sentinel once the replica is in sync, so that it learns of the replica at once."""
        self.sentinel = Sentinel(self.folder / "sentinel", MASTER, self.master.port).start()
        return self.sentinel

    def sentinel_client(self) -> redis.Redis:
        assert self.sentinel is not None
        return redis.Redis(host="127.0.0.1", port=self.sentinel.port, decode_responses=True)

    def master_port(self) -> int:
        address: Any = self.sentinel_client().sentinel_get_master_addr_by_name(MASTER)
        return int(address[1])

    def replica_known(self) -> bool:
        replicas = self.sentinel_client().sentinel_slaves(MASTER)
        return any(int(r["port"]) == self.replica.port and not r["is_disconnected"] for r in replicas)

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.relative_to(self.folder)}\n{path.read_text(errors='replace')[-2500:]}"
            for path in sorted(self.folder.rglob("*.log"))
        )

    def stop(self) -> None:
        if self.sentinel is not None:
            self.sentinel.stop()
        self.master.kill()
        self.replica.kill()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path / "cluster")
    try:
        yield cluster
    finally:
        cluster.stop()


def sentinel_settings(cluster: Cluster, namespace: str, workflows: Path) -> dict[str, str]:
    assert cluster.sentinel is not None
    nobody = free_port()  # a sentinel that is down: the clients go on to the next one
    return {
        "SWITCHBOARD_REDIS_SENTINELS": f"127.0.0.1:{nobody},127.0.0.1:{cluster.sentinel.port}",
        "SWITCHBOARD_REDIS_SENTINEL_MASTER": MASTER,
        "SWITCHBOARD_KEY_PREFIX": f"{namespace}:",
        "SWITCHBOARD_QUEUE": namespace,
        "SWITCHBOARD_WORKFLOWS": str(workflows),
    }


def step_running(engine: Engine, runs: list[Run]) -> bool:
    return any(
        step.status is StepStatus.RUNNING for run in runs for step in engine.get_run(run.run_id).steps.values()
    )


def all_completed(engine: Engine, runs: list[Run]) -> bool:
    return all(engine.get_run(run.run_id).status is RunStatus.COMPLETED for run in runs)


@needs_redis_server
def test_runs_complete_through_a_failover_of_the_master(tmp_path: Path, cluster: Cluster) -> None:
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    (workflows / "failover.yaml").write_text(yaml.safe_dump(FAILOVER))
    replication = cluster.replica.client()
    wait_until(
        lambda: replication.info("replication")["master_link_status"] == "up", "replication", 10, cluster.logs
    )
    cluster.watch()
    wait_until(cluster.replica_known, "the sentinel to know the replica", 15, cluster.logs)

    settings = sentinel_settings(cluster, "sbfailover", workflows)
    engine = build_engine(Settings.model_validate(settings))  # these settings only, not the environment's
    pool = engine.redis.connection_pool
    assert isinstance(pool, SentinelConnectionPool)  # the master, through the sentinels
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "SWITCHBOARD_"))}
    worker_log = tmp_path / "cluster" / "worker.log"
    with worker_log.open("wb") as output:
        worker = subprocess.Popen(
            [sys.executable, "-m", "switchboard", "worker", "--name", "sbfailover-w1"],
            env={**env, **WORKER_TUNING, **settings},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        runs = [engine.start("failover", {}, OPERATOR) for _ in range(RUNS)]
        wait_until(lambda: step_running(engine, runs), "a step to run", 20, cluster.logs)

        cluster.master.kill()  # SIGKILL: the master is gone mid-step
        wait_until(lambda: cluster.master_port() == cluster.replica.port, "the failover", 30, cluster.logs)

        wait_until(lambda: all_completed(engine, runs), "every run to complete", 45, cluster.logs)
        assert worker.poll() is None, "the worker process exited during the failover\n" + cluster.logs()
        # The engine writes to the promoted replica, the one master now.
        assert pool.get_master_address()[1] == cluster.replica.port

        worker.send_signal(signal.SIGTERM)  # and the worker still stops when asked
        assert worker.wait(timeout=15) == 0, cluster.logs()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
