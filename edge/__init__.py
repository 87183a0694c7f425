"""What every HTTP edge (REST API, webhooks, Slack) shares: reading untrusted requests safely."""
