"""Calling the synchronous engine from an event loop, with the types of the call kept.

The engine speaks redis-py synchronously; the Slack bot and the web server run on
asyncio. Both run each engine call on a thread so the loop keeps answering (Slack's
3-second acks, other HTTP requests). :meth:`EngineBridge.call` takes the engine
method itself, not its name, so mypy checks the arguments against the method and the
caller gets the method's own return type::

    run = await bridge.call(engine.get_run, run_ref)  # run: Run
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class EngineBridge:
    """Runs engine calls on ``executor``, or on the running loop's default executor when None."""

    executor: Executor | None = None

    async def call(self, method: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``method(*args, **kwargs)`` on a thread of the executor, awaited without blocking the loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(method, *args, **kwargs))

    def close(self) -> None:
        """Stop the executor's threads once the calls under way are done (nothing waits for them)."""
        if self.executor is not None:
            self.executor.shutdown(wait=False)
