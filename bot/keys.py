"""Redis keys of the Slack side, under the engine's prefix so tests and tenants stay apart."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SlackKeys:
    prefix: str

    def outbox(self, key: str) -> str:
        """The ordered messages of one ordering key (a run, a user's home)."""
        return f"{self.prefix}slack:outbox:q:{key}"

    @property
    def outbox_due(self) -> str:
        """Ordering keys with messages to send, scored by when they may be tried next."""
        return f"{self.prefix}slack:outbox:due"

    @property
    def outbox_dead(self) -> str:
        return f"{self.prefix}slack:outbox:dead"

    def method_paused(self, method: str) -> str:
        return f"{self.prefix}slack:outbox:paused:{method}"

    def refs(self, key: str) -> str:
        """Channel and ts of messages posted for an ordering key (cards, the run's first message)."""
        return f"{self.prefix}slack:refs:{key}"

    def feed_cursor(self, run_id: str) -> str:
        """The id of the last event of a run (in its own stream) turned into Slack messages.

        Expires once the run has finished, a day after the engine removes the run (see ``bot.feed``).
        """
        return f"{self.prefix}slack:feed:cursor:{run_id}"

    @property
    def feed_since(self) -> str:
        """Where the feed ended when the bot first followed it: older events are not the bot's to tell."""
        return f"{self.prefix}slack:feed:since"

    def event_seen(self, event_id: str) -> str:
        """An Events API delivery handled already: Slack retries it with the same ``event_id``."""
        return f"{self.prefix}slack:event:{event_id}"

    @property
    def threads(self) -> str:
        """``channel:ts`` of a posted question: ``run_id:step_id``, so a thread reply answers it."""
        return f"{self.prefix}slack:threads"

    def group_members(self, group: str) -> str:
        """The user ids of a Slack user group, cached with a TTL (see ``bot.groups``)."""
        return f"{self.prefix}slack:group:{group}"

    @property
    def home_viewers(self) -> str:
        return f"{self.prefix}slack:home:viewers"

    @property
    def home_dirty(self) -> str:
        return f"{self.prefix}slack:home:dirty"
