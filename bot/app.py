"""The bolt app: one AsyncApp with the /run command, card and home interactions registered."""

from __future__ import annotations

import logging

from slack_bolt.async_app import AsyncApp

from bot import commands, interactions
from bot.runtime import Bot

log = logging.getLogger(__name__)


def build_app(bot: Bot) -> AsyncApp:
    """A bolt app bound to ``bot``; the signing secret is only needed (and checked) over HTTP."""
    app = AsyncApp(
        client=bot.client,
        signing_secret=bot.settings.signing_secret,
        # Listeners ack and hand their work to Bot.after_ack, so bolt can answer as soon
        # as they return, without polling for the ack.
        process_before_response=True,
        request_verification_enabled=bot.settings.signing_secret is not None,
        logger=logging.getLogger("bot.bolt"),
    )
    commands.register(app, bot)
    interactions.register(app, bot)
    return app
