"""App Home as the Command Center: the operator inbox, built as one Block Kit view.

Sections and row actions follow the product's Command Center: Awaiting approval
(grouped by workflow and run), Waiting for an answer (``ask`` steps' questions, each
with the Answer button of its message), Stopping gracefully, Running now, Failed recently.
Each section shows its first rows and "N more"; the row caps keep the whole view
under Slack's 100 blocks whatever the counts are, and :func:`~bot.blocks.fit` backs
that up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import groupby
from typing import TypeVar

from bot import cards, ids
from bot.blocks import (
    VIEW_BLOCKS,
    Block,
    actions,
    button,
    context,
    divider,
    escape,
    fit,
    header,
    section,
    truncate,
    when,
    who,
)
from engine.model import Run, RunStatus
from engine.queries import CommandCenter, OpenQuestion, PendingTask
from engine.views import describe

T = TypeVar("T")

APPROVAL_ROWS = 8
QUESTION_ROWS = 5
DRAINING_ROWS = 5
RUNNING_ROWS = 10
FAILED_ROWS = 8


def home_view(center: CommandCenter, notice: str | None = None) -> Block:
    """The home of one user."""
    counts = center.counts
    blocks: list[Block] = [header("Command Center")]
    if notice:
        blocks.append(section(notice))
    blocks.append(
        context(
            f"*{counts.get('pending', 0)} pending* · *{counts.get('draining', 0)} draining*"
            f" · *{counts.get('running', 0)} running* · *{counts.get('failed', 0)} failed* in the last 24 h"
        )
    )
    blocks += _awaiting(center.awaiting_approval, counts.get("pending", 0))
    blocks += _questions(center.awaiting_answer, counts.get("questions", 0))
    blocks += _section(
        f"Stopping gracefully · {counts.get('draining', 0)} draining",
        center.stopping_gracefully,
        counts.get("draining", 0),
        DRAINING_ROWS,
        _draining_row,
        "Nothing is draining.",
    )
    blocks += _section(
        f"Running now · {counts.get('running', 0)} active",
        center.running_now,
        counts.get("running", 0),
        RUNNING_ROWS,
        _running_row,
        "No run is active.",
    )
    blocks += _section(
        f"Failed recently · {counts.get('failed_runs', 0)} failed, {counts.get('stopped_runs', 0)} stopped"
        " in 24 h",
        center.failed_recently,
        counts.get("failed", 0),
        FAILED_ROWS,
        _failed_row,
        "No failures in the last 24 hours.",
    )
    return {"type": "home", "blocks": fit(blocks, VIEW_BLOCKS)}


def _awaiting(tasks: list[PendingTask], total: int) -> list[Block]:
    blocks: list[Block] = [divider(), section(f"*Awaiting approval* · {total} pending")]
    if not tasks:
        return [*blocks, context("No task is waiting for a decision.")]
    shown = tasks[:APPROVAL_ROWS]
    ordered = sorted(shown, key=lambda p: (p.run.workflow_name, p.run.run_id))
    for (workflow, run_id), group in groupby(ordered, key=lambda p: (p.run.workflow_name, p.run.run_id)):
        blocks.append(context(f"*{escape(workflow)}* · run `{run_id[:8]}`"))
        for pending in group:
            blocks += _task_row(pending)
    if total > len(shown):
        blocks.append(context(f"… and {total - len(shown)} more pending"))
    return blocks


def _task_row(pending: PendingTask) -> list[Block]:
    task = pending.task
    value = ids.task_value(pending.run.run_id, task.task_id)
    expiry = f" · expires {when(task.expires_at)}" if task.expires_at else ""
    text = (
        f"*{escape(task.title)}*\n{task.task_type} · step `{task.task_id}`"
        f" · started by {who(pending.run.started_by)}{expiry}"
    )
    buttons = [
        button("Approve", ids.TASK_APPROVE, value, "primary"),
        button("Reject", ids.TASK_REJECT, value, "danger"),
    ]
    if task.editable:
        buttons.append(button("Edit", ids.TASK_EDIT, value))
    return [section(text), actions(*buttons)]


def _questions(questions: Sequence[OpenQuestion], total: int) -> list[Block]:
    title, empty = f"Waiting for an answer · {total} open", "No question is waiting for an answer."
    return _section(title, questions, total, QUESTION_ROWS, _question_row, empty)


def _question_row(found: OpenQuestion) -> list[Block]:
    question = found.question
    expiry = f" · expires {when(question.expires_at)}" if question.expires_at else ""
    text = (
        f"❓ *{escape(truncate(question.text, 1500))}*\n{cards.question_place(found.run, found.step_id)}"
        f" · asked {cards.ref_text(question.to)}{expiry}"
    )
    return [section(text), actions(cards.answer_button(found.run.run_id, found.step_id))]


def _section(
    title: str,
    items: Sequence[T],
    total: int,
    rows: int,
    row: Callable[[T], list[Block]],
    empty: str,
) -> list[Block]:
    """A titled section: its first ``rows`` items, then how many more of ``total`` there are."""
    blocks: list[Block] = [divider(), section(f"*{title}*")]
    if not items:
        return [*blocks, context(empty)]
    shown = items[:rows]
    for item in shown:
        blocks += row(item)
    if total > len(shown):
        blocks.append(context(f"… and {total - len(shown)} more"))
    return blocks


def _run_text(run: Run, extra: str = "") -> str:
    status = describe(run).status_text
    return f"*{escape(run.workflow_name)}* · run `{run.short_id}` · *{status}*{extra}"


def _draining_row(run: Run) -> list[Block]:
    deadline = run.stop.drain_deadline if run.stop else None
    text = _run_text(
        run, f"\nDraining since {when(run.stop.at if run.stop else None)}, deadline {when(deadline)}"
    )
    return [section(text), actions(button("Stop now", ids.RUN_STOP_NOW, run.run_id, "danger"))]


def _running_row(run: Run) -> list[Block]:
    toggle = (
        button("Resume", ids.RUN_RESUME, run.run_id, "primary")
        if run.status is RunStatus.PAUSED
        else button("Pause", ids.RUN_PAUSE, run.run_id)
    )
    text = _run_text(run, f"\nStarted by {who(run.started_by)} {when(run.started_at or run.created_at)}")
    return [
        section(text),
        actions(
            toggle,
            button("Stop gracefully", ids.RUN_STOP_GRACEFUL, run.run_id),
            button("Stop now", ids.RUN_STOP_NOW, run.run_id, "danger"),
        ),
    ]


def _failed_row(run: Run) -> list[Block]:
    failure = run.failure
    reason = f"\n`{failure.code.value}` {escape(failure.message)}" if failure else ""
    return [
        section(_run_text(run, reason)),
        actions(
            button("Replay", ids.RUN_REPLAY, run.run_id, "primary"),
            button("Details", ids.RUN_DETAILS, run.run_id),
        ),
    ]
