"""Bearer tokens with roles for the REST API.

Tokens come from ``SWITCHBOARD_API_TOKENS`` as ``name:role[+role]:token`` entries. A
request acts as ``Actor(kind=API, id=<token name>)``, which workflow ``operators`` and
``approvers`` lists can name (``api:deploy-bot``). Roles:

- ``viewer``: read (every GET). Every token can read; the role exists to say so.
- ``operator``: start, pause, resume, stop and replay runs.
- ``approver``: complete human tasks.
- ``admin``: all of the above.

Only SHA-256 digests of the tokens are kept, and a presented token is compared with
every one of them in constant time, so neither memory nor timing gives a token away.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import StrEnum

from engine.model import Actor, ActorKind
from webhooks.problems import Problem


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    APPROVER = "approver"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """Who a token belongs to and what it may do."""

    name: str
    roles: frozenset[Role]

    def may(self, role: Role) -> bool:
        return role is Role.VIEWER or Role.ADMIN in self.roles or role in self.roles

    @property
    def actor(self) -> Actor:
        return Actor(kind=ActorKind.API, id=self.name)


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    principal: Principal


class TokenError(ValueError):
    """A malformed token setting; the message says which entry (never the token itself)."""


class Tokens:
    def __init__(self, entries: list[tuple[str, frozenset[Role], str]]) -> None:
        self._entries = [_Entry(_digest(token), Principal(name, roles)) for name, roles, token in entries]

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def parse(cls, setting: str) -> Tokens:
        """``name:role[+role]:token`` entries separated by commas."""
        entries: list[tuple[str, frozenset[Role], str]] = []
        for position, item in enumerate(filter(None, (i.strip() for i in setting.split(","))), start=1):
            parts = item.split(":", 2)
            if len(parts) != 3 or not parts[0] or not parts[2]:
                raise TokenError(f"API token entry {position} must look like 'name:role[+role]:token'.")
            name, role_text, token = parts
            try:
                roles = frozenset(Role(r.strip()) for r in role_text.split("+"))
            except ValueError:
                known = ", ".join(r.value for r in Role)
                raise TokenError(f"API token {name!r} names an unknown role; roles are {known}.") from None
            entries.append((name, roles, token))
        return cls(entries)

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization: Bearer <token>`` header, or a 401 problem."""
        if not self._entries:
            raise _unauthorized(
                "The API refuses every request: no API tokens are configured. Set"
                " SWITCHBOARD_API_TOKENS (name:role[+role]:token, comma separated) and restart the server."
            )
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("This API needs an 'Authorization: Bearer <token>' header.")
        presented = _digest(token.strip())
        found: Principal | None = None
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, presented):
                found = entry.principal
        if found is None:
            raise _unauthorized("The bearer token is not valid.", error="invalid_token")
        return found


def forbidden(principal: Principal, role: Role) -> Problem:
    return Problem(
        403,
        f"Token {principal.name!r} may not do this: it needs the {role.value} role"
        f" and has {', '.join(sorted(r.value for r in principal.roles))}.",
        "forbidden",
        required_role=role.value,
    )


def _unauthorized(detail: str, error: str | None = None) -> Problem:
    problem = Problem(401, detail, "unauthorized")
    challenge = 'Bearer realm="switchboard"'
    problem.headers["WWW-Authenticate"] = f'{challenge}, error="{error}"' if error else challenge
    return problem


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
