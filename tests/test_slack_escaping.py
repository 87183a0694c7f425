"""Text from people and payloads never forms a mention or a link in anything the bot posts to Slack.

A run started with inputs such as ``<!channel>`` and ``<https://evil.example|click>``
goes through cards, App Home, modals, replies and ``notify`` steps; every payload the
fake Slack receives (notification text, blocks, views) must show those texts escaped.
"""

from __future__ import annotations

import json

from bot import ids
from bot.blocks import escape, plain, truncate
from engine.model import Actor, ActorKind, RunStatus
from tests.fake_slack import ALICE, BOB, CAROL, Slack, all_text

PING = "<!channel>"
LINK = "<https://evil.example|click>"
HOSTILE = f"{PING} {LINK} & co"
POSTED = ("chat.postMessage", "chat.update", "chat.postEphemeral", "views.publish", "views.open")


def everything_posted(slack: Slack) -> list[str]:
    """Every text of every call the bot made to Slack, and of every reply to a response_url."""
    texts = [all_text(call.args) for call in slack.fake.calls if call.method in POSTED]
    texts += [json.dumps(call.args.get("view", {})) for call in slack.fake.calls if call.method in POSTED]
    texts += [str(reply.get("text", "")) for reply in slack.fake.responses]
    return texts


def assert_escaped(slack: Slack) -> None:
    texts = everything_posted(slack)
    for text in texts:
        assert "<!channel" not in text and "<https://evil" not in text, text
    assert any(escape(PING) in text for text in texts)  # shown, as typed


async def test_inputs_reach_cards_home_modals_and_notify_steps_escaped(slack: Slack) -> None:
    reply = await slack.command(f'start approve-deploy "service={HOSTILE}"', user=ALICE)
    assert "Started" in reply["text"], reply["text"]
    run_id = slack.engine.list_runs().runs[0].run_id
    value = ids.task_value(run_id, "approve")
    card = await slack.fake.wait_for(lambda: slack.fake.message_with(ids.TASK_APPROVE, value))
    assert slack.fake.messages[card]["text"] == f"Approval needed: Deploy {escape(HOSTILE)}?"

    await slack.event({"type": "app_home_opened", "user": CAROL.id, "channel": "D0CAROL", "tab": "home"})
    await slack.fake.wait_for(lambda: slack.fake.ok_calls("views.publish"))
    await slack.click(ids.TASK_REJECT, value, user=BOB, message=card)  # opens the modal; not submitted
    await slack.fake.wait_for(lambda: slack.fake.ok_calls("views.open"))
    status = await slack.command(f"status {PING}", user=BOB)  # an error sentence quoting the input
    assert escape(PING) in status["text"]

    await slack.click(ids.TASK_APPROVE, value, user=BOB, message=card)
    await slack.fake.wait_for(lambda: slack.fake.updates_of(card))
    notice = f"Deployed {escape(HOSTILE)}."
    await slack.fake.wait_for(
        lambda: [c for c in slack.fake.ok_calls("chat.postMessage") if c.args.get("text") == notice]
    )
    run = await slack.fake.wait_for(lambda: (r := slack.engine.get_run(run_id)).status.terminal and r)
    assert run.status is RunStatus.COMPLETED
    assert run.steps["announce"].result["text"] == f"Deployed {HOSTILE}."  # the run keeps the text as is
    assert_escaped(slack)


async def test_a_notify_step_and_a_starter_name_are_escaped(slack: Slack) -> None:
    starter = Actor(kind=ActorKind.CLI, id=PING, name=LINK)  # `switchboard --as` takes any name
    slack.engine.start("payload-sync", {"payload": HOSTILE}, starter)
    posted = await slack.fake.wait_for(
        lambda: [c for c in slack.fake.ok_calls("chat.postMessage") if "synced" in c.args.get("text", "")]
    )
    assert posted[0].args["text"] == f"synced payload={escape(HOSTILE)}"
    await slack.fake.wait_for(lambda: any(escape(LINK) in text for text in everything_posted(slack)))
    assert_escaped(slack)


def test_plain_text_is_escaped_and_never_cut_inside_an_entity() -> None:
    assert plain(PING, 150)["text"] == "&lt;!channel&gt;"
    for limit in range(2, 12):
        cut = truncate(escape("<<<<<<"), limit)
        body = cut.removesuffix("…")
        assert len(cut) <= limit and body == "&lt;" * (len(body) // 4), cut
