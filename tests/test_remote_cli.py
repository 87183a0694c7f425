"""Remote mode: with SWITCHBOARD_URL and SWITCHBOARD_TOKEN the CLI is a client of a real
`switchboard web`, acting as the token's identity; the server enforces roles and self-approval."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REDIS_URL
from tests.redis_servers import free_port
from tests.test_cli import GATE_FIRST, run_id_of

TOKENS = "alice:operator+approver:alice-token,bob:approver:bob-token,vic:viewer:vic-token"
# A task whose change request ends its branch, and an ask step: both decided from the CLI.
REVIEW_ONCE = """
id: review-once
name: Review once
steps:
  - id: ok
    type: human_task
    task: {title: Ship it, on_changes_requested: end}
"""
QUIZ = """
id: quiz
name: Quiz
steps:
  - id: q
    type: ask
    ask: {question: "Which region?", to: "#ops", expires_in: 1h}
"""


@contextlib.contextmanager
def web_server(namespace: str, tmp_path: Path, tokens: str) -> Iterator[str]:
    """A real `switchboard web` on the shared Redis under the test's namespace; its URL."""
    folder = tmp_path / "workflows"
    folder.mkdir()
    (folder / "release-gate.yaml").write_text(GATE_FIRST)
    (folder / "review-once.yaml").write_text(REVIEW_ONCE)
    (folder / "quiz.yaml").write_text(QUIZ)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SWITCHBOARD_", "SLACK_"))},
        "REDIS_URL": REDIS_URL,
        "SWITCHBOARD_KEY_PREFIX": f"{namespace}:",
        "SWITCHBOARD_QUEUE": namespace,
        "SWITCHBOARD_WORKFLOWS": str(folder),
        "SWITCHBOARD_API_TOKENS": tokens,
    }
    log = tmp_path / "web.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "switchboard", "web", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def server(namespace: str, tmp_path: Path) -> Iterator[str]:
    with web_server(namespace, tmp_path, TOKENS) as url:
        yield url


