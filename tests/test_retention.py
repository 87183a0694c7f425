"""Retention: a finished run past its retention leaves nothing in Redis; nothing else is touched.

Runs go through the real engine (and a real webhook delivery, a real bot feed, a real worker
process); the clock is travelled to make runs due. What a run left is read off Redis itself:
every key under the test's namespace and RQ's keys of its queue and of the run's jobs, with
every member, field and value that names the run.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient
from pydantic import ValidationError

from bot.feed import CURSOR_GRACE_SECONDS, FeedFollower
from bot.runtime import build_bot
from engine import analytics
from engine.api import Engine
from engine.catalog import Catalog
from engine.errors import NotFound
from engine.factory import build_engine
from engine.intake import GROUP, Intake
from engine.model import Actor, ActorKind, Run, RunStatus, StepStatus
from engine.settings import Settings
from engine.workflow import WorkflowSettings
from tests.conftest import REDIS_URL
from tests.engine_helpers import ALICE, BOB, Clock, action, approval, engine_for, finish_step, start_step
from tests.fake_slack import FakeSlack, slack_settings
from tests.test_worker_e2e import Harness
from tests.web_helpers import standard_headers, wait_for_runs

DAY = 86400.0
MONTH = 30 * DAY

GATE = {
    "id": "gate",
    "name": "Gate",
    "steps": [
        approval("approve", expires_in="90d"),
        {"id": "tell", "type": "notify", "needs": ["approve"], "notify": {"text": "done"}},
    ],
}
SHORT = {**GATE, "id": "short", "settings": {"retention": "7d"}}
PARALLEL = {
    "id": "par",
    "name": "Parallel",
    "steps": [action("a"), action("b"), action("c"), action("join", needs=["a", "b", "c"])],
}


# -- what Redis holds ------------------------------------------------------------------------------


def stored(connection: redis.Redis, namespace: str, *run_ids: str) -> set[str]:
    """Every key of the namespace, of its RQ queue and registries, and of these runs' RQ jobs."""
    patterns = [f"{namespace}:*", f"rq:*{namespace}*", *(f"rq:*{run_id}*" for run_id in run_ids)]
    return {as_text(key) for pattern in patterns for key in connection.scan_iter(pattern, count=1000)}


def as_text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def contents(connection: redis.Redis, key: str) -> list[str]:
    """Everything a key holds, as text: members, fields and values, stream entries."""
    kind = as_text(connection.type(key))
    raw: Any
    if kind == "string":
        raw = [connection.get(key)]
    elif kind == "hash":
        raw = [item for pair in connection.hgetall(key).items() for item in pair]
    elif kind == "list":
        raw = connection.lrange(key, 0, -1)
    elif kind == "set":
        raw = connection.smembers(key)
    elif kind == "zset":
        raw = connection.zrange(key, 0, -1)
    elif kind == "stream":
        entries: Any = connection.xrange(key)
        raw = [json.dumps({as_text(k): as_text(v) for k, v in fields.items()}) for _, fields in entries]
    else:
        raw = []
    return [as_text(value) for value in raw]


def footprint(connection: redis.Redis, namespace: str, run_id: str, linked: str = "") -> set[str]:
    """Each key named after the run, and each item of another key that names it.

    The global feed is left out: its entries go by age (see the feed test), not with their run;
    so are the keys of a ``linked`` run (a replay names the run it replays).
    """
    found: set[str] = set()
    for key in stored(connection, namespace, run_id) - {f"{namespace}:events"}:
        if linked and linked in key:
            continue
        if run_id in key:
            found.add(key)
        else:
            found.update(f"{key} ∋ {item}" for item in contents(connection, key) if run_id in item)
    return found


def shared(connection: redis.Redis, namespace: str, *runs: Run) -> set[str]:
    """Keys a run creates that are not its own: the global feed, its workflow's snapshot, the
    analytics counters of the hours it changed in, and the step-duration histogram (bounded by
    workflows, step types and buckets, never by runs)."""
    snapshots = {f"{namespace}:workflow:{run.workflow_digest}" for run in runs}
    histogram = {f"{namespace}:metrics:step_durations"} & stored(connection, namespace)
    return {f"{namespace}:events", *snapshots, *histogram, *counters(connection, namespace)}



def counters(connection: redis.Redis, namespace: str) -> set[str]:
    """The analytics counters of the hours runs changed in: shared by all runs, so kept when a run
    goes, and each expiring on its own (engine.analytics.KEEP_SECONDS after its last count)."""
    keys = {as_text(key) for key in connection.scan_iter(f"{namespace}:stats:hour:*", count=1000)}
    assert all(0 < connection.ttl(key) <= analytics.KEEP_SECONDS for key in keys)
    return keys


