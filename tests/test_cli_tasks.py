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
