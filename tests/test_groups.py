"""Approvers may be Slack user groups (``slack_group:S123``).

The bot resolves the clicking user's membership through ``usergroups.users.list`` (cached in
Redis with a TTL, asked again once it runs out) and passes it with the actor; the engine
checks ``slack_group:`` refs against it and never calls Slack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from bot import ids
from bot.groups import GROUP_CACHE_SECONDS
from engine.api import Engine
from engine.catalog import load_folder
from engine.model import Actor, ActorKind, RunStatus
from tests.engine_helpers import approval
from tests.fake_slack import ALICE, BOB, CAROL, Slack, write_workflows

ON_CALL: dict[str, Any] = {
    "id": "on-call",
    "name": "On-call approval",
    "settings": {"slack_channel": "#ops"},
    "steps": [approval("approve", approvers=["slack_group:S0ONCALL"])],
}


OPERATED: dict[str, Any] = {
    "id": "operated",
    "name": "Operated",
    "settings": {"slack_channel": "#ops", "operators": ["slack_group:S0OPS"]},
    "steps": [approval("approve")],
}


@pytest.fixture
def slack_engine(redis_conn: redis.Redis, namespace: str, tmp_path: Path) -> Engine:
    catalog = load_folder(write_workflows(tmp_path / "workflows", {"on-call": ON_CALL, "operated": OPERATED}))
    assert not catalog.errors, catalog.errors
    return Engine(redis_conn, catalog, key_prefix=f"{namespace}:", queue_name=namespace)


async def start(slack: Slack) -> tuple[str, str, tuple[str, str]]:
    before = {r.run_id for r in slack.engine.list_runs().runs}
    reply = await slack.command("start on-call", user=ALICE)
    assert "Started" in reply["text"], reply["text"]
    run_id = next(r.run_id for r in slack.engine.list_runs().runs if r.run_id not in before)
    value = ids.task_value(run_id, "approve")
    card = await slack.fake.wait_for(lambda: slack.fake.message_with(ids.TASK_APPROVE, value))
    return run_id, value, card


async def refusal(slack: Slack, response_url: str | None) -> str:
    return str((await slack.fake.wait_for(lambda: slack.responses_to(response_url)))[0]["text"])


async def test_group_members_may_decide_and_membership_is_cached_then_asked_again(
    slack: Slack, redis_conn: redis.Redis
) -> None:
    slack.fake.usergroups["S0ONCALL"] = [BOB.id]
    run_id, value, card = await start(slack)

    outsider = await slack.click(ids.TASK_APPROVE, value, user=CAROL, message=card)
    assert "carol may not decide task 'approve'; its approvers are slack_group:S0ONCALL" in await refusal(
        slack, outsider
    )
    await slack.click(ids.TASK_APPROVE, value, user=BOB, message=card)
    run = await slack.fake.wait_for(lambda: (r := slack.engine.get_run(run_id)).status.terminal and r)
    assert run.status is RunStatus.COMPLETED and run.steps["approve"].task.approved is True
    assert "groups" not in run.steps["approve"].task.decided_by.model_dump()
    assert len(slack.fake.ok_calls("usergroups.users.list")) == 1  # the second click read the cache
    key = slack.bot.keys.group_members("S0ONCALL")
    assert 0 < redis_conn.ttl(key) <= GROUP_CACHE_SECONDS

    slack.fake.usergroups["S0ONCALL"] = [BOB.id, CAROL.id]  # Carol joins the group in Slack
    run_id, value, card = await start(slack)
    cached = await slack.click(ids.TASK_APPROVE, value, user=CAROL, message=card)
    assert "may not decide" in await refusal(slack, cached)  # not yet: the cache still says no
    redis_conn.delete(key)  # what the TTL does after GROUP_CACHE_SECONDS
    await slack.click(ids.TASK_APPROVE, value, user=CAROL, message=card)
    run = await slack.fake.wait_for(lambda: (r := slack.engine.get_run(run_id)).status.terminal and r)
    assert run.steps["approve"].task.decided_by.id == CAROL.id
    assert len(slack.fake.ok_calls("usergroups.users.list")) == 2


async def test_a_group_slack_does_not_know_lets_nobody_in(slack: Slack) -> None:
    run_id, value, card = await start(slack)
    refused = await slack.click(ids.TASK_APPROVE, value, user=BOB, message=card)
    assert "may not decide" in await refusal(slack, refused)
    assert slack.engine.get_run(run_id).steps["approve"].task.decided_at is None  # type: ignore[union-attr]
    assert [c.error for c in slack.fake.calls if c.method == "usergroups.users.list"] == ["no_such_subteam"]


def test_group_refs_match_only_slack_users_the_edge_found_in_them() -> None:
    member = Actor(kind=ActorKind.SLACK, id="U1", groups=["s0oncall"])
    assert member.matches(["slack_group:S0ONCALL"])
    assert not member.matches(["slack_group:S0OTHER"])
    assert not Actor(kind=ActorKind.SLACK, id="U1").matches(["slack_group:S0ONCALL"])
    assert not Actor(kind=ActorKind.API, id="S0ONCALL", groups=["S0ONCALL"]).matches(["slack_group:S0ONCALL"])


async def test_operators_may_be_a_slack_group(slack: Slack) -> None:
    """``operators: [slack_group:S0OPS]``: members may pause, resume and stop its runs from Slack."""
    slack.fake.usergroups["S0OPS"] = [BOB.id]
    assert "Started" in (await slack.command("start operated", user=ALICE))["text"]
    run = slack.engine.list_runs().runs[0]

    refused = (await slack.command(f"pause {run.short_id}", user=CAROL))["text"]
    assert "carol may not pause runs of 'operated'; its operators are slack_group:S0OPS" in refused
    assert slack.engine.get_run(run.run_id).status is RunStatus.RUNNING

    assert "Paused" in (await slack.command(f"pause {run.short_id}", user=BOB))["text"]
    assert slack.engine.get_run(run.run_id).paused_by.id == BOB.id  # type: ignore[union-attr]
    assert "Resumed" in (await slack.command(f"resume {run.short_id}", user=BOB))["text"]
    assert "Stopped" in (await slack.command(f"stop {run.short_id}", user=BOB))["text"]
    assert slack.engine.get_run(run.run_id).status is RunStatus.STOPPED
    assert len(slack.fake.ok_calls("usergroups.users.list")) == 1  # then read from the cache
