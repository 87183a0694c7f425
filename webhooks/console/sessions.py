"""Console sessions: who a browser is, for how long, and the one-time links that sign it in.

A session is a random cookie value; Redis keeps the session under the SHA-256 of that
value (:class:`~webhooks.console.keys.ConsoleKeys`), with the identity it acts as, its
roles and its CSRF token, and lets it expire. A one-time sign-in link works the same
way: the engine side mints a random token for an identity (``/run console`` for a Slack
user, ``switchboard up`` for the local operator), Redis keeps its digest for a few
minutes, and the first POST that presents it takes it (``GETDEL``): single use.

Cookies are HttpOnly (no script reads them), SameSite=Lax (a link from Slack arrives
signed in; a cross-site POST does not carry it) and Secure when the request came over
HTTPS, directly or through a proxy saying ``X-Forwarded-Proto: https``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime
from typing import Literal

import redis.asyncio as aioredis
from aiohttp import web
from pydantic import BaseModel, ValidationError

from engine.api import Engine
from engine.model import Actor, ActorKind
from webhooks.auth import Principal, Role
from webhooks.console.keys import ConsoleKeys
from webhooks.console.settings import get_console_settings

SESSION_COOKIE = "sb_session"
SIGN_IN_COOKIE = "sb_sign_in"  # the CSRF nonce of the sign-in forms, before there is a session
SIGN_IN_PATH = "/sign-in"
# What a Slack user may do in the console: what Slack lets them do (workflow lists still decide).
SLACK_ROLES = frozenset({Role.OPERATOR, Role.APPROVER})
FLASH_TTL_SECONDS = 120


class Grant(BaseModel):
    """An identity and its roles: what a session acts as, and what a sign-in link will grant."""

    actor: Actor
    roles: frozenset[Role]

    def may(self, role: Role) -> bool:
        """The REST rule (:meth:`webhooks.auth.Principal.may`), so a role means the same everywhere."""
        return Principal(self.actor.ref, self.roles).may(role)

    @property
    def role_names(self) -> str:
        return ", ".join(sorted(r.value for r in self.roles)) or "none"


class Session(Grant):
    csrf: str
    signed_in_at: datetime
    via: Literal["token", "link"]


class Flash(BaseModel):
    kind: Literal["ok", "error"]
    text: str


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def is_https(request: web.BaseRequest) -> bool:
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


def set_cookie(
    response: web.StreamResponse,
    request: web.BaseRequest,
    name: str,
    value: str,
    max_age: int,
    same_site: Literal["Lax", "Strict"] = "Lax",
) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/", httponly=True, samesite=same_site, secure=is_https(request)
    )


# -- sessions ---------------------------------------------------------------------------------


class SessionStore:
    """Sessions and their flash notices in Redis, read from the event loop (no thread held)."""

    def __init__(self, aredis: aioredis.Redis, keys: ConsoleKeys) -> None:
        self.redis = aredis
        self.keys = keys

    async def open(self, grant: Grant, via: Literal["token", "link"], now: datetime) -> str:
        """Store a new session for ``grant``; returns the cookie value."""
        cookie = secrets.token_urlsafe(32)
        session = Session(
            actor=grant.actor, roles=grant.roles, csrf=secrets.token_urlsafe(24), signed_in_at=now, via=via
        )
        ttl = get_console_settings().session_ttl
        await self.redis.set(self.keys.session(digest(cookie)), session.model_dump_json(), ex=ttl)
        return cookie

    async def load(self, cookie: str | None) -> tuple[Session | None, Flash | None]:
        """The session a cookie names (None when unknown or expired), and its pending notice."""
        if not cookie or len(cookie) > 100:
            return None, None
        key = digest(cookie)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self.keys.session(key))
            pipe.getdel(self.keys.flash(key))
            raw, flash = await pipe.execute()
        if raw is None:
            return None, None
        try:
            session = Session.model_validate_json(raw)
        except ValidationError:
            return None, None  # written by an older version: sign in again
        return session, Flash.model_validate_json(flash) if flash else None

    async def close(self, cookie: str) -> None:
        await self.redis.delete(self.keys.session(digest(cookie)), self.keys.flash(digest(cookie)))

    async def tell(self, cookie: str, flash: Flash) -> None:
        await self.redis.set(self.keys.flash(digest(cookie)), flash.model_dump_json(), ex=FLASH_TTL_SECONDS)


# -- one-time sign-in links -------------------------------------------------------------------


def mint_sign_in_link(
    engine: Engine, actor: Actor, roles: frozenset[Role] = SLACK_ROLES, base_url: str = ""
) -> str:
    """A link that signs a browser in as ``actor`` with ``roles``, once, within a few minutes.

    ``/run console`` mints one for the Slack user who asked; ``switchboard up`` one for the
    local operator; tests mint them directly. ``base_url`` is the server's public URL
    (``SWITCHBOARD_PUBLIC_URL``); without it the link is a path.
    """
    token = secrets.token_urlsafe(32)
    grant = Grant(actor=actor, roles=roles)
    key = ConsoleKeys(engine.keys.prefix).sign_in_link(digest(token))
    engine.redis.set(key, grant.model_dump_json(), ex=get_console_settings().link_ttl)
    return f"{base_url.rstrip('/')}{SIGN_IN_PATH}/{token}"


def local_operator(name: str) -> Actor:
    """The identity ``switchboard up`` signs its user in as: the CLI's ``--as`` person."""
    return Actor(kind=ActorKind.CLI, id=name, name=name)


async def peek_link(aredis: aioredis.Redis, keys: ConsoleKeys, token: str) -> Grant | None:
    """Who a sign-in link would sign in, without using it (the confirmation page)."""
    raw = await aredis.get(keys.sign_in_link(digest(token))) if _plausible(token) else None
    return Grant.model_validate_json(raw) if raw else None


async def take_link(aredis: aioredis.Redis, keys: ConsoleKeys, token: str) -> Grant | None:
    """Use a sign-in link: its grant, and it is gone; None when unknown, used or expired."""
    raw = await aredis.getdel(keys.sign_in_link(digest(token))) if _plausible(token) else None
    return Grant.model_validate_json(raw) if raw else None


def _plausible(token: str) -> bool:
    return 20 <= len(token) <= 100 and token.isascii()