def remote(url: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI from a folder with nothing in it and no Redis configured: only the server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "SWITCHBOARD_"))}
    env.update({"SWITCHBOARD_URL": url, "SWITCHBOARD_TOKEN": token})
    return subprocess.run(
        [sys.executable, "-m", "switchboard", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_cli_acts_as_the_tokens_identity(server: str) -> None:
    started = remote(server, "alice-token", "run", "start", "release-gate", "version=3")
    assert started.returncode == 0, started.stderr
    run_id = run_id_of(started.stdout)
    assert "started by api:alice" in started.stdout  # the token's identity, not $USER
    assert f"next: switchboard approve {run_id[:8]} sign-off" in started.stdout

    viewer = remote(server, "vic-token", "run", "start", "release-gate", "version=4")
    assert viewer.returncode == 2
    assert "switchboard: Token 'vic' may not do this: it needs the operator role" in viewer.stderr

    own = remote(server, "alice-token", "approve", run_id[:8], "sign-off")
    assert own.returncode == 2 and "someone else must" in own.stderr  # self-approval, refused by the server

    pretending = remote(server, "bob-token", "approve", run_id[:8], "sign-off", "--as", "alice")
    assert pretending.returncode == 2 and "--as only works in local mode" in pretending.stderr

    [task] = json.loads(remote(server, "vic-token", "tasks", "--json").stdout)["tasks"]
    assert task["run_id"] == run_id
    approved = remote(server, "bob-token", "approve", run_id[:8], "sign-off", "--set", "notes=ok")
    assert approved.returncode == 0, approved.stderr
    assert "COMPLETED" in approved.stdout

    events = remote(server, "vic-token", "run", "events", run_id).stdout
    assert "task_completed [sign-off]  by api:bob" in events
    listed = remote(server, "vic-token", "run", "list", "completed").stdout
    assert listed.startswith(f"{run_id[:8]}  completed")
    waited = remote(server, "vic-token", "run", "follow", run_id)
    assert waited.returncode == 0 and f"run {run_id[:8]} completed" in waited.stdout

    stopped = run_id_of(remote(server, "alice-token", "run", "start", "release-gate", "version=5").stdout)
    assert remote(server, "alice-token", "run", "stop", stopped, "--graceful").returncode == 0
    replay = remote(server, "alice-token", "run", "replay", stopped, "version=6")
    assert replay.returncode == 0 and f"replay of {stopped}" in replay.stdout


def test_a_server_it_cannot_reach_or_a_wrong_token_is_a_sentence(server: str) -> None:
    wrong = remote(server, "nope", "run", "list")
    assert wrong.returncode == 2 and "switchboard: The bearer token is not valid." in wrong.stderr
    gone = remote(f"http://127.0.0.1:{free_port()}", "alice-token", "run", "list")
    assert gone.returncode == 5 and "Cannot reach Switchboard at http://127.0.0.1:" in gone.stderr


def test_a_server_without_tokens_says_so(namespace: str, tmp_path: Path) -> None:
    with web_server(namespace, tmp_path, "") as url:
        refused = remote(url, "anything", "run", "list")
    assert refused.returncode == 2
    assert "no API tokens are configured. Set SWITCHBOARD_API_TOKENS" in refused.stderr


def refused(done: subprocess.CompletedProcess[str]) -> str:
    """A refusal: exit 2 and one sentence on stderr (``switchboard: …``), nothing on stdout."""
    assert done.returncode == 2, (done.stdout, done.stderr)
    [line] = done.stderr.splitlines()
    assert line.startswith("switchboard: ") and line.endswith(".") and done.stdout == ""
    return line


def test_request_changes_and_answer_go_through_the_server(server: str) -> None:
    reviewed = run_id_of(remote(server, "alice-token", "run", "start", "review-once").stdout)
    viewer = remote(server, "vic-token", "request-changes", reviewed[:8], "ok", "--comment", "smaller")
    assert "Token 'vic' may not do this: it needs the approver role" in refused(viewer)
    own = remote(server, "alice-token", "request-changes", reviewed[:8], "ok", "--comment", "smaller")
    assert "someone else must" in refused(own)
    changed = remote(
        server, "bob-token", "--json", "request-changes", reviewed[:8], "ok", "--comment", "smaller"
    )
    assert changed.returncode == 0, changed.stderr
    run = json.loads(changed.stdout)
    assert (run["run_id"], run["status"], run["outcome"]) == (reviewed, "completed", "rejected")
    [decision] = run["steps"]["ok"]["task"]["decisions"]
    assert decision["by"]["id"] == "bob" and decision["comment"] == "smaller"
    again = remote(server, "bob-token", "request-changes", reviewed[:8], "ok", "--comment", "more")
    assert "Task 'ok' was already sent back for changes by api:bob at " in refused(again)

    asked = run_id_of(remote(server, "alice-token", "run", "start", "quiz").stdout)
    listing = remote(server, "vic-token", "tasks")
    assert listing.returncode == 0, listing.stderr
    assert f"{asked[:8]}  quiz" in listing.stdout and "  Which region?" in listing.stdout
    assert f'next: switchboard answer {asked[:8]} q "..."' in listing.stdout
    [question] = json.loads(remote(server, "vic-token", "tasks", asked, "--json").stdout)["questions"]
    assert (question["run_id"], question["step_id"], question["to"]) == (asked, "q", "#ops")

    viewer = remote(server, "vic-token", "answer", asked[:8], "q", "eu-west")
    assert "Token 'vic' may not do this: it needs the approver role" in refused(viewer)
    missing = refused(remote(server, "bob-token", "answer", asked[:8], "nope", "eu-west"))
    assert missing == f"switchboard: Run {asked[:8]} has no question 'nope'."
    answered = remote(server, "bob-token", "answer", asked[:8], "q", "eu-west")
    assert answered.returncode == 0, answered.stderr
    assert f"run {asked}" in answered.stdout and "COMPLETED" in answered.stdout
    document = remote(server, "vic-token", "--json", "run", "status", asked).stdout
    assert json.loads(document)["steps"]["q"]["result"] == {"answer": "eu-west", "answered_by": "api:bob"}
    second = refused(remote(server, "alice-token", "answer", asked[:8], "q", "us-east"))
    assert "already answered by api:bob" in second
    assert json.loads(remote(server, "vic-token", "tasks", "--json").stdout)["questions"] == []
