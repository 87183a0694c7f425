"""How step executors say an attempt failed: with the :class:`StepError` the engine records."""

from __future__ import annotations

from engine.model import StepError


class StepFailure(Exception):
    """An attempt failed in a way the step type understands (a bad status, a raised error)."""

    def __init__(self, error: StepError) -> None:
        super().__init__(error.message)
        self.error = error