def job_keys(connection: redis.Redis, run_id: str) -> set[str]:
    return {as_text(key) for key in connection.scan_iter(f"rq:*{run_id}*", count=1000)}


# -- runs through the engine -----------------------------------------------------------------------


def test_a_run_with_a_human_task_is_removed_with_all_its_keys_once_due(
    redis_conn: redis.Redis, catalog: Catalog, namespace: str
) -> None:
    clock = Clock()
    engine = Engine(redis_conn, catalog, key_prefix=f"{namespace}:", queue_name=namespace, clock=clock)
    before = stored(redis_conn, namespace)
    run = engine.start("deploy-approval", {"service": "api"}, ALICE)  # concurrency 3: admission too
    run = finish_step(engine, run, "build")
    assert engine.pending_tasks(run.run_id)
    engine.complete_task(run.run_id, "approve", BOB, approved=True)
    run = finish_step(engine, engine.get_run(run.run_id), "deploy")
    assert run.status is RunStatus.COMPLETED
    left = footprint(redis_conn, namespace, run.run_id)
    # What it left: its document, events, indexes, its task's expiry timer and its RQ jobs.
    assert {f"{namespace}:run:{run.run_id}", f"{namespace}:runs:status:completed ∋ {run.run_id}"} <= left
    assert any("timers ∋" in item for item in left)
    assert {f"rq:job:{run.steps[s].job_id}" for s in ("build", "deploy")} <= left

    clock.advance(MONTH - 1)
    assert engine.purge_finished() == 0
    assert footprint(redis_conn, namespace, run.run_id) == left  # not due yet: untouched

    clock.advance(2)
    assert engine.purge_finished() == 1
    assert footprint(redis_conn, namespace, run.run_id) == set()
    assert stored(redis_conn, namespace, run.run_id) == before | shared(redis_conn, namespace, run)
    with pytest.raises(NotFound):
        engine.get_run(run.run_id)
    assert engine.list_runs().runs == [] and engine.purge_finished() == 0


def test_a_stopped_run_leaves_no_cancelled_job_behind(redis_conn: redis.Redis, namespace: str) -> None:
    clock = Clock()
    engine = engine_for(redis_conn, namespace, PARALLEL, clock=clock)
    run = engine.start("par", {}, ALICE)
    run = start_step(engine, run, "b")  # b executes; a and c wait on the queue
    run = engine.stop(run.run_id, ALICE)
    assert run.status is RunStatus.STOPPED
    assert {run.steps[s].status for s in "ac"} == {StepStatus.SKIPPED}
    jobs = job_keys(redis_conn, run.run_id)
    assert {f"rq:job:sb-{run.run_id}-{s}-a1-d1" for s in "abc"} <= jobs
    # Taken off the queue by the stop, their hashes no longer stay forever (no worker will touch them).
    assert not redis_conn.lrange(f"rq:queue:{namespace}", 0, -1)
    ttls = {key: redis_conn.ttl(key) for key in jobs}
    assert all(0 < ttl <= DAY for ttl in ttls.values()), ttls

    clock.advance(MONTH + 1)
    assert engine.purge_finished() == 1
    assert footprint(redis_conn, namespace, run.run_id) == set()
    assert job_keys(redis_conn, run.run_id) == set()


def test_replays_active_runs_and_recent_runs_are_kept_until_each_is_due(
    redis_conn: redis.Redis, namespace: str
) -> None:
    clock = Clock()
    engine = engine_for(redis_conn, namespace, GATE, clock=clock)
    waiting = engine.start("gate", {}, ALICE)  # waits for its approval all along: never due
    original = engine.start("gate", {}, ALICE)
    original = engine.complete_task(original.run_id, "approve", BOB, approved=True)
    assert original.status is RunStatus.COMPLETED
    clock.advance(10 * DAY)
    replay = engine.replay(original.run_id, ALICE)
    replay = engine.complete_task(replay.run_id, "approve", BOB, approved=True)
    assert replay.status is RunStatus.COMPLETED and engine.get_run(original.run_id).replays == [replay.run_id]
    before = {
        r: footprint(redis_conn, namespace, r, linked=original.run_id)
        for r in (waiting.run_id, replay.run_id)
    }
    kept = {r: (engine.get_run(r), engine.events(r)) for r in before}

    clock.advance(MONTH - 10 * DAY + 1)  # the original is due, its replay (finished 10 days later) is not
    assert engine.purge_finished() == 1
    assert footprint(redis_conn, namespace, original.run_id, linked=replay.run_id) == set()
    for run_id, items in before.items():
        assert footprint(redis_conn, namespace, run_id, linked=original.run_id) == items
        assert (engine.get_run(run_id), engine.events(run_id)) == kept[run_id]
    assert engine.get_run(replay.run_id).replay_of == original.run_id  # names a run that is gone

    clock.advance(10 * DAY)
    assert engine.purge_finished() == 1
    assert footprint(redis_conn, namespace, replay.run_id) == set()
    assert footprint(redis_conn, namespace, waiting.run_id) == before[waiting.run_id]
    assert [r.run_id for r in engine.list_runs().runs] == [waiting.run_id]


