"""The CLI's other decisions on people's tasks: request changes, and answer an ask step's question.

Run as a real `switchboard` process against the test's Redis, like the other CLI tests.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests import test_cli
from tests.test_cli import run_id_of, switchboard

# The CLI tests' workflow folder and environment, for the CLI processes below.
workflows = test_cli.workflows
env = test_cli.env


def test_cli_requests_changes_and_answers_questions(env: dict[str, str], workflows: Path) -> None:
    (workflows / "review-once.yaml").write_text(
        "id: review-once\nname: Review once\nsteps:\n  - id: ok\n    type: human_task\n"
        "    task: {title: Ship it, on_changes_requested: end}\n"
    )
    (workflows / "quiz.yaml").write_text(
        "id: quiz\nname: Quiz\nsteps:\n  - id: q\n    type: ask\n"
        "    ask: {question: 'Which region?', to: '#ops'}\n"
    )
    reviewed = run_id_of(switchboard("--as", "alice", "run", "start", "review-once", env=env).stdout)
    missing = switchboard("--as", "bob", "request-changes", reviewed, "ok", env=env)
    assert missing.returncode == 2 and "--comment" in missing.stderr
    changed = switchboard(
        "--as", "bob", "--json", "request-changes", reviewed, "ok", "--comment", "smaller batch", env=env
    )
    assert changed.returncode == 0, changed.stderr
    run = json.loads(changed.stdout)
    assert run["status"] == "completed" and run["outcome"] == "rejected"  # `end`: the branch ends

    asked = run_id_of(switchboard("--as", "alice", "run", "start", "quiz", env=env).stdout)
    answered = switchboard("--as", "bob", "--json", "answer", asked, "q", "eu-west", env=env)
    assert answered.returncode == 0, answered.stderr
    result = json.loads(answered.stdout)["steps"]["q"]["result"]
    assert result["answer"] == "eu-west" and "bob" in json.dumps(result["answered_by"])
    again = switchboard("--as", "carol", "answer", asked, "q", "us-east", env=env)
    assert again.returncode != 0 and again.stderr.startswith("switchboard: ")


def test_cli_tasks_lists_open_questions_beside_pending_tasks(env: dict[str, str], workflows: Path) -> None:
    (workflows / "quiz.yaml").write_text(
        "id: quiz\nname: Quiz\nsteps:\n  - id: q\n    type: ask\n"
        "    ask: {question: 'Which region?', to: '#ops', answerers: ['cli:bob'], expires_in: 1h}\n"
    )
    assert switchboard("tasks", env=env).stdout == "no pending tasks or open questions\n"
    gate = run_id_of(
        switchboard("--as", "alice", "run", "start", "release-gate", "version=2", env=env).stdout
    )
    started = switchboard("--as", "alice", "run", "start", "quiz", env=env)
    asked = run_id_of(started.stdout)
    assert f'next: switchboard answer {asked[:8]} q "..."' in started.stdout

    text = switchboard("tasks", env=env).stdout
    assert f"{gate[:8]}  release-gate" in text and "Release 2?" in text  # the task first
    question = text[text.index(f"{asked[:8]}  quiz") :]
    assert question.splitlines()[0].split() == [asked[:8], "quiz", "q", "question"]
    assert "  Which region?\n" in question and "asked #ops · expires " in question
    assert "answerers: cli:bob" in question and f'next: switchboard answer {asked[:8]} q "..."' in question
    document = json.loads(switchboard("tasks", "--json", env=env).stdout)
    assert [t["run_id"] for t in document["tasks"]] == [gate]
    [listed] = document["questions"]
    assert (listed["run_id"], listed["step_id"], listed["text"]) == (asked, "q", "Which region?")
    one = json.loads(switchboard("tasks", asked[:8], "--json", env=env).stdout)
    assert one == {"tasks": [], "questions": [listed]}

    assert switchboard("--as", "bob", "answer", asked[:8], "q", "eu-west", env=env).returncode == 0
    after = json.loads(switchboard("tasks", "--json", env=env).stdout)
    assert after["questions"] == [] and len(after["tasks"]) == 1
