"""The README's main command: `switchboard up` on the embedded Redis runs a sample workflow end to end."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import WORKFLOWS
from tests.redis_servers import free_port


def up_env(data_dir: Path, workflows: Path = WORKFLOWS) -> dict[str, str]:
    """The environment of a fresh machine: no REDIS_URL, so `up` runs the embedded Redis in ``data_dir``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "SWITCHBOARD_", "SLACK_"))}
    env.update({"SWITCHBOARD_DATA_DIR": str(data_dir), "SWITCHBOARD_WORKFLOWS": str(workflows)})
    env["SWITCHBOARD_INSTANCE_FILE"] = os.environ["SWITCHBOARD_INSTANCE_FILE"]  # the test's own (conftest)
    return env


def start_up(env: dict[str, str], output: Path) -> subprocess.Popen[bytes]:
    """`switchboard up` with one worker, returned once it answers /healthz; it writes to ``output``.

    A file rather than a pipe: nobody reads a pipe while a test runs (a full one would
    block `up`), and a pipe left open by a stray worker would hang a read to its end.
    """
    port = free_port()
    with output.open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "switchboard", "up", "--port", str(port), "--workers", "1"],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                assert json.load(response)["status"] == "ok"
                return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                pytest.fail(f"switchboard up did not answer /healthz:\n{output.read_text()}")
            time.sleep(0.2)


def stop_up(process: subprocess.Popen[bytes], output: Path) -> None:
    """Ctrl-C, as an operator stops it: it must exit cleanly."""
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
    assert process.returncode == 0, output.read_text()


def pids_where(test: Callable[[Path], bool]) -> list[int]:
    """Live processes (by /proc) that pass ``test``; processes that end while looked at are skipped."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if test(entry):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def redis_servers_of(data_dir: Path) -> list[int]:
    """redis-server processes working in ``data_dir`` (Redis changes into its data directory)."""
    folder = data_dir.resolve()
    return pids_where(
        lambda proc: (proc / "comm").read_text().strip() == "redis-server"
        and Path(os.readlink(proc / "cwd")) == folder
    )


def processes_mentioning(fragment: str) -> list[int]:
    return pids_where(lambda proc: fragment.encode() in (proc / "cmdline").read_bytes())


def wait_until_gone(pids: Callable[[], list[int]], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while left := pids():
        assert time.monotonic() < deadline, f"still running: {left}"
        time.sleep(0.1)


@pytest.fixture
def up(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = up_env(tmp_path / "data")
    output = tmp_path / "up.log"
    process = start_up(env, output)
    try:
        yield env
    finally:
        stop_up(process, output)
        # Its embedded Redis saved and stopped with it: nothing left running in the background.
        assert not redis_servers_of(tmp_path / "data"), output.read_text()


def cli(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "switchboard", *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def wait_for(env: dict[str, str], run_id: str, pattern: str, seconds: float = 30) -> str:
    deadline = time.monotonic() + seconds
    while True:
        status = cli(env, "run", "status", run_id)
        if re.search(pattern, status, re.MULTILINE):
            return status
        assert time.monotonic() < deadline, f"waited for {pattern!r}:\n{status}"
        time.sleep(0.3)


def test_up_runs_the_approve_before_deploy_sample(up: dict[str, str]) -> None:
    env = up
    started = cli(env, "--as", "alice", "run", "start", "deploy-approval", "service=api", "version=1.4.2")
    run_id = started.split()[1]
    wait_for(env, run_id, r"^  approve\s+waiting\s+awaiting approval: Deploy api 1.4.2 to production\?")
    assert f"{run_id[:8]}  deploy-approval" in cli(env, "tasks")
    cli(env, "--as", "bob", "approve", run_id[:8], "approve")
    done = wait_for(env, run_id, r"COMPLETED")
    assert re.search(r"^  deploy\s+succeeded", done, re.MULTILINE)
    assert re.search(r"^  announce\s+succeeded", done, re.MULTILINE)
