"""The console's route table, registered by :func:`webhooks.server.create_app` beside ``/v1``."""

from __future__ import annotations

from aiohttp import web

from webhooks.console import actions, pages, signin
from webhooks.console.static import static_file

routes: list[web.RouteDef] = [
    web.get("/", pages.command_center),
    web.get("/runs", pages.runs),
    web.get("/runs/{run_id}", pages.run_detail),
    web.get("/runs/{run_id}/stream", pages.run_stream),
    web.post("/runs/{run_id}/control", actions.control),
    web.post("/runs/{run_id}/replay", actions.replay),
    web.get("/runs/{run_id}/tasks/{task_id}", pages.task_page),
    web.post("/runs/{run_id}/tasks/{task_id}", actions.decide),
    web.get("/approvals", pages.approvals),
    web.get("/logs", pages.logs),
    web.get("/analytics", pages.analytics),
    web.get("/sign-in", signin.sign_in_form),
    web.post("/sign-in", signin.sign_in_with_token),
    web.get("/sign-in/{token}", signin.link_page),
    web.post("/sign-in/{token}", signin.sign_in_with_link),
    web.post("/sign-out", signin.sign_out),
    web.get("/static/{name}", static_file),
]
