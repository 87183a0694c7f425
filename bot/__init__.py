"""The Slack app (bolt, async): slash commands, approval cards, alerts and the Command Center."""
