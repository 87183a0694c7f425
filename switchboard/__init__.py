"""The composition root: wires the engine, worker, web server and Slack bot into processes."""
