"""Reading Redis streams of events from asyncio code."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from engine.model import Event
from engine.store import event_from_entry


async def read_events(
    aredis: aioredis.Redis, key: str, after: str, block_ms: int | None, count: int
) -> list[Event]:
    """Events of one stream after entry id ``after``, waiting up to ``block_ms`` for some."""
    reply: Any = await aredis.xread({key: after}, block=block_ms, count=count)
    if not reply:
        return []
    return [event_from_entry(entry_id, fields) for entry_id, fields in reply[0][1]]
