"""Redis idioms every part of Switchboard shares: replies as text, consumer groups, due-set leases.

Each is a small decision that several components would otherwise each make their own
way: how a reply becomes text (clients may or may not decode responses), that a
consumer group which already exists is fine, and how work in a sorted set scored by
when it is due is claimed for a lease (the engine's timers, the Slack outbox's keys), so
a process that dies holding it leaves it due again instead of lost.
"""

from __future__ import annotations

from typing import Any, overload

import redis
from redis.exceptions import ResponseError

# Claim up to ARGV[3] members of the sorted set KEYS[1] that are due by ARGV[1] (score
# at most ARGV[1]) by pushing their score to ARGV[2], the end of the lease; returns them.
# Atomic, so two processes never claim the same member; one that dies before finishing
# with a member leaves it to be claimed again when the lease runs out.
CLAIM_DUE_SCRIPT = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], member) end
return due
"""


@overload
def text(value: None) -> None: ...


@overload
def text(value: bytes | str | int | float) -> str: ...


def text(value: Any) -> str | None:
    """A Redis reply as text (clients may be set to return bytes or str); None stays None."""
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def texts(values: Any) -> list[str]:
    """A list of Redis replies as text."""
    return [text(v) for v in values or ()]


def ensure_group(client: redis.Redis, stream: str, group: str, start: str) -> None:
    """Create consumer group ``group`` of ``stream`` (and the stream) reading from ``start``,
    unless it exists: every reader calls this before its first read, so any one may be first."""
    try:
        client.xgroup_create(stream, group, id=start, mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
