"""Built-in actions: small callables the sample workflows use and tests rely on.

An action is any importable ``package.module:function``. It receives the step's
rendered arguments as keyword arguments plus ``context`` (run id, step id, attempt,
inputs) and returns something JSON can carry. Raising an exception fails the attempt;
raise :class:`PermanentError` for errors a retry cannot fix.
"""

from __future__ import annotations

import time
from typing import Any


class PermanentError(Exception):
    """An error a retry would only repeat (bad input, a refused request)."""


def echo(context: dict[str, Any] | None = None, **args: Any) -> dict[str, Any]:
    """Return the arguments unchanged: the no-op step of benchmarks and examples."""
    return args


def sleep(seconds: float = 1.0, context: dict[str, Any] | None = None, **args: Any) -> dict[str, Any]:
    """Hold a worker for ``seconds``: a stand-in for slow work (builds, migrations)."""
    time.sleep(float(seconds))
    return {"slept": float(seconds), **args}


def fail(
    message: str = "failed on purpose",
    retryable: bool = True,
    context: dict[str, Any] | None = None,
    **args: Any,
) -> None:
    """Fail the attempt: for demonstrating fail-fast branches and retries."""
    if retryable:
        raise RuntimeError(message)
    raise PermanentError(message)


def draft_message(
    topic: str, audience: str = "customers", context: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Draft a short announcement for a human to edit before it is sent."""
    return {
        "subject": f"Update: {topic}",
        "body": f"Hello {audience},\n\nWe wanted to let you know about {topic}.\n\nThanks,\nThe team",
    }


def flaky(succeed_on_attempt: int = 2, context: dict[str, Any] | None = None, **args: Any) -> dict[str, Any]:
    """Fail until the given attempt, then succeed: shows retries with backoff."""
    attempt = int((context or {}).get("attempt", 1))
    if attempt < succeed_on_attempt:
        raise RuntimeError(f"transient failure on attempt {attempt}")
    return {"attempt": attempt, **args}


def slow_write(
    path: str, seconds: float = 1.0, context: dict[str, Any] | None = None, **args: Any
) -> dict[str, Any]:
    """Sleep, then append the attempt number to ``path``: slow work with a visible side effect.

    A step that was stopped or lost midway leaves no line behind, which is how tests see
    that a kill really killed it.
    """
    time.sleep(float(seconds))
    attempt = int((context or {}).get("attempt", 1))
    with open(path, "a", encoding="utf-8") as file:
        file.write(f"{attempt}\n")
    return {"path": path, "attempt": attempt, **args}
