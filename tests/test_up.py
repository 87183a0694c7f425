"""The README's main command: `switchboard up` on the embedded Redis runs a sample workflow end to end."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import WORKFLOWS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[dict[str, str], int]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "SWITCHBOARD_", "SLACK_"))}
    env.update({"SWITCHBOARD_DATA_DIR": str(tmp_path / "data"), "SWITCHBOARD_WORKFLOWS": str(WORKFLOWS)})
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "switchboard", "up", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                    assert json.load(response)["status"] == "ok"
                    break
            except OSError:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                assert time.monotonic() < deadline, "switchboard up did not answer /healthz"
                time.sleep(0.2)
        yield env, port
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
        # Its embedded Redis saved and stopped with it: nothing left running in the background.
        assert not (tmp_path / "data" / "redis.db.settings").exists(), output


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


def test_up_runs_the_approve_before_deploy_sample(up: tuple[dict[str, str], int]) -> None:
    env, _port = up
    started = cli(env, "--as", "alice", "run", "start", "deploy-approval", "service=api", "version=1.4.2")
    run_id = started.split()[1]
    wait_for(env, run_id, r"^  approve\s+waiting\s+awaiting approval: Deploy api 1.4.2 to production\?")
    assert f"{run_id[:8]}  deploy-approval" in cli(env, "tasks")
    cli(env, "--as", "bob", "approve", run_id[:8], "approve")
    done = wait_for(env, run_id, r"COMPLETED")
    assert re.search(r"^  deploy\s+succeeded", done, re.MULTILINE)
    assert re.search(r"^  announce\s+succeeded", done, re.MULTILINE)
