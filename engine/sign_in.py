"""One-time sign-in: a token that lets a browser act as an identity, once, within a few minutes.

Signing someone in is identity, not HTTP: ``/run console`` (Slack), ``switchboard up``
(the CLI) and tests mint a token for an identity and its roles here, and the web console
redeems it. Redis keeps only the SHA-256 of the token, with the actor and its role
names, for ``SWITCHBOARD_CONSOLE_LINK_TTL`` seconds; the first redemption takes it
(``GETDEL``, atomic), so a token works once. Roles travel as their names (``operator``,
``approver``): what each means is the edge's business (:class:`webhooks.auth.Role`).

A token is redeemed at :data:`SIGN_IN_PATH` ``/<token>`` of the server; the console serves
that path and every minter builds links with :func:`sign_in_url`, so they cannot disagree.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import redis
import redis.asyncio as aioredis
from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.model import Actor

SIGN_IN_PATH = "/sign-in"  # the console's sign-in page; a one-time token is redeemed below it
SLACK_ROLES = frozenset({"operator", "approver"})  # what Slack lets a person do (workflow lists still decide)


class SignInSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    link_ttl: int = Field(
        default=300,
        ge=10,
        le=3600,
        alias="SWITCHBOARD_CONSOLE_LINK_TTL",
        description="Seconds a one-time sign-in link (from /run console or switchboard up) stays usable.",
    )
    public_url: str = Field(
        default="",
        alias="SWITCHBOARD_PUBLIC_URL",
        description="The server's public URL (the web settings read it too); empty gives links as paths.",
    )


@lru_cache(maxsize=1)
def get_sign_in_settings() -> SignInSettings:
    return SignInSettings()


@dataclass(frozen=True)
class SignInKeys:
    prefix: str

    def token(self, digest: str) -> str:
        """A one-time sign-in token not used yet, by its SHA-256; expires by itself."""
        return f"{self.prefix}console:link:{digest}"


class SignIn(BaseModel):
    """Who a token signs in, and with which roles (their names)."""

    actor: Actor
    roles: frozenset[str]


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def mint(client: redis.Redis, prefix: str, actor: Actor, roles: Iterable[str] = SLACK_ROLES) -> str:
    """A new one-time token for ``actor`` with ``roles``, usable for ``link_ttl`` seconds."""
    token = secrets.token_urlsafe(32)
    grant = SignIn(actor=actor, roles=frozenset(str(role) for role in roles))
    key = SignInKeys(prefix).token(digest(token))
    client.set(key, grant.model_dump_json(), ex=get_sign_in_settings().link_ttl)
    return token


def sign_in_url(token: str, base_url: str | None = None) -> str:
    """Where ``token`` is redeemed: under ``base_url`` (default ``SWITCHBOARD_PUBLIC_URL``), or a path."""
    base = get_sign_in_settings().public_url if base_url is None else base_url
    return f"{base.rstrip('/')}{SIGN_IN_PATH}/{token}"


async def peek(client: aioredis.Redis, prefix: str, token: str) -> SignIn | None:
    """Who ``token`` would sign in, without using it (a page asking to confirm)."""
    raw = await client.get(SignInKeys(prefix).token(digest(token))) if _plausible(token) else None
    return _grant(raw)


async def redeem(client: aioredis.Redis, prefix: str, token: str) -> SignIn | None:
    """Use ``token``: who it signs in, and it is gone; None when unknown, used or expired."""
    raw = await client.getdel(SignInKeys(prefix).token(digest(token))) if _plausible(token) else None
    return _grant(raw)


def _grant(raw: bytes | str | None) -> SignIn | None:
    if not raw:
        return None
    try:
        return SignIn.model_validate_json(raw)
    except ValidationError:
        return None  # written by an older version: ask for a new link


def _plausible(token: str) -> bool:
    return 20 <= len(token) <= 100 and token.isascii()
