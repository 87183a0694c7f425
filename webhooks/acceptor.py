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
MAX_BATCH_BYTES = 1024 * 1024  # one Lua call blocks Redis while it runs: keep each one small

Waiting = tuple[StartRequest, asyncio.Future[Accepted]]  # a request and its handler's answer


class Acceptor:
    def __init__(self, aredis: aioredis.Redis, keys: Keys) -> None:
        self.keys = keys
        self._script = aredis.register_script(ACCEPT_SCRIPT)
        self._waiting: list[Waiting] = []
        self._sender: asyncio.Task[None] | None = None

    async def accept(self, request: StartRequest) -> Accepted:
        """Accept ``request`` (durably, when this returns); a delivery seen before gets its earlier run."""
        answer: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, answer))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_all(), name="intake-accept")
        return await answer

    async def _send_all(self) -> None:
        batch: list[Waiting] = []
        try:
            while self._waiting:
                batch, self._waiting = _next_batch(self._waiting)
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


def _next_batch(
    waiting: list[tuple[StartRequest, asyncio.Future[Accepted]]],
) -> tuple[
    list[tuple[StartRequest, asyncio.Future[Accepted]]], list[tuple[StartRequest, asyncio.Future[Accepted]]]
]:
    """The first requests up to MAX_BATCH of them and MAX_BATCH_BYTES of JSON (always one), and the rest."""
    size, count = 0, 0
    for request, _ in waiting[:MAX_BATCH]:
        size += len(request.json)
        if count and size > MAX_BATCH_BYTES:
            break
        count += 1
    return waiting[:count], waiting[count:]
