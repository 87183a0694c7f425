"""Block Kit builders that never exceed Slack's limits.

Slack rejects a whole message or view when one text is a character too long or it has
one block too many (``invalid_blocks``), and the outbox would then lose the card. So
every builder here truncates its text, and :func:`fit` trims a block list to the
block limit, ending it with an "N more" line instead.

Text from people and payloads (run inputs, task titles, names, error messages) goes
through :func:`escape`, the one place that applies Slack's escaping: ``&``, ``<`` and
``>`` become entities, so nobody can make the bot post ``<!channel>`` or a disguised
link ``<https://evil|click>``. :func:`plain` texts are escaped whole (they carry no
markup); mrkdwn, a message's notification text included, is built by the callers from
our own markup (mentions of actors, dates) and escaped pieces.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from engine.model import Actor, ActorKind

Block = dict[str, Any]

MESSAGE_BLOCKS = 50
VIEW_BLOCKS = 100
SECTION_TEXT = 3000
SECTION_FIELD = 2000
SECTION_FIELDS = 10
HEADER_TEXT = 150
CONTEXT_TEXT = 2000
CONTEXT_ELEMENTS = 10
BUTTON_TEXT = 75
BUTTON_VALUE = 2000
ACTION_ELEMENTS = 25
MODAL_TITLE = 24
MODAL_BUTTON = 24
INPUT_LABEL = 2000
INPUT_VALUE = 3000
PRIVATE_METADATA = 3000
FALLBACK_TEXT = 3000  # the notification text; Slack allows more, but nobody reads it
_CUT_ENTITY = re.compile(r"&(?:a(?:mp?)?|l|g|lt|gt)?$")  # what cutting "&amp;", "&lt;", "&gt;" can leave


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending in an ellipsis when cut (never inside an entity)."""
    if len(text) <= limit:
        return text
    return _CUT_ENTITY.sub("", text[: limit - 1]) + "…"


def escape(text: str) -> str:
    """Slack's escaping, for any text a person or a payload supplied: it shows as typed and
    can never form a mention (``<!channel>``, ``<@U123>``) or a link (``<https://x|y>``)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def plain(text: str, limit: int) -> dict[str, Any]:
    """A plain_text object: it carries no markup of ours, so all of it is escaped."""
    return {"type": "plain_text", "text": truncate(escape(text or " "), limit), "emoji": True}


def mrkdwn(text: str, limit: int = SECTION_TEXT) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": truncate(text or " ", limit)}


def header(text: str) -> Block:
    return {"type": "header", "text": plain(text, HEADER_TEXT)}


def section(text: str, fields: list[str] | None = None, accessory: Block | None = None) -> Block:
    block: Block = {"type": "section", "text": mrkdwn(text)}
    if fields:
        block["fields"] = [mrkdwn(f, SECTION_FIELD) for f in fields[:SECTION_FIELDS]]
    if accessory:
        block["accessory"] = accessory
    return block


def context(*texts: str) -> Block:
    return {"type": "context", "elements": [mrkdwn(t, CONTEXT_TEXT) for t in texts[:CONTEXT_ELEMENTS]]}


def divider() -> Block:
    return {"type": "divider"}


def button(text: str, action_id: str, value: str, style: str | None = None) -> Block:
    element: Block = {
        "type": "button",
        "text": plain(text, BUTTON_TEXT),
        "action_id": action_id,
        "value": truncate(value, BUTTON_VALUE),
    }
    if style:
        element["style"] = style
    return element


def actions(*buttons: Block, block_id: str | None = None) -> Block:
    block: Block = {"type": "actions", "elements": list(buttons[:ACTION_ELEMENTS])}
    if block_id:
        block["block_id"] = block_id
    return block


def fit(blocks: list[Block], limit: int, more: str = "more") -> list[Block]:
    """``blocks`` trimmed to ``limit``, the last one saying how many were left out."""
    if len(blocks) <= limit:
        return blocks
    kept = blocks[: limit - 1]
    return [*kept, context(f"… {len(blocks) - len(kept)} {more} blocks not shown")]


def who(actor: Actor | None) -> str:
    """An actor as Slack shows people: a mention for Slack users, the name otherwise."""
    if actor is None:
        return "nobody"
    if actor.kind is ActorKind.SLACK:
        return f"<@{actor.id}>"
    return escape(actor.display)


def when(moment: datetime | None) -> str:
    """A time each reader sees in their own time zone, with a UTC fallback."""
    if moment is None:
        return "never"
    fallback = moment.strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(moment.timestamp())}^{{date_short_pretty}} {{time}}|{fallback}>"


def value_text(value: Any, limit: int = 500) -> str:
    """A payload field value shown in a card: short, escaped, never a wall of JSON."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return truncate(escape(text), limit)
