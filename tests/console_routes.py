"""The web console's routes, for the fuzz tests' list of every route the app serves."""

from __future__ import annotations

CONSOLE_ENTRY_POINTS = [
    ("GET", "/"),
    ("GET", "/runs"),
    ("GET", "/runs/{run_id}"),
    ("GET", "/runs/{run_id}/stream"),
    ("POST", "/runs/{run_id}/control"),
    ("POST", "/runs/{run_id}/replay"),
    ("POST", "/runs/{run_id}/recover"),
    ("GET", "/runs/{run_id}/tasks/{task_id}"),
    ("POST", "/runs/{run_id}/tasks/{task_id}"),
    ("GET", "/runs/{run_id}/questions/{step_id}"),
    ("POST", "/runs/{run_id}/questions/{step_id}"),
    ("GET", "/approvals"),
    ("GET", "/logs"),
    ("GET", "/analytics"),
    ("GET", "/sign-in"),
    ("POST", "/sign-in"),
    ("GET", "/sign-in/{token}"),
    ("POST", "/sign-in/{token}"),
    ("POST", "/sign-out"),
    ("GET", "/static/{name}"),
]
