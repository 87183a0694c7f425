"""Fixtures of the web tests; test modules load them with ``pytest_plugins = ("tests.web_fixtures",)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient

from engine.api import Engine
from tests.engine_helpers import Clock, engine_for
from tests.web_helpers import APPROVAL_WORKFLOW, ENVIRONMENT, WAITING_WORKFLOW, web_settings
from webhooks.server import create_app
from webhooks.settings import WebSettings


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def web_engine(redis_conn: redis.Redis, namespace: str, clock: Clock) -> Engine:
    return engine_for(redis_conn, namespace, APPROVAL_WORKFLOW, WAITING_WORKFLOW, clock=clock)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> WebSettings:
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TEST_SECRET_NOBODY_SET", raising=False)
    return web_settings(tmp_path)


@pytest.fixture
async def client(aiohttp_client: Any, web_engine: Engine, settings: WebSettings) -> TestClient:
    return await aiohttp_client(create_app(web_engine, settings))
