"""Errors the command API raises. Each message is a sentence an operator can act on."""

from __future__ import annotations

from datetime import datetime
from typing import Any


class SwitchboardError(Exception):
    """Base class: ``str(error)`` is meant to be shown to the person who asked."""


class NotFound(SwitchboardError):
    """An unknown run, workflow, task or webhook source."""


class AmbiguousRunId(SwitchboardError):
    def __init__(self, prefix: str, candidates: list[str]) -> None:
        self.candidates = candidates
        shown = ", ".join(candidates[:5])
        super().__init__(f"{prefix!r} matches several runs ({shown}); type more characters.")


class CommandRefused(SwitchboardError):
    """A command that does not fit the run's state; the message says why and what is possible."""


class NotAllowed(CommandRefused):
    """The actor may not do this (not an approver or operator, or approving their own run)."""


class AlreadyDecided(CommandRefused):
    """A second decision on a task; the sentence (see :func:`engine.views.already_decided`) says whose."""

    def __init__(self, message: str, decided_by: str, decided_at: datetime, approved: bool | None) -> None:
        self.decided_by = decided_by
        self.decided_at = decided_at
        self.approved = approved
        super().__init__(message)


class DeliveryInProgress(CommandRefused):
    """Another delivery with the same id is being handled and did not finish in time: try again."""


class InvalidInput(SwitchboardError):
    """Input that does not match what a workflow or a command takes."""

    def __init__(self, message: str, problems: dict[str, Any] | None = None) -> None:
        self.problems = problems or {}
        super().__init__(message)
