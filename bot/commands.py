"""``/run``: acknowledged at once, then parsed, executed on the engine, answered ephemerally.

Slack gives a slash command 3 seconds. The listener acks before anything that can
take time (Redis, the engine's transaction) and leaves the work to run after the ack;
the answer goes to the command's response_url when the work is done.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp

from bot import cards, grammar
from bot.blocks import escape, truncate, when, who
from bot.groups import operator_actor
from bot.runtime import Bot, slack_actor
from engine.errors import NotFound, SwitchboardError
from engine.intake import AcceptedRun
from engine.model import Actor, Run, RunStatus, StopMode
from engine.queries import OpenQuestion, PendingTask
from engine.sign_in import SLACK_ROLES, get_sign_in_settings, mint, sign_in_url
from engine.views import RunView, describe

log = logging.getLogger(__name__)

LIST_ROWS = 20
REPLY_TEXT = 3900  # a response_url message is plain mrkdwn text; keep it readable


def register(app: AsyncApp, bot: Bot) -> None:
    @app.command(bot.settings.command)
    async def run_command(ack: AsyncAck, command: dict[str, Any]) -> None:
        await ack()
        bot.after_ack(reply_to(bot, command))


async def reply_to(bot: Bot, command: dict[str, Any]) -> None:
    actor = slack_actor(None, command.get("user_id"), command.get("user_name"))
    reply = await answer(bot, command.get("text", ""), actor, command.get("channel_id"))
    await bot.respond(command["response_url"], truncate(reply, REPLY_TEXT))


async def answer(bot: Bot, text: str, actor: Actor, channel_id: str | None = None) -> str:
    """The reply to one ``/run`` text: a result, an engine error's sentence, or a usage message."""
    slash = bot.settings.command
    try:
        command = grammar.parse(text, slash)
        return await execute(bot, command, actor, channel_id)
    except grammar.UsageError as exc:
        return str(exc)
    except SwitchboardError as exc:
        return escape(str(exc))  # a sentence that may quote inputs and names: no markup
    except Exception:
        log.exception("/run failed", extra={"text": text, "user": actor.ref})
        return "Something went wrong on our side running that command; it has been logged. Try again."


# Commands the workflow's operators may give: their Slack groups are looked up first.
OPERATOR_VERBS = frozenset({"pause", "resume", "stop", "recover"})


async def execute(bot: Bot, command: grammar.Command, actor: Actor, channel_id: str | None) -> str:
    engine = bot.engine
    target = command.target or ""
    if command.verb in OPERATOR_VERBS:
        actor = await operator_actor(bot, actor, target)
    match command.verb:
        case "start":
            run = await _start(bot, target, command.inputs, actor, channel_id)
            follow = f"`{bot.settings.command} status {run.short_id}`"
            return f"Started {_name(run)}: it is *{run.status.value}*. Follow it with {follow}."
        case "pause":
            return f"Paused {_name(await bot.call(engine.pause, target, actor))}."
        case "resume":
            return f"Resumed {_name(await bot.call(engine.resume, target, actor))}."
        case "stop":
            mode: StopMode = "graceful" if command.graceful else "immediate"
            run = await bot.call(engine.stop, target, actor, mode)
            if run.status is RunStatus.DRAINING:
                return f"Stopping {_name(run)} gracefully: in-flight steps finish, nothing new starts."
            return f"Stopped {_name(run)}."
        case "status":
            found = await bot.call(engine.run_or_accepted, target)
            return escape(found.sentence) if isinstance(found, AcceptedRun) else status_text(found)
        case "list":
            status = RunStatus(command.target) if command.target else None
            page = await bot.call(engine.list_runs, status=status, limit=LIST_ROWS)
            return list_text(page.runs, status, more=page.next_offset is not None)
        case "tasks":
            pending = await bot.call(engine.pending_tasks, limit=LIST_ROWS)
            questions = await bot.call(engine.open_questions, limit=LIST_ROWS)
            return waiting_text(pending, questions)
        case "recover":
            corrected = dict(command.inputs) or None
            run = await bot.call(engine.recover, target, actor, command.from_step, corrected, command.force)
            follow = f"`{bot.settings.command} status {run.short_id}`"
            return f"Recovered {_name(run)}: it is *{run.status.value}* again. Follow it with {follow}."
        case "replay":
            replay = await bot.call(engine.replay, target, actor)
            return f"Replaying run `{target}` as {_name(replay)}: it is *{replay.status.value}*."
        case "console":
            return await console_link(bot, actor)
    return grammar.usage(bot.settings.command)


