"""Slack configuration, read once from the environment by pydantic-settings."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SlackSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    bot_token: str | None = Field(default=None, alias="SLACK_BOT_TOKEN")
    signing_secret: str | None = Field(default=None, alias="SLACK_SIGNING_SECRET")
    app_token: str | None = Field(
        default=None,
        alias="SLACK_APP_TOKEN",
        description="xapp- token: connect by Socket Mode instead of HTTP",
    )
    api_url: str = Field(
        default="https://slack.com/api/",
        alias="SLACK_API_URL",
        description="Web API base; tests point it at a local fake",
    )
    default_channel: str | None = Field(
        default=None,
        alias="SLACK_DEFAULT_CHANNEL",
        description="Where cards and alerts go for workflows without settings.slack_channel",
    )
    command: str = Field(default="/run", alias="SLACK_COMMAND")
    consumer_group: str = Field(default="slack-bot", alias="SLACK_CONSUMER_GROUP")
    home_active_seconds: float = Field(
        default=900,
        alias="SLACK_HOME_ACTIVE_SECONDS",
        description="A user who opened App Home this recently gets live refreshes",
    )
    engine_threads: int = Field(
        default=2,
        ge=1,
        alias="SLACK_ENGINE_THREADS",
        description="Threads for engine calls; each competes with the event loop (and acks) for the GIL",
    )
    outbox_workers: int = Field(default=4, ge=1, alias="SLACK_OUTBOX_WORKERS")
    outbox_give_up_seconds: float = Field(
        default=6 * 3600,
        alias="SLACK_OUTBOX_GIVE_UP_SECONDS",
        description="A message Slack keeps refusing with retryable errors this long is dead-lettered",
    )
    outbox_max_backoff: float = Field(default=60, alias="SLACK_OUTBOX_MAX_BACKOFF")

    @property
    def http_enabled(self) -> bool:
        return bool(self.bot_token and self.signing_secret)


@lru_cache(maxsize=1)
def get_slack_settings() -> SlackSettings:
    return SlackSettings()
