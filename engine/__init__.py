"""Switchboard's run engine: workflows, runs, steps, human tasks and their state machine.

The engine knows nothing of Slack or HTTP. Every entry point (Slack, REST, webhooks,
CLI) calls the same command API, :class:`engine.api.Engine`.
"""
