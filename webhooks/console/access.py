"""Who may see and do what in the console: sessions, roles and CSRF, checked before any handler.

:func:`console` wraps every page and form handler. It loads the session from its
cookie (a page without one sends the browser to sign in; a form gets a 401 page), for
a POST reads the form and checks its CSRF token against the session's, then checks the
role the handler needs with the REST rule. A refusal is a page that says why, with
the status REST would answer (401, 403, 404), never a traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, quote

from aiohttp import web

from engine.errors import AmbiguousRunId, NotFound
from engine.sign_in import SIGN_IN_PATH
from webhooks import inbound
from webhooks.auth import Role
from webhooks.console.keys import ConsoleKeys
from webhooks.console.render import render
from webhooks.console.sessions import SESSION_COOKIE, Flash, Session, SessionStore, same_secret
from webhooks.context import context_of

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SESSION = web.RequestKey("console_session", Session)
COOKIE = web.RequestKey("console_cookie", str)
FORM = web.RequestKey("console_form", dict)
FLASH = web.RequestKey("console_flash", Flash)
FORM_LIMIT = 64 * 1024
FORM_FIELDS = 200
FORM_TYPE = "application/x-www-form-urlencoded"


def store_of(request: web.Request) -> SessionStore:
    ctx = context_of(request)
    return SessionStore(ctx.aredis, ConsoleKeys(ctx.engine.keys.prefix))


def console(role: Role = Role.VIEWER) -> Callable[[Handler], Handler]:
    """Guard a console handler: a signed-in session with ``role``, and a valid CSRF token on POST."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            cookie = request.cookies.get(SESSION_COOKIE, "")
            session, flash = await store_of(request).load(cookie)
            if session is None:
                if request.method in ("GET", "HEAD"):
                    raise web.HTTPSeeOther(f"{SIGN_IN_PATH}?next={quote(request.path_qs, safe='')}")
                return await refusal(
                    request, 401, "You are not signed in, or your session has ended. Sign in again."
                )
            request[SESSION] = session
            request[COOKIE] = cookie
            if flash is not None:
                request[FLASH] = flash
            if request.method == "POST":
                fields = await read_form(request)
                if not same_secret(fields.get("csrf", ""), session.csrf):
                    return await refusal(
                        request,
                        403,
                        "This form did not come from your console session (its CSRF token is missing or old)."
                        " Reload the page and try again.",
                    )
                request[FORM] = fields
            if not session.may(role):
                return await refusal(
                    request,
                    403,
                    f"You ({session.actor.display}) may not do this: it needs the {role.value} role,"
                    f" and you have {session.role_names}.",
                )
            try:
                return await handler(request)
            except NotFound as exc:
                return await refusal(request, 404, str(exc))
            except AmbiguousRunId as exc:
                return await refusal(request, 400, str(exc))

        return guarded

    return wrap


async def page(request: web.Request, template: str, status: int = 200, **values: Any) -> web.Response:
    """A page with what every page shows: who is signed in, the approvals badge, a notice.

    The badge counts everything waiting on a person: tasks waiting for a decision and
    questions waiting for an answer (both hold a run up until someone acts), read from the
    engine's two indexes in one round trip.
    """
    session = request.get(SESSION)
    ctx = context_of(request)
    now = ctx.engine.clock()
    tasks = questions = 0
    if session is not None:
        async with ctx.aredis.pipeline(transaction=False) as pipe:
            pipe.zcard(ctx.engine.keys.pending_tasks)
            pipe.zcard(ctx.engine.keys.open_questions)
            tasks, questions = await pipe.execute()
    return render(
        template,
        status,
        session=session,
        csrf=session.csrf if session else "",
        pending_count=tasks,
        question_count=questions,
        waiting_count=tasks + questions,
        flash=request.get(FLASH),
        path=request.path,
        here=request.path_qs,
        now=now,
        Role=Role,
        **values,
    )


async def refusal(request: web.Request, status: int, message: str) -> web.Response:
    return await page(request, "error.html", status, status_code=status, message=message)


async def read_form(request: web.Request) -> dict[str, str]:
    """A form POST's fields (the first value of each), read through :mod:`webhooks.inbound`."""
    if request.content_type != FORM_TYPE:
        raise inbound.Malformed(415, f"Console forms are sent as {FORM_TYPE}.", "unsupported-media-type")
    inbound.check_charset(request)
    text = inbound.utf8_text(await inbound.read_body(request, FORM_LIMIT))
    try:
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=FORM_FIELDS)
    except ValueError:
        raise inbound.Malformed(
            400, f"A console form has at most {FORM_FIELDS} fields.", "bad-form"
        ) from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        fields.setdefault(name, value)
    return fields


def local_path(target: str | None, default: str = "/") -> str:
    """``target`` if it is a path on this site (where to go back to), else ``default``."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith(("//", "/\\"))
        or not target.isprintable()
    ):
        return default
    return target


async def back(
    request: web.Request, flash: Flash, default: str = "/", follow: bool = False
) -> web.StreamResponse:
    """After a form: the notice for the next page, and a 303 to the page the form came from
    (its ``next`` field), or to ``default`` when there is none or ``follow`` says to go there."""
    await store_of(request).tell(request[COOKIE], flash)
    raise web.HTTPSeeOther(default if follow else local_path(request[FORM].get("next"), default))
