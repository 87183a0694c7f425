"""The web console: the operator's pages in a browser, an edge beside Slack, REST, webhooks and the CLI.

Server-rendered pages (Jinja) over the same command API and the same rules as every
other edge: a console session acts as the identity that signed in (an API token's,
or the Slack user's a one-time link was minted for), with that identity's roles
checked on the server exactly as for REST. State-changing forms carry a CSRF token.
Static assets are vendored in ``static/``: no CDN, no build step.

``routes`` is what :func:`webhooks.server.create_app` registers; :func:`mint_sign_in_link`
is what ``switchboard up`` calls to hand someone a way in (a one-time token minted by
:mod:`engine.sign_in`, where ``/run console`` mints its own without importing the console).
"""

from __future__ import annotations

from webhooks.console.routes import routes
from webhooks.console.sessions import SLACK_ROLES, local_operator, mint_sign_in_link

__all__ = ["SLACK_ROLES", "local_operator", "mint_sign_in_link", "routes"]
