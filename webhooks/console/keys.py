"""Redis keys of the console, under the engine's prefix so tests and tenants stay apart."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConsoleKeys:
    prefix: str

    def session(self, digest: str) -> str:
        """A signed-in browser, by the SHA-256 of its cookie (the cookie itself is never stored)."""
        return f"{self.prefix}console:session:{digest}"

    def flash(self, digest: str) -> str:
        """The one-line notice a session's next page shows ("Approved …"), read once."""
        return f"{self.prefix}console:flash:{digest}"