def test_a_workflow_may_keep_its_runs_for_less(redis_conn: redis.Redis, namespace: str) -> None:
    clock = Clock()
    engine = engine_for(redis_conn, namespace, GATE, SHORT, clock=clock)
    assert engine.retention_of("short") == 7 * DAY and engine.retention_of("gate") == MONTH
    assert engine.retention_of("removed-since") == MONTH
    # The default-retention run finished first: the pass looks past it to the shorter one's runs.
    runs = [engine.start(workflow, {}, ALICE) for workflow in ("gate", "short", "short", "short")]
    for run in runs:
        engine.complete_task(run.run_id, "approve", BOB, approved=True)
        clock.advance(1)
    long_kept = footprint(redis_conn, namespace, runs[0].run_id)

    clock.advance(7 * DAY)
    assert engine.purge_finished(limit=2) == 2  # a pass is bounded
    assert engine.purge_finished(limit=2) == 1
    for run in runs[1:]:
        assert footprint(redis_conn, namespace, run.run_id) == set()
    assert footprint(redis_conn, namespace, runs[0].run_id) == long_kept

    clock.advance(MONTH - 7 * DAY)
    assert engine.purge_finished() == 1
    assert footprint(redis_conn, namespace, runs[0].run_id) == set()


def test_retention_settings_take_durations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", REDIS_URL)
    monkeypatch.delenv("SWITCHBOARD_RETENTION", raising=False)
    assert Settings(_env_file=None).retention == MONTH
    for given, seconds in {"30d": MONTH, "12h": 12 * 3600.0, "90m": 5400.0, "3600": 3600.0}.items():
        monkeypatch.setenv("SWITCHBOARD_RETENTION", given)
        assert Settings(_env_file=None).retention == seconds
    assert build_engine(Settings(_env_file=None)).retention == 3600.0
    for wrong in ("soon", "0", "-1d"):
        monkeypatch.setenv("SWITCHBOARD_RETENTION", wrong)
        with pytest.raises(ValidationError, match="SWITCHBOARD_RETENTION"):
            Settings(_env_file=None)
    assert WorkflowSettings.model_validate({"retention": "7d"}).retention == 7 * DAY
    assert WorkflowSettings().retention is None
    with pytest.raises(ValidationError, match="retention"):
        WorkflowSettings.model_validate({"retention": "a week"})


def test_the_global_feed_is_trimmed_by_age(redis_conn: redis.Redis, namespace: str) -> None:
    engine = engine_for(redis_conn, namespace, GATE)
    old = engine.start("gate", {}, ALICE)
    feed = f"{namespace}:events"
    entries = redis_conn.xlen(feed)
    assert entries > 0
    engine.retention = 0.05
    deadline = time.monotonic() + 10
    while engine.trim_feed() == 0:  # on Redis's clock, 50 ms after the entries were written
        assert time.monotonic() < deadline, "feed never trimmed"
        time.sleep(0.01)
    assert redis_conn.xlen(feed) == 0
    engine.retention = MONTH
    engine.stop(old.run_id, ALICE)
    assert engine.trim_feed() == 0 and redis_conn.xlen(feed) > 0  # recent entries stay


# -- the edges' keys -------------------------------------------------------------------------------


async def test_a_run_started_by_a_webhook_takes_its_intake_keys_along(
    client: TestClient, web_engine: Engine, clock: Clock, redis_conn: redis.Redis, namespace: str
) -> None:
    before = stored(redis_conn, namespace)
    body = json.dumps({"service": "api"}).encode()
    response = await client.post(
        "/webhooks/releases", data=body, headers=standard_headers(body, at=clock.now)
    )
    assert response.status == 202, await response.text()
    run_id = (await response.json())["run_id"]
    await wait_for_runs(web_engine, 1)
    pointers = {
        f"{namespace}:{key}:releases:msg_1 ∋ {run_id}" for key in ("intake:delivery", "idempotency:delivery")
    }
    assert pointers <= footprint(redis_conn, namespace, run_id)
    run = web_engine.complete_task(run_id, "approve", BOB, approved=True)
    assert run.status is RunStatus.COMPLETED

    clock.advance(MONTH + 1)
    assert web_engine.purge_finished() == 1
    assert footprint(redis_conn, namespace, run_id) == set()
    assert stored(redis_conn, namespace, run_id) == before | shared(redis_conn, namespace, run)


