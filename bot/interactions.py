"""Buttons, modals and App Home: every click is acked first, then decided by the engine.

Who may approve is checked by the engine (never here), so a refused click gets the
engine's own sentence. Answers go where the click came from: ephemerally in the
channel of a card, or as a notice at the top of App Home.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_bolt.response import BoltResponse

from bot import cards, ids
from bot.blocks import escape
from bot.feed import publish_home
from bot.groups import operator_actor, task_actor
from bot.runtime import Bot, slack_actor
from engine.api import Engine
from engine.errors import SwitchboardError
from engine.fields import from_text
from engine.model import Actor, Run, RunStatus
from engine.redis_idioms import text
from engine.views import already_decided, no_such_task

log = logging.getLogger(__name__)

Body = dict[str, Any]

# Slack retries an Events API delivery it thinks was missed three times, the last about
# five minutes after the first; an hour covers them all.
EVENT_SEEN_TTL_SECONDS = 3600


@dataclass(frozen=True)
class Click:
    """What a click on a button does once acked; ``urgent`` work does not queue (it opens a
    modal, and the click's trigger_id expires 3 s after it)."""

    work: Callable[[Bot, Body], Coroutine[Any, Any, None]]
    urgent: bool = False


def clicks(engine: Engine) -> dict[str, Click]:
    """Every button's action id and what a click on it does."""

    def run_button(do: Callable[[str, Actor], Run], said: Callable[[Run], str]) -> Click:
        return Click(partial(operate, do=do, said=said))

    return {
        ids.TASK_APPROVE: Click(approve_task),
        ids.TASK_REJECT: Click(partial(open_task_modal, build=cards.reject_modal), urgent=True),
        ids.TASK_EDIT: Click(partial(open_task_modal, build=cards.edit_modal), urgent=True),
        ids.TASK_CHANGES: Click(partial(open_task_modal, build=cards.changes_modal), urgent=True),
        ids.QUESTION_ANSWER: Click(open_answer_modal, urgent=True),
        ids.RUN_DETAILS: Click(open_details, urgent=True),
        ids.RUN_PAUSE: run_button(engine.pause, lambda r: f"Paused run `{r.short_id}`."),
        ids.RUN_RESUME: run_button(engine.resume, lambda r: f"Resumed run `{r.short_id}`."),
        ids.RUN_STOP_GRACEFUL: run_button(partial(engine.stop, mode="graceful"), _said_of_graceful_stop),
        ids.RUN_STOP_NOW: run_button(
            partial(engine.stop, mode="immediate"), lambda r: f"Stopped run `{r.short_id}`."
        ),
        ids.RUN_REPLAY: run_button(
            engine.replay, lambda r: f"Replaying as run `{r.short_id}` (`{r.run_id}`)."
        ),
        ids.RUN_RECOVER: run_button(
            engine.recover,  # the failed step and what it blocked run again; a refusal says why not
            lambda r: f"Recovered run `{r.short_id}`: it is {r.status.value} again, from its failed step.",
        ),
    }


def _said_of_graceful_stop(run: Run) -> str:
    state = "stopping gracefully" if run.status is RunStatus.DRAINING else run.status.value
    return f"Run `{run.short_id}` is {state}."


def register(app: AsyncApp, bot: Bot) -> None:
    """The listeners of buttons, modals and events.

    The buttons share one listener and a table (:func:`clicks`): bolt tries its listeners
    one after another, each try building every argument a listener could ask for, so a
    listener per button made a click on the last of twelve pay for eleven tries.
    """
    engine = bot.engine
    by_action = clicks(engine)
    any_button = "|".join(re.escape(action_id) for action_id in by_action)

    @app.action(re.compile(f"^(?:{any_button})\\Z"))
    async def clicked(ack: AsyncAck, body: Body, action: Body) -> None:
        await ack()
        click = by_action[action["action_id"]]
        bot.after_ack(click.work(bot, body), urgent=click.urgent)

    @app.view(ids.REJECT_MODAL)
    async def rejected(ack: AsyncAck, body: Body, view: Body) -> None:
        await ack()
        bot.after_ack(reject_task(bot, body, view))

    @app.view(ids.CHANGES_MODAL)
    async def changes_requested(ack: AsyncAck, body: Body, view: Body) -> None:
        await ack()
        bot.after_ack(request_changes(bot, body, view))

    @app.view(ids.EDIT_MODAL)
    async def edited(ack: AsyncAck, body: Body, view: Body) -> None:
        # Read the edits before acking, so a value of the wrong type is shown on its input
        # in the modal (response_action "errors") instead of changing the field's type.
        origin = cards.origin_of(view)
        try:
            run = await bot.call(engine.get_run, origin["run"])
            task = run.steps[origin["task"]].task
            edits = edits_from(view, task.fields, task.editable) if task else {}
        except InvalidEdits as exc:
            await ack(response_action="errors", errors=exc.errors)
            return
        except (SwitchboardError, KeyError):
            edits = {}  # the run or task is gone: completing it below says so to the user
        await ack()
        bot.after_ack(approve_edits(bot, body, origin, edits))

    @app.view(ids.ANSWER_MODAL)
    async def answered(ack: AsyncAck, body: Body, view: Body) -> None:
        await ack()
        origin = cards.origin_of(view)
        given = _input(view, ids.REASON_BLOCK, ids.REASON_INPUT)
        actor = slack_actor(body.get("user"))

        async def do() -> Run:
            return await bot.call(engine.answer, origin["run"], origin["task"], actor, given)

        bot.after_ack(attempt(bot, body, do, origin.get("channel")))

    once = [once_per_event(bot)]

    @app.event("message", middleware=once)
    async def message(event: Body) -> None:
        bot.after_ack(thread_reply(bot, event))

    @app.event("app_home_opened", middleware=once)
    async def home_opened(event: Body) -> None:
        if event.get("tab", "home") == "home":
            bot.after_ack(home_opened_by(bot, event["user"]))


def once_per_event(bot: Bot) -> Callable[..., Awaitable[BoltResponse | None]]:
    """A listener middleware: each Events API event acts once, however often Slack delivers it.

    Slack retries an event it thinks was missed (``X-Slack-Retry-Num``: no 200 within
    three seconds, or an error) with the same ``event_id``. The first delivery marks the
    id in Redis; a retry finds the mark and gets its 200 without acting, so Slack stops
    retrying. A delivery that fails lets the mark go (``bot.app``'s error handler), so the
    retry does what it could not. On the event listeners only: every other request
    would pay for bolt building its arguments to learn it is not an event.
    """

    async def skip_seen(body: Body, next_: Callable[[], Awaitable[None]]) -> BoltResponse | None:
        event_id = event_id_of(body)
        if event_id and not await bot.redis.set(
            bot.keys.event_seen(event_id), 1, nx=True, ex=EVENT_SEEN_TTL_SECONDS
        ):
            log.info("slack event seen before", extra={"event_id": event_id})
            return BoltResponse(status=200, body="")
        await next_()
        return None

    return skip_seen


def event_id_of(body: Body) -> str | None:
    if body.get("type") != "event_callback":
        return None
    return str(body.get("event_id") or "") or None


async def operate(bot: Bot, body: Body, do: Callable[[str, Actor], Run], said: Callable[[Run], str]) -> None:
    """A run button (pause, resume, stop, replay, recover) clicked: done as the clicking user,
    with the groups the workflow's operators name that the user is in."""
    run_id = _value(body)
    actor = await operator_actor(bot, slack_actor(body.get("user")), run_id)
    await attempt(bot, body, lambda: bot.call(do, run_id, actor), said=said)


async def approve_task(bot: Bot, body: Body) -> None:
    run_id, task_id = ids.parse_task_value(_value(body))
    actor = await task_actor(bot, slack_actor(body.get("user")), run_id, task_id)
    await attempt(bot, body, lambda: bot.call(bot.engine.complete_task, run_id, task_id, actor, True))


async def reject_task(bot: Bot, body: Body, view: Body) -> None:
    origin = cards.origin_of(view)
    reason = _input(view, ids.REASON_BLOCK, ids.REASON_INPUT) or None
    reject = partial(bot.engine.complete_task, approved=False, comment=reason)
    await decide_from_modal(bot, body, origin, reject)


async def request_changes(bot: Bot, body: Body, view: Body) -> None:
    origin = cards.origin_of(view)
    comment = _input(view, ids.REASON_BLOCK, ids.REASON_INPUT)
    await decide_from_modal(bot, body, origin, partial(bot.engine.request_changes, comment=comment))


async def approve_edits(bot: Bot, body: Body, origin: dict[str, Any], edits: dict[str, Any]) -> None:
    """The edit modal's submission: approve, with the edited fields as the task's result."""
    await decide_from_modal(bot, body, origin, partial(bot.engine.complete_task, approved=True, result=edits))


async def decide_from_modal(
    bot: Bot, body: Body, origin: dict[str, Any], decide: Callable[[str, str, Actor], Run]
) -> None:
    """A task modal's submission: ``decide(run id, task id, actor)`` on the engine as the user
    who submitted it (with the groups the task's approvers name that the user is in); a
    refusal goes back to them in the channel the modal was opened from."""
    run_id, task_id = origin["run"], origin["task"]
    actor = await task_actor(bot, slack_actor(body.get("user")), run_id, task_id)
    await attempt(bot, body, lambda: bot.call(decide, run_id, task_id, actor), origin.get("channel"))


async def thread_reply(bot: Bot, event: Body) -> None:
    """A person's reply in the thread of a posted question answers it (other messages are not ours)."""
    thread, channel, user = event.get("thread_ts"), event.get("channel"), event.get("user")
    if not thread or thread == event.get("ts") or event.get("subtype") or event.get("bot_id") or not user:
        return
    asked = await bot.redis.hget(bot.keys.threads, f"{channel}:{thread}")
    if asked is None:
        return
    run_id, _, step_id = text(asked).partition(":")
    actor = slack_actor(None, user_id=user)
    body: Body = {"user": {"id": user}}
    answer = str(event.get("text") or "")
    await attempt(bot, body, lambda: bot.call(bot.engine.answer, run_id, step_id, actor, answer), channel)


async def open_answer_modal(bot: Bot, body: Body) -> None:
    run_id, step_id = ids.parse_task_value(_value(body))
    try:
        run = await bot.call(bot.engine.get_run, run_id)
    except SwitchboardError as exc:
        await tell(bot, body, str(exc))
        return
    step = run.steps.get(step_id)
    if step is None or step.question is None:
        await tell(bot, body, f"Run {run.short_id} has no question {step_id!r}.")
        return
    channel = (body.get("channel") or {}).get("id")
    metadata = cards.origin_metadata(run_id, step_id, channel)
    await bot.client.views_open(trigger_id=body["trigger_id"], view=cards.answer_modal(run, step, metadata))


async def open_details(bot: Bot, body: Body) -> None:
    try:
        run = await bot.call(bot.engine.get_run, _value(body))
    except SwitchboardError as exc:
        await tell(bot, body, str(exc))
        return
    await bot.client.views_open(trigger_id=body["trigger_id"], view=cards.details_modal(run))


async def home_opened_by(bot: Bot, user: str) -> None:
    await bot.redis.zadd(bot.keys.home_viewers, {user: time.time()})
    await publish_home(bot, user)


async def attempt(
    bot: Bot,
    body: Body,
    do: Callable[[], Awaitable[Any]],
    channel: str | None = None,
    said: Callable[[Run], str] | None = None,
) -> None:
    """Run an engine command for a click; its refusal (or, if asked, its success) goes back to the user."""
    try:
        result = await do()
    except SwitchboardError as exc:
        await tell(bot, body, str(exc), channel)
        return
    except Exception:
        log.exception("slack interaction failed", extra={"user": body.get("user", {}).get("id")})
        await tell(bot, body, "Something went wrong on our side; it has been logged.", channel)
        return
    if said is not None and _from_message(body) and isinstance(result, Run):
        await tell(bot, body, said(result), channel)


async def open_task_modal(
    bot: Bot,
    body: Body,
    build: Callable[[Run, Any, str], dict[str, Any]],
) -> None:
    """Open the reject or edit modal, unless the task is already decided: then say by whom."""
    run_id, task_id = ids.parse_task_value(_value(body))
    try:
        run = await bot.call(bot.engine.get_run, run_id)
    except SwitchboardError as exc:
        await tell(bot, body, str(exc))
        return
    step = run.steps.get(task_id)
    task = step.task if step else None
    if task is None:
        await tell(bot, body, str(no_such_task(run, task_id)))
        return
    if (decided := already_decided(task)) is not None:
        await tell(bot, body, str(decided))
        return
    channel = (body.get("channel") or {}).get("id")
    metadata = cards.origin_metadata(run_id, task_id, channel)
    await bot.client.views_open(trigger_id=body["trigger_id"], view=build(run, task, metadata))


async def tell(bot: Bot, body: Body, text: str, channel: str | None = None) -> None:
    """An ephemeral answer to the clicking user, wherever they clicked.

    ``text`` is a sentence (the engine's, naming runs, tasks and people as typed), so it is
    escaped: it can carry no mention or link.
    """
    user = (body.get("user") or {}).get("id", "")
    text = escape(text)
    if body.get("response_url"):
        await bot.respond(body["response_url"], text)
    elif channel:
        await bot.client.chat_postEphemeral(channel=channel, user=user, text=text)
    elif user:
        await publish_home(bot, user, notice=f":warning: {text}")


def _from_message(body: Body) -> bool:
    return (body.get("container") or {}).get("type") == "message"


def _value(body: Body) -> str:
    return str(body["actions"][0].get("value", ""))


def _input(view: Body, block_id: str, action_id: str) -> str:
    state = view.get("state", {}).get("values", {})
    return str((state.get(block_id, {}).get(action_id) or {}).get("value") or "")


class InvalidEdits(ValueError):
    """Edited values that do not fit their fields; ``errors`` maps each input's block to why."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.errors = errors


def edits_from(view: Body, fields: dict[str, Any], editable: list[str]) -> dict[str, Any]:
    """The edit modal's values by field; a field the modal did not show keeps its value.

    An edited value keeps the type of the field it edits (a number stays a number, as the
    engine requires: :mod:`engine.fields`); text that is not of that type raises
    :class:`InvalidEdits`.
    """
    state = view.get("state", {}).get("values", {})
    edits: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name in editable:
        block_id = f"{ids.FIELD_BLOCK_PREFIX}{name}"
        block = state.get(block_id)
        if block is None:
            continue
        text = (block.get(ids.FIELD_INPUT) or {}).get("value") or ""
        try:
            edits[name] = from_text(fields.get(name), text)
        except ValueError as exc:
            errors[block_id] = str(exc)
    if errors:
        raise InvalidEdits(errors)
    return edits

