"""Configuration of the console, read once from the environment (and ``.env``).

How long a one-time sign-in link lasts is the engine's (:class:`engine.sign_in.SignInSettings`).
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    session_ttl: int = Field(
        default=12 * 3600,
        ge=60,
        alias="SWITCHBOARD_CONSOLE_SESSION_TTL",
        description="Seconds a console sign-in lasts; then the browser signs in again.",
    )


@lru_cache(maxsize=1)
def get_console_settings() -> ConsoleSettings:
    return ConsoleSettings()