def test_idle_intake_starters_holding_nothing_are_forgotten(redis_conn: redis.Redis, namespace: str) -> None:
    engine = engine_for(redis_conn, namespace)
    intake = Intake(engine)
    assert intake.drop_idle_consumers(idle_ms=0) == 0  # no stream yet
    intake.ensure_group()
    stream = engine.keys.intake
    redis_conn.xadd(stream, {"start": "{}"})
    redis_conn.xreadgroup(GROUP, "holding", {stream: ">"}, count=1)  # dies holding a request
    for name in ("gone-1", "gone-2"):
        redis_conn.xgroup_createconsumer(stream, GROUP, name)

    def idle() -> dict[str, int]:
        return {c["name"].decode(): c["idle"] for c in redis_conn.xinfo_consumers(stream, GROUP)}

    assert intake.drop_idle_consumers(idle_ms=3_600_000) == 0
    deadline = time.monotonic() + 10
    while min(idle().values()) < 1000:  # by Redis's clock
        assert time.monotonic() < deadline
        time.sleep(0.05)
    redis_conn.xgroup_createconsumer(stream, GROUP, "fresh")  # idle a second less than the others
    assert intake.drop_idle_consumers(idle_ms=1000) == 2
    assert set(idle()) == {"holding", "fresh"}


async def test_the_bots_cursor_of_a_run_expires_after_the_run_does(
    fake_slack: FakeSlack, slack_engine: Engine, redis_conn: redis.Redis
) -> None:
    bot = build_bot(slack_engine, slack_settings(fake_slack))
    await bot.open()
    try:
        follower = FeedFollower(bot, "web-1")
        await follower.ensure_group()
        cursor = bot.keys.feed_cursor

        async def follow() -> None:
            for entry in await follower.feed.read_feed(follower.group, follower.consumer):
                await follower.handle(entry)

        run = slack_engine.start("approve-deploy", {}, Actor(kind=ActorKind.CLI, id="alice"))
        await follow()
        assert redis_conn.ttl(cursor(run.run_id)) == -1  # a run under way may wait for weeks
        slack_engine.complete_task(run.run_id, "approve", BOB, approved=True)
        await follow()
        lifetime = int(MONTH + CURSOR_GRACE_SECONDS)
        assert lifetime - 60 < redis_conn.ttl(cursor(run.run_id)) <= lifetime

        slack_engine.replay(run.run_id, BOB)  # a finished run's later event keeps the expiry
        await follow()
        last: Any = redis_conn.xrevrange(slack_engine.keys.run_events(run.run_id), count=1)
        assert redis_conn.get(cursor(run.run_id)) == last[0][0]
        assert lifetime - 60 < redis_conn.ttl(cursor(run.run_id)) <= lifetime
    finally:
        await bot.close()


# -- in a worker -----------------------------------------------------------------------------------


def test_workers_remove_finished_runs_in_their_maintenance(
    tmp_path: Path, namespace: str, redis_conn: redis.Redis
) -> None:
    harness = Harness(tmp_path, namespace, redis_conn)
    harness.env |= {"SWITCHBOARD_RETENTION": "1s", "SWITCHBOARD_RETENTION_INTERVAL": "0.2"}
    try:
        harness.start_worker()
        run = harness.wait_until_finished(harness.start("chain").run_id)
        assert run.status is RunStatus.COMPLETED
        assert job_keys(redis_conn, run.run_id)
        deadline = time.monotonic() + 20
        while footprint(redis_conn, namespace, run.run_id) or redis_conn.xlen(f"{namespace}:events"):
            if time.monotonic() > deadline:
                pytest.fail(f"run {run.run_id} still stored: {footprint(redis_conn, namespace, run.run_id)}")
            time.sleep(0.1)
        assert job_keys(redis_conn, run.run_id) == set()
        with pytest.raises(NotFound):
            harness.engine.get_run(run.run_id)
    finally:
        harness.stop_workers()


def test_a_pass_does_not_touch_runs_under_way(redis_conn: redis.Redis, namespace: str) -> None:
    clock = Clock()
    engine = engine_for(redis_conn, namespace, GATE, PARALLEL, clock=clock)
    runs = [engine.start("gate", {}, ALICE), engine.start("par", {}, ALICE)]
    engine.pause(runs[1].run_id, ALICE)
    before = {run.run_id: footprint(redis_conn, namespace, run.run_id) for run in runs}
    clock.advance(timedelta(days=365).total_seconds())
    assert engine.purge_finished() == 0
    assert {run.run_id: footprint(redis_conn, namespace, run.run_id) for run in runs} == before
    assert engine.store.purge(runs[0].run_id) is False  # the store refuses too
