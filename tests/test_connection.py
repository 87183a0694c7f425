"""Both Redis clients come from the same settings: every option reaches the asyncio client too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.sentinel import SentinelConnectionPool

from engine.connection import RedisTarget, async_client, connect
from engine.settings import Settings
from tests.redis_servers import RedisServer

OPTIONS = {
    "ssl_cert_reqs": "none",
    "ssl_ca_certs": "/etc/ssl/ca.pem",
    "health_check_interval": 7,
    "protocol": 3,
    "db": 3,
    "username": "sb",
    "password": "s3cret",
    "client_name": "switchboard-web",
}
TLS_URL = (
    "rediss://sb:s3cret@redis.example:6380/3?ssl_cert_reqs=none&ssl_ca_certs=/etc/ssl/ca.pem"
    "&health_check_interval=7&protocol=3&client_name=switchboard-web"
)


def settings(**env: Any) -> Settings:
    return Settings(_env_file=None, **env)


def options_of(pool: Any) -> dict[str, Any]:
    return {key: pool.connection_kwargs.get(key) for key in OPTIONS}


def test_tls_url_options_reach_both_clients() -> None:
    sync = connect(settings(REDIS_URL=TLS_URL))
    twin = async_client(sync)
    assert options_of(sync.connection_pool) == OPTIONS
    assert options_of(twin.connection_pool) == OPTIONS
    assert issubclass(sync.connection_pool.connection_class, redis.SSLConnection)
    assert issubclass(twin.connection_pool.connection_class, aioredis.SSLConnection)
    for pool in (sync.connection_pool, twin.connection_pool):
        assert (pool.connection_kwargs["host"], pool.connection_kwargs["port"]) == ("redis.example", 6380)


def test_a_client_made_elsewhere_keeps_its_options_too() -> None:
    sync = redis.Redis.from_url(TLS_URL)
    twin = async_client(sync)
    assert options_of(twin.connection_pool) == OPTIONS
    assert issubclass(twin.connection_pool.connection_class, aioredis.SSLConnection)


def test_sentinel_settings_give_both_clients_the_master_through_the_sentinels() -> None:
    config = settings(
        SWITCHBOARD_REDIS_SENTINELS="10.0.0.1:26379, [::1]:26380",
        SWITCHBOARD_REDIS_SENTINEL_MASTER="main",
        SWITCHBOARD_REDIS_SENTINEL_PASSWORD="sentinel-secret",
        REDIS_URL=TLS_URL,  # with sentinels: the master's credentials, database, TLS and options
    )
    assert config.redis_sentinels == (("10.0.0.1", 26379), ("::1", 26380))
    sync = connect(config)
    twin = async_client(sync)
    assert isinstance(sync.connection_pool, SentinelConnectionPool)
    assert isinstance(twin.connection_pool, AsyncSentinelPool)
    for pool in (sync.connection_pool, twin.connection_pool):
        assert pool.service_name == "main"
        assert options_of(pool) == OPTIONS
        assert "host" not in pool.connection_kwargs  # the sentinels say where the master is
        assert "SSL" in pool.connection_class.__name__
        sentinels = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
        assert [(s["host"], s["port"]) for s in sentinels] == [("10.0.0.1", 26379), ("::1", 26380)]
        assert {s["password"] for s in sentinels} == {"sentinel-secret"}


@pytest.mark.parametrize("bad", ["sentinel-1", "host:port", "host:0", ":26379"])
def test_a_malformed_sentinel_list_is_refused_naming_the_entry(bad: str) -> None:
    with pytest.raises(ValidationError, match=f"expected host:port, got '{bad}'"):
        settings(SWITCHBOARD_REDIS_SENTINELS=f"good:26379,{bad}")


def test_logs_never_show_a_password() -> None:
    assert RedisTarget(url=TLS_URL).describe() == TLS_URL.replace("s3cret", "***")
    assert "s3cret" not in RedisTarget(sentinels=(("h", 1),), sentinel_password="s3cret").describe()


async def test_the_asyncio_client_talks_to_the_same_server_with_the_same_options(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    server.client().config_set("requirepass", "s3cret")
    try:
        url = f"redis://:s3cret@127.0.0.1:{server.port}/5?protocol=3&client_name=sb-test&health_check_interval=2"
        sync = connect(settings(REDIS_URL=url))
        twin = async_client(sync)
        try:
            sync.set("written-by", "sync")
            assert await twin.get("written-by") in (b"sync", "sync")
            for info in (sync.client_info(), await twin.client_info()):
                assert (int(info["db"]), info["name"], int(info["resp"])) == (5, "sb-test", 3)
        finally:
            await twin.aclose()
            sync.close()
    finally:
        server.kill()


async def test_the_asyncio_client_sends_what_the_sync_client_sends(
    redis_conn: redis.Redis, namespace: str
) -> None:
    # Its commands are packed by hiredis, as the sync client's are: the same bytes reach Redis,
    # many arguments in one command (a batch of accepted webhooks) included.
    twin = async_client(redis_conn)
    try:
        values: list[Any] = ["plain", "é ∑ 🚀", b"\x00\xffbytes", 42, -7, 1.5, "x" * 70_000]
        keys = [f"{namespace}:packed:{i}" for i in range(len(values))]
        script = twin.register_script(
            "for i, k in ipairs(KEYS) do redis.call('SET', k, ARGV[i]) end return #KEYS"
        )
        assert await script(keys=keys, args=values) == len(values)
        for key, value in zip(keys, values, strict=True):
            assert redis_conn.get(key) == (value if isinstance(value, bytes) else str(value).encode())
            assert await twin.get(key) == redis_conn.get(key)
        with pytest.raises(redis.DataError):
            await twin.set(keys[0], None)  # type: ignore[arg-type]
    finally:
        await twin.aclose()
