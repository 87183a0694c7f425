"""The Redis connection: one description of where Redis is, from which every client is built.

Settings name Redis in one of three ways:

- ``REDIS_URL``: one server (``redis://``, ``rediss://`` for TLS, ``unix://``), with client
  options in the query string (``?ssl_cert_reqs=none&health_check_interval=10&protocol=3``).
- ``SWITCHBOARD_REDIS_SENTINELS``: the master that the sentinels know as
  ``SWITCHBOARD_REDIS_SENTINEL_MASTER``. Each new connection asks the sentinels where the
  master is, so after a failover clients reconnect to the promoted replica. ``REDIS_URL``,
  if set, then only gives the master's credentials, database, TLS and options.
- neither: the embedded server under the data directory (:mod:`engine.embedded`).

The engine, RQ and the workers use the synchronous client; the web server and the Slack
bot read the same Redis from their event loops. Both clients are built from one
:class:`RedisTarget` by redis-py's own constructors for the same URL or the same Sentinel
arguments, so they cannot disagree about a server, a database or an option.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from weakref import WeakKeyDictionary

import hiredis
import redis
import redis.asyncio as aioredis
import redis.asyncio.connection
import redis.asyncio.sentinel
import redis.connection
import redis.sentinel
from redis.driver_info import DriverInfo
from redis.utils import SENTINEL

from engine.settings import Settings

log = logging.getLogger(__name__)

# redis-py looks its own version up in the package metadata for every new connection
# (milliseconds in a freshly forked work horse, which opens one per step); say it once.
CLIENT_DEFAULTS: dict[str, Any] = {"driver_info": DriverInfo(lib_version=redis.__version__)}

# Parts of a parsed URL that say where the server is: with sentinels, the sentinels say it.
_ADDRESS = ("host", "port", "path", "connection_class")


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is and how to talk to it: the one source of both clients' settings."""

    url: str = ""  # the server; with sentinels, only the carrier of the master's options
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = "mymaster"
    sentinel_password: str | None = None

    @classmethod
    def of(cls, settings: Settings) -> RedisTarget:
        password = settings.redis_sentinel_password
        return cls(
            url=settings.redis_url or "",
            sentinels=settings.redis_sentinels,
            master=settings.redis_sentinel_master,
            sentinel_password=password.get_secret_value() if password else None,
        )

    def client(self) -> redis.Redis:
        if not self.sentinels:
            return redis.Redis.from_url(self.url, **CLIENT_DEFAULTS)
        options = self._master_options(redis.connection.parse_url)
        sentinel = redis.sentinel.Sentinel(
            self.sentinels, sentinel_kwargs=self._sentinel_options(options), **options
        )
        connection_class = SentinelSSLConnection if options.get("ssl") else SentinelConnection
        return sentinel.master_for(self.master, connection_class=connection_class)

    def async_client(self, **overrides: Any) -> aioredis.Redis:
        if not self.sentinels:
            return aioredis.Redis.from_url(self.url, **{**CLIENT_DEFAULTS, **overrides})
        options = self._master_options(redis.asyncio.connection.parse_url)
        sentinel = redis.asyncio.sentinel.Sentinel(
            self.sentinels, sentinel_kwargs=self._sentinel_options(options), **options
        )
        return sentinel.master_for(self.master, **overrides)

    def describe(self) -> str:
        """For logs and banners: the address, never a password."""
        if self.sentinels:
            where = ",".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"sentinel master {self.master!r} via {where}"
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        port = f":{parts.port}" if parts.port else ""
        netloc = f"{parts.username or ''}:***@{parts.hostname or ''}{port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def _master_options(self, parse_url: Any) -> dict[str, Any]:
        """The URL's credentials, database and options, without its address (the sentinels give that)."""
        parsed: dict[str, Any] = dict(parse_url(self.url)) if self.url else {}
        options = {key: value for key, value in parsed.items() if key not in _ADDRESS}
        if self.url.startswith("rediss://"):
            options["ssl"] = True  # the Sentinel pool picks its TLS connection class from this
        return {**CLIENT_DEFAULTS, **options}

    def _sentinel_options(self, master_options: dict[str, Any]) -> dict[str, Any]:
        # What redis-py does without sentinel_kwargs (the master's socket timeouts), plus a password.
        options = {key: value for key, value in master_options.items() if key.startswith("socket_")}
        if self.sentinel_password is not None:
            options["password"] = self.sentinel_password
        return options


