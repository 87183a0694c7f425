"""Configuration, read once from the environment (and a ``.env`` file) by pydantic-settings."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from engine.workflow import Duration


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    redis_url: str | None = Field(
        default=None,
        description=(
            "Redis to use (redis://, rediss://, unix://; client options in the query string). With"
            " sentinels, only its credentials, database and options count. Without either, an"
            " embedded Redis runs under data_dir."
        ),
    )
    redis_sentinels: Annotated[tuple[tuple[str, int], ...], NoDecode] = Field(
        default=(),
        alias="SWITCHBOARD_REDIS_SENTINELS",
        description="Redis Sentinel addresses, 'host:port,host:port': the master is found through them.",
    )
    redis_sentinel_master: str = Field(
        default="mymaster",
        alias="SWITCHBOARD_REDIS_SENTINEL_MASTER",
        description="The name the sentinels monitor the master under.",
    )
    redis_sentinel_password: SecretStr | None = Field(
        default=None,
        alias="SWITCHBOARD_REDIS_SENTINEL_PASSWORD",
        description="The sentinels' own password (their requirepass), if they have one.",
    )
    data_dir: Path = Field(default=Path(".switchboard"), alias="SWITCHBOARD_DATA_DIR")
    workflows: Path = Field(default=Path("workflows"), alias="SWITCHBOARD_WORKFLOWS")
    key_prefix: str = Field(default="sb:", alias="SWITCHBOARD_KEY_PREFIX")
    queue: str = Field(default="switchboard", alias="SWITCHBOARD_QUEUE")
    log_level: str = Field(default="INFO", alias="SWITCHBOARD_LOG_LEVEL")
    log_format: str = Field(default="json", alias="SWITCHBOARD_LOG_FORMAT")
    retention: Duration = Field(
        default=30 * 86400.0,
        alias="SWITCHBOARD_RETENTION",
        description="How long a finished run is kept (30d, 12h, 90m); a workflow's retention overrides it.",
    )

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _parse_sentinels(cls, value: Any) -> Any:
        """``"h1:26379, [::1]:26380"`` -> ``(("h1", 26379), ("::1", 26380))``; tuples pass as they are."""
        if not isinstance(value, str):
            return value
        addresses = []
        for item in filter(None, (part.strip() for part in value.split(","))):
            host, sep, port = item.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"expected host:port, got {item!r}")
            addresses.append((host.strip("[]"), int(port)))
        return tuple(addresses)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
