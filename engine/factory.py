"""Build an :class:`~engine.api.Engine` from settings: the one place processes wire it up."""

from __future__ import annotations

import logging

from engine.api import Engine
from engine.catalog import load_folder
from engine.connection import connect
from engine.settings import Settings, get_settings

log = logging.getLogger(__name__)


def build_engine(settings: Settings | None = None) -> Engine:
    settings = settings or get_settings()
    catalog = load_folder(settings.workflows)
    for error in catalog.errors:
        log.error("workflow file rejected", extra={"error": str(error)})
    return Engine(
        connect(settings),
        catalog,
        key_prefix=settings.key_prefix,
        queue_name=settings.queue,
        retention=settings.retention,
    )
