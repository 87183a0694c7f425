"""Many processes act on one run at once: every change is atomic, nothing is lost."""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from engine.errors import AlreadyDecided, CommandRefused
from engine.model import Actor, ActorKind, RunStatus, StepStatus
from tests.conftest import REDIS_URL
from tests.engine_helpers import ALICE, approval, engine_for, start_step

GATE = {
    "id": "gate",
    "name": "Gate",
    "steps": [approval("ok"), {"id": "done", "type": "notify", "needs": ["ok"], "notify": {"text": "ok"}}],
}
PAR = {
    "id": "par",
    "name": "Par",
    "steps": [{"id": f"s{i}", "type": "action", "action": "worker.actions:echo"} for i in range(6)],
}


def _complete_in_process(namespace: str, run_id: str, index: int, barrier: Any, results: Any) -> None:
    engine = engine_for(redis.Redis.from_url(REDIS_URL), namespace, GATE)
    actor = Actor(kind=ActorKind.SLACK, id=f"U{index:03d}", name=f"user{index}")
    barrier.wait()
    try:
        engine.complete_task(run_id, "ok", actor, approved=index % 2 == 0)
        results.put(("won", actor.display))
    except AlreadyDecided as lost:
        results.put(("lost", lost.decided_by))


def test_fifty_concurrent_completions_have_exactly_one_winner(
    redis_conn: redis.Redis, namespace: str
) -> None:
    engine = engine_for(redis_conn, namespace, GATE)
    run = engine.start("gate", {}, ALICE)
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(50)
    results = context.Queue()
    workers = [
        context.Process(target=_complete_in_process, args=(namespace, run.run_id, i, barrier, results))
        for i in range(50)
    ]
    for process in workers:
        process.start()
    outcomes = [results.get(timeout=60) for _ in workers]
    for process in workers:
        process.join(timeout=10)
    winners = [who for kind, who in outcomes if kind == "won"]
    assert len(winners) == 1
    # Every loser is told who decided: the one winner.
    assert [who for kind, who in outcomes if kind == "lost"] == winners * 49
    run = engine.get_run(run.run_id)
    task = run.steps["ok"].task
    assert task is not None and task.decided_by is not None and task.decided_by.display == winners[0]
    decisions = [e for e in engine.events(run.run_id) if e.type == "task_completed"]
    assert len(decisions) == 1 and decisions[0].actor.display == winners[0]
    assert run.status is RunStatus.COMPLETED


def test_concurrent_reports_and_commands_lose_nothing(redis_conn: redis.Redis, namespace: str) -> None:
    """Workers report six parallel steps while operators pause and resume: every report lands."""
    engine = engine_for(redis_conn, namespace, PAR)
    run = engine.start("par", {}, ALICE)
    for i in range(6):
        run = start_step(engine, run, f"s{i}")
    start = threading.Barrier(8)

    def report(step_id: str) -> None:
        start.wait()
        engine.step_finished(run.run_id, step_id, 1, result={"step": step_id})

    def toggle(command: str) -> None:
        start.wait()
        # Refused because of the state the other commands left: fine, nothing changed.
        with contextlib.suppress(CommandRefused):
            getattr(engine, command)(run.run_id, ALICE)

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(report, f"s{i}") for i in range(6)]
        futures += [pool.submit(toggle, "pause"), pool.submit(toggle, "resume")]
        for future in futures:
            future.result(timeout=30)
    run = engine.get_run(run.run_id)
    assert all(st.status is StepStatus.SUCCEEDED for st in run.steps.values())
    assert {sid: st.result for sid, st in run.steps.items()} == {f"s{i}": {"step": f"s{i}"} for i in range(6)}
    events = engine.events(run.run_id)
    assert len([e for e in events if e.type == "step_completed"]) == 6
    # A paused run cannot complete until resumed; otherwise it completed on the last report.
    assert run.status in (RunStatus.COMPLETED, RunStatus.PAUSED)
    if run.status is RunStatus.PAUSED:
        assert engine.resume(run.run_id, ALICE).status is RunStatus.COMPLETED
