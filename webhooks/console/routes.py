"""The console's route table, registered by :func:`webhooks.server.create_app` beside ``/v1``."""

from __future__ import annotations

from aiohttp import web

from engine.sign_in import SIGN_IN_PATH
from webhooks.console import actions, pages, signin
from webhooks.console.static import static_file

routes: list[web.RouteDef] = [
    web.get("/", pages.command_center),
    web.get("/runs", pages.runs),
    web.get("/runs/{run_id}", pages.run_detail),
    web.get("/runs/{run_id}/stream", pages.run_stream),
    web.post("/runs/{run_id}/control", actions.control),
    web.post("/runs/{run_id}/replay", actions.replay),
    web.post("/runs/{run_id}/recover", actions.recover),
    web.get("/runs/{run_id}/tasks/{task_id}", pages.task_page),
    web.post("/runs/{run_id}/tasks/{task_id}", actions.decide),
    web.get("/runs/{run_id}/questions/{step_id}", pages.question_page),
    web.post("/runs/{run_id}/questions/{step_id}", actions.answer),
    web.get("/approvals", pages.approvals),
    web.get("/logs", pages.logs),
    web.get("/analytics", pages.analytics),
    web.get(SIGN_IN_PATH, signin.sign_in_form),
    web.post(SIGN_IN_PATH, signin.sign_in_with_token),
    web.get(f"{SIGN_IN_PATH}/{{token}}", signin.link_page),  # a one-time token (engine.sign_in)
    web.post(f"{SIGN_IN_PATH}/{{token}}", signin.sign_in_with_link),
    web.post("/sign-out", signin.sign_out),
    web.get("/static/{name}", static_file),
]
