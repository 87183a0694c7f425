"""The web process: the webhooks/REST app, with the Slack bot mounted when it is configured."""

from __future__ import annotations

import logging

from aiohttp import web

from engine.api import Engine
from engine.factory import build_engine
from engine.settings import Settings

log = logging.getLogger(__name__)


def build_app(engine: Engine) -> web.Application:
    from bot.settings import SlackSettings
    from webhooks.server import create_app

    app = create_app(engine)
    slack = SlackSettings()
    if slack.bot_token and slack.signing_secret:
        from bot.web import attach

        attach(app, engine, slack)
        log.info("slack bot mounted", extra={"path": "/slack/events", "socket_mode": bool(slack.app_token)})
    else:
        log.info("slack bot off: set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET to turn it on")
    return app


def serve(settings: Settings, host: str, port: int) -> None:
    engine = build_engine(settings)
    log.info("web listening", extra={"url": f"http://{host}:{port}", "workflows": len(engine.workflows())})
    web.run_app(build_app(engine), host=host, port=port, print=None)
