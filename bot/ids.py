"""Action and callback ids: shared by the blocks that carry them and the listeners that handle them."""

from __future__ import annotations

TASK_APPROVE = "task_approve"
TASK_REJECT = "task_reject"
TASK_EDIT = "task_edit"
TASK_CHANGES = "task_request_changes"
QUESTION_ANSWER = "question_answer"
RUN_PAUSE = "run_pause"
RUN_RESUME = "run_resume"
RUN_STOP_GRACEFUL = "run_stop_graceful"
RUN_STOP_NOW = "run_stop_now"
RUN_REPLAY = "run_replay"
RUN_RECOVER = "run_recover"  # Retry from failed step, on a failure alert
RUN_DETAILS = "run_details"

REJECT_MODAL = "task_reject_modal"
EDIT_MODAL = "task_edit_modal"
CHANGES_MODAL = "task_changes_modal"
ANSWER_MODAL = "question_answer_modal"
DETAILS_MODAL = "run_details_modal"

REASON_BLOCK = "reason"
REASON_INPUT = "reason_input"
FIELD_BLOCK_PREFIX = "field:"
FIELD_INPUT = "value"


def task_value(run_id: str, task_id: str) -> str:
    return f"{run_id}:{task_id}"


def parse_task_value(value: str) -> tuple[str, str]:
    """The (run id, task id) a task button carries; step ids cannot contain ':'."""
    run_id, _, task_id = value.partition(":")
    return run_id, task_id