async def _start(
    bot: Bot, workflow_id: str, inputs: dict[str, str], actor: Actor, channel_id: str | None
) -> Run:
    engine = bot.engine
    trigger = {"kind": "slack", "channel": channel_id} if channel_id else {"kind": "slack"}
    try:
        return await bot.call(engine.start, workflow_id, inputs, actor, trigger=trigger)
    except NotFound as exc:
        close = grammar.nearest(workflow_id, [w.id for w in engine.workflows()])
        if close is None or workflow_id in engine.catalog.workflows:
            raise
        raise NotFound(f"{exc} Did you mean `{bot.settings.command} start {close}`?") from None


async def console_link(bot: Bot, actor: Actor) -> str:
    """A one-time link that opens the web console as this Slack user, with what Slack lets them do."""
    settings = get_sign_in_settings()
    token = await bot.call(mint, bot.engine.redis, bot.engine.keys.prefix, actor, SLACK_ROLES)
    link, base = sign_in_url(token), settings.public_url
    minutes = max(1, settings.link_ttl // 60)
    if not base:
        where = "on the Switchboard server (set SWITCHBOARD_PUBLIC_URL for a full link)"
        return f"Open `{link}` {where} within {minutes} min; the link works once."
    opens = f"<{link}|Open the Switchboard console> as {who(actor)}"
    return f"{opens}: the link works once, within {minutes} min."


def _name(run: Run | RunView) -> str:
    return f"*{escape(run.workflow_name)}* run `{run.short_id}` (`{run.run_id}`)"


def status_text(run: Run) -> str:
    """``/run status``: the run's view as one message, a line per step."""
    view = describe(run)
    lines = [
        f"{_name(view)} is *{view.status_text}*",
        f"Started by {who(view.started_by)} {when(view.created_at)}",
    ]
    if view.failure:
        lines.append(cards.failure_text(view.failure))
    if view.replay_of:
        lines.append(f"Replay of `{view.replay_of[:8]}`")
    lines += [cards.step_line(step).replace("\n", " · ") for step in view.steps]
    return "\n".join(lines)


def waiting_text(pending: list[PendingTask], questions: list[OpenQuestion]) -> str:
    """``/run tasks`` (or ``pending``): what waits on people, tasks to decide and questions to answer."""
    if not pending:
        lines = ["No task is waiting for a decision."]
    else:
        lines = [f"*{len(pending)} pending* (decide on the cards or in App Home)"]
        lines += [
            f"• *{escape(p.task.title)}* · {p.task.task_type} · step `{p.task.task_id}`"
            f" · {escape(p.run.workflow_name)} run `{p.run.short_id}`"
            for p in pending
        ]
    if not questions:
        return "\n".join([*lines, "No question is waiting for an answer."])
    waiting = "question is" if len(questions) == 1 else "questions are"
    lines.append(f"*{len(questions)} {waiting} waiting for an answer* (answer on the message or in App Home)")
    lines += [
        f"• ❓ *{escape(truncate(q.question.text, 300))}* · step `{q.step_id}`"
        f" · {escape(q.run.workflow_name)} run `{q.run.short_id}` · asked {cards.ref_text(q.question.to)}"
        for q in questions
    ]
    return "\n".join(lines)


def list_text(runs: list[Run], status: RunStatus | None, more: bool) -> str:
    what = f"{status.value} runs" if status else "runs"
    if not runs:
        return f"No {what}."
    lines = [
        f"• `{r.short_id}` *{escape(r.workflow_name)}* · {describe(r).status_text}"
        f" · {who(r.started_by)} {when(r.created_at)}"
        for r in runs
    ]
    tail = "\n… more; narrow it with `list <status>`" if more else ""
    return f"*Latest {what}*\n" + "\n".join(lines) + tail
