"""``action`` steps: call ``package.module:function`` with the rendered arguments and a context."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from typing import Any

from rq.timeouts import BaseTimeoutException

from engine.model import FailureCode, StepError
from worker.actions import PermanentError
from worker.failure import StepFailure


def load_action(reference: str) -> Callable[..., Any]:
    """The callable named by ``package.module:function``; a bad name fails for good."""
    module_name, _, attribute = reference.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise StepFailure(_failed(f"Cannot load action {reference!r}: {exc}", retryable=False)) from exc
    if not callable(target):
        raise StepFailure(_failed(f"Action {reference!r} is not callable.", retryable=False))
    return target


def run_action(reference: str, args: Any, context: dict[str, Any]) -> Any:
    """Call the action; its result must be something JSON can carry back to the engine."""
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise StepFailure(_failed(f"Action arguments must be a mapping, got {type(args).__name__}."))
    if "context" in args:
        raise StepFailure(_failed("Action arguments may not be named 'context': the worker passes it."))
    action = load_action(reference)
    try:
        result = action(**args, context=context)
    except BaseTimeoutException:
        raise  # the job's timeout: reported as STEP_TIMED_OUT by the job
    except PermanentError as exc:
        raise StepFailure(_failed(f"{reference} failed: {exc}", retryable=False)) from exc
    except Exception as exc:
        raise StepFailure(_failed(f"{reference} raised {type(exc).__name__}: {exc}", retryable=True)) from exc
    try:
        json.dumps(result)
    except (TypeError, ValueError) as exc:
        # A retry would return the same kind of value, so this is not retryable.
        raise StepFailure(
            _failed(f"{reference} returned a value JSON cannot carry ({type(result).__name__}): {exc}")
        ) from exc
    return result


def _failed(message: str, retryable: bool = False) -> StepError:
    return StepError(code=FailureCode.STEP_FAILED, message=message, retryable=retryable)
