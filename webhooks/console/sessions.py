"""Console sessions: who a browser is, for how long, and the one-time links that sign it in.

A session is a random cookie value; Redis keeps the session under the SHA-256 of that
value (:class:`~webhooks.console.keys.ConsoleKeys`), with the identity it acts as, its
roles and its CSRF token, and lets it expire. A one-time sign-in link carries a token
the engine minted for an identity (:mod:`engine.sign_in`: ``/run console`` for a Slack
user, ``switchboard up`` for the local operator); the first POST that presents it
redeems it there (``GETDEL``): single use.

Cookies are HttpOnly (no script reads them), SameSite=Lax (a link from Slack arrives
signed in; a cross-site POST does not carry it) and Secure when the request came over
HTTPS, directly or through a proxy saying ``X-Forwarded-Proto: https``.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import datetime
from typing import Literal

import redis.asyncio as aioredis
from aiohttp import web
from pydantic import BaseModel, ValidationError

from engine import sign_in
from engine.api import Engine
from engine.model import Actor, ActorKind
from engine.sign_in import SignIn, digest, mint, sign_in_url
from webhooks.auth import Principal, Role
from webhooks.console.keys import ConsoleKeys
from webhooks.console.settings import get_console_settings

SESSION_COOKIE = "sb_session"
SIGN_IN_COOKIE = "sb_sign_in"  # the CSRF nonce of the sign-in forms, before there is a session
# What a Slack user may do in the console: what Slack lets them do (workflow lists still decide).
SLACK_ROLES = frozenset(Role(name) for name in sign_in.SLACK_ROLES)
ROLE_NAMES = frozenset(role.value for role in Role)
FLASH_TTL_SECONDS = 120


class Grant(BaseModel):
    """An identity and its roles: what a session acts as, and what a sign-in link will grant."""

    actor: Actor
    roles: frozenset[Role]

    @classmethod
    def of(cls, signed: SignIn | None) -> Grant | None:
        """The grant of a redeemed one-time token; roles this server does not know count for nothing."""
        if signed is None:
            return None
        known = frozenset(Role(name) for name in signed.roles if name in ROLE_NAMES)
        return cls(actor=signed.actor, roles=known)

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

    The token is the engine's (:func:`engine.sign_in.mint`: the Slack bot mints one there
    itself); this builds the console's link to it. ``base_url`` is the server's public URL
    (``SWITCHBOARD_PUBLIC_URL``); without it the link is a path.
    """
    return sign_in_url(mint(engine.redis, engine.keys.prefix, actor, roles), base_url)


def local_operator(name: str) -> Actor:
    """The identity ``switchboard up`` signs its user in as: the CLI's ``--as`` person."""
    return Actor(kind=ActorKind.CLI, id=name, name=name)


async def peek_link(aredis: aioredis.Redis, prefix: str, token: str) -> Grant | None:
    """Who a sign-in link would sign in, without using it (the confirmation page)."""
    return Grant.of(await sign_in.peek(aredis, prefix, token))


async def take_link(aredis: aioredis.Redis, prefix: str, token: str) -> Grant | None:
    """Use a sign-in link: its grant, and it is gone; None when unknown, used or expired."""
    return Grant.of(await sign_in.redeem(aredis, prefix, token))
