"""The aiohttp server: signed inbound webhooks, the REST API, health and metrics."""
