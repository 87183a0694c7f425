"""Configuration of the web process, read once from the environment (and ``.env``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


class WebSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    sources_file: Path = Field(
        default=Path("sources.yaml"),
        alias="SWITCHBOARD_SOURCES",
        description="YAML file naming the webhook sources (see sources.example.yaml).",
    )
    api_tokens: SecretStr = Field(
        default=SecretStr(""),
        alias="SWITCHBOARD_API_TOKENS",
        description="Comma-separated 'name:role[+role]:token'; roles viewer, operator, approver, admin.",
    )
    body_limit: int = Field(
        default=MIB,
        ge=1,
        alias="SWITCHBOARD_WEBHOOK_BODY_LIMIT",
        description="Largest webhook body in bytes a source accepts unless it sets its own limit.",
    )
    timestamp_tolerance: float = Field(
        default=300.0,
        gt=0,
        alias="SWITCHBOARD_WEBHOOK_TOLERANCE",
        description="Seconds a signed timestamp may be off from now before a delivery is refused.",
    )
    public_url: str = Field(
        default="",
        alias="SWITCHBOARD_PUBLIC_URL",
        description="Base URL for links in responses (status_url); empty gives paths only.",
    )
    starts_after: float = Field(
        default=5.0,
        ge=0,
        alias="SWITCHBOARD_WEB_STARTS_AFTER",
        description=(
            "Seconds a webhook-accepted run may wait for a worker to start it before this web"
            " process starts it itself; 0 starts them here at once (no separate workers)."
        ),
    )
    threads: int = Field(
        default=16,
        ge=1,
        alias="SWITCHBOARD_WEB_THREADS",
        description="Threads that run synchronous engine calls for the event loop.",
    )


@lru_cache(maxsize=1)
def get_web_settings() -> WebSettings:
    return WebSettings()
