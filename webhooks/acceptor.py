"""Accept run starts into the engine's intake, many deliveries per Redis round trip.

Each delivery handler awaits :meth:`Acceptor.accept`. The first one sends its request
at once; those that arrive while that call is in flight wait for it and go together in
the next call (group commit). Alone, a delivery costs one round trip as before; under
load, the per-call cost of the Redis client is shared by a whole batch, which is most
of what a delivery costs the web process.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from engine.intake import ACCEPT_SCRIPT, Accepted, StartRequest, accept_arguments, read_answers
from engine.store import Keys

MAX_BATCH = 256


class Acceptor:
    def __init__(self, aredis: aioredis.Redis, keys: Keys) -> None:
        self.keys = keys
        self._script = aredis.register_script(ACCEPT_SCRIPT)
        self._waiting: list[tuple[StartRequest, asyncio.Future[Accepted]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def accept(self, request: StartRequest) -> Accepted:
        """Accept ``request`` (durably, when this returns); a delivery seen before gets its earlier run."""
        answer: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, answer))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_all(), name="intake-accept")
        return await answer

    async def _send_all(self) -> None:
        batch: list[tuple[StartRequest, asyncio.Future[Accepted]]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                requests = [request for request, _ in batch]
                try:
                    script_keys, args = accept_arguments(self.keys, requests)
                    answers = read_answers(requests, await self._script(keys=script_keys, args=args))
                except Exception as exc:  # each waiting handler reports it as its own
                    for _, answer in batch:
                        if not answer.done():
                            answer.set_exception(exc)
                    continue
                for (_, answer), accepted in zip(batch, answers, strict=True):
                    if not answer.done():  # its handler may have been cancelled meanwhile
                        answer.set_result(accepted)
        finally:
            self._sender = None
            for _, answer in batch + self._waiting:  # only when cancelled (shutting down)
                answer.cancel()
