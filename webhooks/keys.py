"""Redis keys of the web process, under the engine's prefix so tests and tenants stay apart."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WebKeys:
    prefix: str

    @property
    def deliveries(self) -> str:
        """Hash: ``source|outcome`` -> webhook deliveries counted, over every web process (``/metrics``)."""
        return f"{self.prefix}web:deliveries"
