"""One identity, however it is typed: the self-approval rule and role lists compare canonical forms.

``--as Alice`` and ``--as alice`` are one person, as are API tokens named ``LEAD`` and
``lead``, and ``slack:u0bob`` in a workflow names the Slack user ``U0BOB``. Through
REST, the CLI (a real process) and a signed Slack click.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient
from pydantic import SecretStr, ValidationError

from bot import ids
from engine.api import Engine
from engine.catalog import load_folder
from engine.model import Actor, ActorKind, RunStatus, identity
from tests import test_cli
from tests.engine_helpers import Clock, approval, engine_for
from tests.fake_slack import ALICE, BOB, WORKFLOWS, Slack, write_workflows
from tests.test_cli import run_id_of, switchboard
from tests.web_helpers import TOKEN_SETTING, TOKENS, bearer, problem
from webhooks.server import create_app
from webhooks.settings import WebSettings

# Role lists written by hand, in whatever case their authors typed.
GATE: dict[str, Any] = {
    "id": "gate",
    "name": "Gate",
    "settings": {"operators": ["API:OPS-BOT", "api:Lead"], "approvers": ["api:LEAD", "slack:u0bob"]},
    "steps": [approval("ok")],
}
LEAD_UPPER = "tok-LEAD-upper-case"

# The CLI tests' workflow folder and environment, for the CLI processes below.
workflows = test_cli.workflows
env = test_cli.env


def test_identity_is_one_canonical_form() -> None:
    assert identity(" Slack:U0Bob ") == identity("slack:u0bob") == "slack:u0bob"
    assert identity("*") == "*" and identity("API:*") == "api:*"
    alice = Actor(kind=ActorKind.CLI, id="Alice", name="Alice")
    assert alice.same_as(Actor(kind=ActorKind.CLI, id="alice"))
    assert not alice.same_as(Actor(kind=ActorKind.API, id="alice"))  # another medium, another identity
    assert alice.matches(["cli:ALICE"]) and alice.matches(["CLI:*"]) and not alice.matches(["cli:bob"])
    assert alice.ref == "cli:Alice" and alice.display == "Alice"  # shown as typed


def test_an_actor_cannot_change_under_its_record() -> None:
    # Its record is made once (a webhook source's actor goes into every start it accepts).
    hook = Actor(kind=ActorKind.WEBHOOK, id="github", groups=["S1"])
    assert hook.record == {"kind": "webhook", "id": "github", "name": None}  # groups are never stored
    with pytest.raises(ValidationError):
        hook.name = "GitHub"  # type: ignore[misc]
    named = hook.model_copy(update={"groups": ["S2"]})  # how the Slack edge adds groups
    assert named.groups == ["S2"] and named.record == hook.record
    renamed = hook.model_copy(update={"name": "GitHub"})  # a copy that changes what is stored
    assert renamed.record == {"kind": "webhook", "id": "github", "name": "GitHub"}


# -- REST ------------------------------------------------------------------------------------


@pytest.fixture
async def gate_client(
    aiohttp_client: Any, redis_conn: redis.Redis, namespace: str, settings: WebSettings
) -> tuple[TestClient, Engine]:
    engine = engine_for(redis_conn, namespace, GATE, clock=Clock())
    tokens = SecretStr(f"{TOKEN_SETTING},LEAD:operator:{LEAD_UPPER}")
    client = await aiohttp_client(create_app(engine, settings.model_copy(update={"api_tokens": tokens})))
    return client, engine


async def test_rest_role_lists_and_self_approval_ignore_case(gate_client: tuple[TestClient, Engine]) -> None:
    client, engine = gate_client
    started = await client.post("/v1/workflows/gate/runs", json={}, headers=bearer("operator"))
    assert started.status == 201, await started.text()
    run_id = (await started.json())["run_id"]
    # `api:OPS-BOT` among the operators is the token named ops-bot.
    paused = await client.post(
        "/v1/workflows/gate/command", json={"command": "pause", "run_id": run_id}, headers=bearer("operator")
    )
    assert paused.status == 200, await paused.text()
    # `api:LEAD` among the approvers is the token named lead.
    done = await client.post(f"/v1/runs/{run_id}/tasks/ok/complete", json={"approved": True}, headers=bearer("approver"))
    assert done.status == 200, await done.text()
    assert engine.get_run(run_id).steps["ok"].task.decided_by.id == "lead"  # type: ignore[union-attr]

    # A run started by the token named LEAD cannot be approved by the token named lead.
    own = await client.post("/v1/workflows/gate/runs", json={}, headers={"Authorization": f"Bearer {LEAD_UPPER}"})
    assert own.status == 201, await own.text()
    own_id = (await own.json())["run_id"]
    refused = await client.post(
        f"/v1/runs/{own_id}/tasks/ok/complete", json={"approved": True}, headers=bearer("approver")
    )
    detail = (await problem(refused, 403))["detail"]
    assert f"started run {own_id[:8]} and so may not decide its tasks" in detail
    assert engine.get_run(own_id).steps["ok"].task.decided_at is None  # type: ignore[union-attr]
    assert TOKENS["approver"] not in detail


# -- CLI -------------------------------------------------------------------------------------


def test_cli_user_cannot_approve_own_run_by_changing_case(env: dict[str, str]) -> None:
    started = switchboard("--as", "Alice", "run", "start", "release-gate", "version=1.0", env=env)
    assert started.returncode == 0, started.stderr
    run_id = run_id_of(started.stdout)

    own = switchboard("--as", "alice", "approve", run_id[:8], "sign-off", env=env)
    assert own.returncode == 2, own.stdout
    assert f"alice started run {run_id[:8]} and so may not decide its tasks" in own.stderr
    assert "Traceback" not in own.stderr

    other = switchboard("--as", "bob", "approve", run_id[:8], "sign-off", env=env)
    assert other.returncode == 0, other.stderr
    assert "COMPLETED" in other.stdout


# -- Slack -----------------------------------------------------------------------------------


@pytest.fixture
def slack_engine(redis_conn: redis.Redis, namespace: str, tmp_path: Path) -> Engine:
    """The Slack tests' workflows plus ``gate``, whose approvers name Slack users in lower case."""
    catalog = load_folder(write_workflows(tmp_path / "workflows", {**WORKFLOWS, "gate": GATE}))
    assert not catalog.errors, catalog.errors
    return Engine(redis_conn, catalog, key_prefix=f"{namespace}:", queue_name=namespace)


async def test_slack_click_matches_an_approver_written_in_lower_case(slack: Slack) -> None:
    reply = await slack.command("start gate", user=ALICE)
    assert "Started" in reply["text"], reply["text"]
    run_id = slack.engine.list_runs().runs[0].run_id
    value = ids.task_value(run_id, "ok")
    # No slack_channel on the workflow: the card goes nowhere, so click in App Home.
    await slack.click(ids.TASK_APPROVE, value, user=BOB)
    run = await slack.fake.wait_for(lambda: (r := slack.engine.get_run(run_id)).status.terminal and r)
    assert run.status is RunStatus.COMPLETED
    assert run.steps["ok"].task.decided_by.ref == f"slack:{BOB.id}"