class SentinelConnection(redis.sentinel.SentinelManagedConnection):
    """redis-py's Sentinel connection, closed when a read is cut short, as every other connection is.

    Its ``read_response`` alone defaults to keeping the connection (redis-py PR #4292):
    a worker's SIGTERM landing in a blocking dequeue then put the connection back in the
    pool with the dequeue's reply still owed, and the worker's last command on it (RQ
    registering its death) waited for that reply, so a Sentinel worker never stopped.
    """

    def read_response(
        self,
        disable_decoding: bool = False,
        *,
        timeout: Any = SENTINEL,
        disconnect_on_error: bool | None = True,
        push_request: bool | None = False,
    ) -> Any:
        return super().read_response(
            disable_decoding,
            timeout=timeout,
            disconnect_on_error=disconnect_on_error,
            push_request=push_request,
        )


class SentinelSSLConnection(SentinelConnection, redis.SSLConnection):
    pass


def resolve(settings: Settings) -> Settings:
    """``settings`` naming a Redis that other processes can reach too.

    Without ``REDIS_URL`` or sentinels this starts (or joins) the embedded server and
    counts this process as one of its users until it exits; the settings returned carry
    its socket's URL, for child processes such as ``switchboard up``'s workers.
    """
    if settings.redis_url or settings.redis_sentinels:
        return settings
    from engine.embedded import attach  # only the embedded default needs it

    return settings.model_copy(update={"redis_url": attach(settings.data_dir)})


_targets: WeakKeyDictionary[redis.Redis, RedisTarget] = WeakKeyDictionary()  # clients made by connect()


def connect(settings: Settings) -> redis.Redis:
    """The synchronous client for ``settings`` (the engine's, RQ's and the workers')."""
    target = RedisTarget.of(resolve(settings))
    client = target.client()
    _targets[client] = target
    log.debug("redis client", extra={"redis": target.describe()})
    return client


def async_client(client: redis.Redis, **overrides: Any) -> aioredis.Redis:
    """An asyncio client for the Redis that ``client`` talks to, with the same options (but ``overrides``).

    The engine is synchronous; the web server and the Slack bot also read Redis from
    their event loops (streams, the outbox) and must reach exactly the same server. A
    client from :func:`connect` has its twin built from the same target (URL or
    sentinels). A client made elsewhere (tests, code embedding the engine) gets one from
    its pool's options, named as :class:`redis.asyncio.Redis` takes them.
    """
    target = _targets.get(client)
    if target is not None:
        return _packing_in_c(target.async_client(**overrides))
    pool = client.connection_pool
    if isinstance(pool, redis.sentinel.SentinelConnectionPool):
        raise TypeError("a Sentinel client's asyncio twin needs its settings: build it with connect()")
    return _packing_in_c(aioredis.Redis(**{**_public_options(pool), **overrides}))


class _HiredisPacking:
    """Commands packed by hiredis (C), as redis-py's synchronous connections pack them.

    redis-py's asyncio connections pack in Python, joining the command's bytes anew for
    each argument: a web process accepting a batch of webhook deliveries (four arguments
    each, one command) spent more CPU packing it than on anything else of the batch.
    """

    _packer = redis.connection.HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str) and " " not in args[0]:
            try:
                return [hiredis.pack_command(args)]
            except TypeError:
                pass
        # A command name of several words, bytearray or memoryview arguments, or redis-py's DataError.
        return self._packer.pack(*args)


def _packing_in_c(client: aioredis.Redis) -> aioredis.Redis:
    """``client``, its connections packing commands with hiredis (a dependency: ``redis[hiredis]``)."""
    pool = client.connection_pool
    if not issubclass(pool.connection_class, _HiredisPacking):
        base = pool.connection_class
        pool.connection_class = type(f"HiredisPacking{base.__name__}", (_HiredisPacking, base), {})
    return client


def _public_options(pool: redis.ConnectionPool) -> dict[str, Any]:
    kwargs = pool.connection_kwargs
    accepted = inspect.signature(aioredis.Redis.__init__).parameters
    # Internal values (redis-py's own handlers, "unset" markers) and the sync retry policy stay behind.
    options = {
        key: value
        for key, value in kwargs.items()
        if key in accepted and key != "retry" and type(value) is not object
    }
    if "path" in kwargs:
        options["unix_socket_path"] = kwargs["path"]
    if issubclass(pool.connection_class, redis.SSLConnection):
        options["ssl"] = True
    return {**CLIENT_DEFAULTS, **options}
