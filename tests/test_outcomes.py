"""A rejected run says so beside ``completed`` in every medium (RunView.outcome and status_text,
one home), and the Command Center's failed-recently count says how many failed and how many
were stopped."""

from __future__ import annotations

import json

from aiohttp.test_utils import TestClient

from bot.home import home_view
from engine.api import Engine
from engine.model import Actor, ActorKind
from tests.fake_slack import ALICE, BOB, Slack
from tests.web_helpers import bearer

OPS = Actor(kind=ActorKind.API, id="ops-bot")
LEAD = Actor(kind=ActorKind.API, id="lead")


async def test_slack_says_a_rejected_run_was_rejected(slack: Slack) -> None:
    await slack.command("start approve-deploy service=api", user=ALICE)
    run = slack.engine.list_runs().runs[0]
    bob = Actor(kind=ActorKind.SLACK, id=BOB.id, name=BOB.name)
    slack.engine.complete_task(run.run_id, "approve", bob, False)
    status = await slack.command(f"status {run.run_id[:8]}")
    assert "is *completed (rejected)*" in status["text"]
    listed = await slack.command("list")
    assert f"`{run.short_id}` *Approve deploy* · completed (rejected)" in listed["text"]


async def test_command_center_counts_failed_and_stopped_apart(client: TestClient, web_engine: Engine) -> None:
    for service in ("a", "b"):
        run = web_engine.start("release", {"service": service}, OPS)
        web_engine.stop(run.run_id, OPS)
    rejected = web_engine.start("release", {"service": "c"}, OPS)
    web_engine.complete_task(rejected.run_id, "approve", LEAD, False)

    center = await (await client.get("/v1/command-center", headers=bearer("viewer"))).json()
    assert (
        center["counts"]["failed"],
        center["counts"]["failed_runs"],
        center["counts"]["stopped_runs"],
    ) == (2, 0, 2)
    home = json.dumps(home_view(web_engine.command_center()), ensure_ascii=False)
    assert "Failed recently · 0 failed, 2 stopped in 24 h" in home
    listed = await (await client.get("/v1/runs?status=completed", headers=bearer("viewer"))).json()
    assert [r["outcome"] for r in listed["runs"]] == ["rejected"]
