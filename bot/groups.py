"""Slack user groups in approver and operator lists (``slack_group:S123``): who is in them, cached in Redis.

The engine never calls Slack. Before a click on a task is decided, or an operator's command
on a run (pause, resume, stop, recover) is executed, the edge looks up the groups the task's
approvers (or the workflow's operators) name and passes those the user is in with the actor
(``Actor.groups``), which the engine's ``Actor.matches`` checks. Members come from
``usergroups.users.list`` and are kept for ``GROUP_CACHE_SECONDS`` (a set per group with that
TTL), so a change made in Slack counts within that time. A group Slack will not answer for
counts as empty (logged): nobody is let in by a lookup that failed.
"""

from __future__ import annotations

import logging

from slack_sdk.errors import SlackApiError

from bot.runtime import Bot
from engine.errors import SwitchboardError
from engine.model import Actor, ActorKind, group_refs
from engine.redis_idioms import texts

log = logging.getLogger(__name__)

GROUP_CACHE_SECONDS = 300
_EMPTY = ""  # kept in every cached set, so an empty group is cached too


async def members(bot: Bot, group: str) -> set[str]:
    """The user ids of ``group``, from the cache or else from Slack (then cached)."""
    key = bot.keys.group_members(group)
    cached = set(texts(await bot.redis.smembers(key)))
    if cached:
        return cached - {_EMPTY}
    try:
        response = await bot.client.usergroups_users_list(usergroup=group)
    except SlackApiError as exc:
        error = exc.response.data.get("error") if isinstance(exc.response.data, dict) else str(exc)
        log.warning("slack user group not resolved", extra={"group": group, "error": error})
        return set()
    users = [str(user) for user in response.get("users") or []]
    async with bot.redis.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        pipe.sadd(key, _EMPTY, *users)
        pipe.expire(key, GROUP_CACHE_SECONDS)
        await pipe.execute()
    return set(users)


async def with_groups(bot: Bot, actor: Actor, refs: list[str]) -> Actor:
    """``actor`` with the groups among ``refs`` it belongs to (Slack users only)."""
    if actor.kind is not ActorKind.SLACK:
        return actor
    groups = [group for group in group_refs(refs) if actor.id in await members(bot, group)]
    return actor.model_copy(update={"groups": groups}) if groups else actor


async def operator_actor(bot: Bot, actor: Actor, run_ref: str) -> Actor:
    """The actor of an operator's command on a run, with the groups its workflow's operators
    name that it is in."""
    try:
        run = await bot.call(bot.engine.get_run, run_ref)
        operators = (await bot.call(bot.engine.workflow_of, run)).settings.operators
    except SwitchboardError:
        return actor  # the command says what is wrong
    return await with_groups(bot, actor, operators) if group_refs(operators) else actor


async def task_actor(bot: Bot, actor: Actor, run_id: str, task_id: str) -> Actor:
    """The actor deciding a task, with the groups its approvers name that it is in."""
    try:
        run = await bot.call(bot.engine.get_run, run_id)
    except SwitchboardError:
        return actor  # deciding says what is wrong
    step = run.steps.get(task_id)
    approvers = step.task.approvers if step and step.task else []
    return await with_groups(bot, actor, approvers) if group_refs(approvers) else actor
