"""Redis idioms every part of Switchboard shares: replies as text, consumer groups, due-set leases,
commands run by one script.

Each is a small decision that several components would otherwise each make their own
way: how a reply becomes text (clients may or may not decode responses), that a
consumer group which already exists is fine, how work in a sorted set scored by
when it is due is claimed for a lease (the engine's timers, the Slack outbox's keys), so
a process that dies holding it leaves it due again instead of lost, and how the commands
of a transaction are sent as one script call (a run's commit).
"""

from __future__ import annotations

from typing import Any, overload

import redis
from redis.client import Pipeline
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


# Lua that runs commands given in ARGV from index ``at``: how many, then each as its word
# count and its words (:func:`command_words`). A script runs atomically, as MULTI/EXEC
# does, and answers once: a client reads one reply where EXEC had one per command, and
# packs one command where a pipeline packed each. Leaves ``at`` just past the commands.
RUN_COMMANDS_LUA = """
local commands = tonumber(ARGV[at])
at = at + 1
for _ = 1, commands do
  local count = tonumber(ARGV[at])
  redis.call(unpack(ARGV, at + 1, at + count))
  at = at + count + 1
end
"""


def command_words(pipe: Pipeline) -> list[Any]:
    """The commands queued on ``pipe`` (in MULTI mode, never executed) as ARGV words for
    :data:`RUN_COMMANDS_LUA`: built by the pipeline's own methods (the engine's writes, RQ's
    enqueues), as they would be sent in a transaction."""
    words: list[Any] = [len(pipe.command_stack)]
    for args, _options in pipe.command_stack:
        words += [len(args), *args]
    return words


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
