"""Signing in and out: with an API token, or with a one-time link minted for an identity.

The sign-in forms exist before any session, so their CSRF check is a double-submit
nonce: a SameSite=Strict cookie and a hidden field that must match. A one-time link
(``/sign-in/{token}``) shows who it signs in and a button; only that POST uses it up,
so a link preview fetching the URL does not spend it.
"""

from __future__ import annotations

import secrets
from typing import Literal

from aiohttp import web

from webhooks.console.access import COOKIE, console, local_path, read_form, store_of
from webhooks.console.render import render
from webhooks.console.sessions import (
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    Grant,
    peek_link,
    same_secret,
    set_cookie,
    take_link,
)
from webhooks.console.settings import get_console_settings
from webhooks.context import context_of
from webhooks.problems import Problem

NONCE_SECONDS = 3600
USED_LINK = (
    "This sign-in link has been used or has expired: each link works once, for a few minutes."
    " Ask for a new one (/run console in Slack) or sign in with an API token."
)


async def sign_in_form(request: web.Request) -> web.StreamResponse:
    session, _ = await store_of(request).load(request.cookies.get(SESSION_COOKIE))
    next_path = local_path(request.query.get("next"))
    if session is not None:
        raise web.HTTPSeeOther(next_path)
    return _with_nonce(request, "sign_in.html", 200, next=next_path, error=None)


async def sign_in_with_token(request: web.Request) -> web.StreamResponse:
    form = await read_form(request)
    next_path = local_path(form.get("next"))
    if not _nonce_ok(request, form):
        return _with_nonce(request, "sign_in.html", 403, next=next_path, error=_STALE)
    try:
        principal = context_of(request).tokens.authenticate(f"Bearer {form.get('token', '')}")
    except Problem:
        return _with_nonce(request, "sign_in.html", 401, next=next_path, error="That API token is not valid.")
    return await _open(request, Grant(actor=principal.actor, roles=principal.roles), "token", next_path)


async def link_page(request: web.Request) -> web.StreamResponse:
    grant = await peek_link(context_of(request).aredis, _prefix(request), request.match_info["token"])
    if grant is None:
        return render("error.html", 410, session=None, status_code=410, message=USED_LINK, flash=None)
    return _with_nonce(request, "sign_in_link.html", 200, grant=grant, action=request.path)


async def sign_in_with_link(request: web.Request) -> web.StreamResponse:
    form = await read_form(request)
    if not _nonce_ok(request, form):
        return render("error.html", 403, session=None, status_code=403, message=_STALE, flash=None)
    grant = await take_link(context_of(request).aredis, _prefix(request), request.match_info["token"])
    if grant is None:
        return render("error.html", 410, session=None, status_code=410, message=USED_LINK, flash=None)
    return await _open(request, grant, "link", "/")


@console()
async def sign_out(request: web.Request) -> web.StreamResponse:
    await store_of(request).close(request[COOKIE])
    response = web.HTTPSeeOther("/sign-in")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


_STALE = "This sign-in form has expired (or cookies are off for this site). Reload the page and try again."


async def _open(
    request: web.Request, grant: Grant, via: Literal["token", "link"], next_path: str
) -> web.StreamResponse:
    cookie = await store_of(request).open(grant, via, context_of(request).engine.clock())
    response = web.HTTPSeeOther(next_path)
    set_cookie(response, request, SESSION_COOKIE, cookie, get_console_settings().session_ttl)
    response.del_cookie(SIGN_IN_COOKIE, path="/")
    raise response


def _with_nonce(request: web.Request, template: str, status: int, **values: object) -> web.Response:
    nonce = secrets.token_urlsafe(24)
    response = render(template, status, session=None, flash=None, nonce=nonce, **values)
    set_cookie(response, request, SIGN_IN_COOKIE, nonce, NONCE_SECONDS, same_site="Strict")
    return response


def _nonce_ok(request: web.Request, form: dict[str, str]) -> bool:
    cookie = request.cookies.get(SIGN_IN_COOKIE, "")
    return bool(cookie) and same_secret(form.get("nonce", ""), cookie)


def _prefix(request: web.Request) -> str:
    return context_of(request).engine.keys.prefix
