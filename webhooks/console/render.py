"""Pages from Jinja templates: one environment (autoescaping HTML), the filters pages use, headers.

Every page is sent with headers that keep it in its place: no caching (it shows live
state and a CSRF token), no framing, a Content-Security-Policy that allows only this
server's own scripts and styles (no inline script, no CDN), and no Referer leaving the
site (a sign-in link's token must not travel in one).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from webhooks.console import present

NO_VALUE = "\u2013"  # an en dash, shown where there is nothing to show
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
}


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """ "3 min ago", "in 2 h": how far a moment is from now, in the largest unit that fits."""
    if moment is None:
        return "never"
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    text = span(abs(seconds))
    if text == "0 s":
        return "just now"
    return f"{text} ago" if seconds >= 0 else f"in {text}"


def span(seconds: float | None) -> str:
    """A duration as people read it: 45 s, 3 min 20 s, 2 h 5 min, 3 d 4 h."""
    if seconds is None:
        return NO_VALUE
    whole = int(seconds)
    if whole < 60:
        if whole or seconds == 0:
            return f"{whole} s"
        return f"{seconds:.1f} s" if seconds >= 0.05 else "under 0.1 s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs and minutes < 10 else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def percent(rate: float | None) -> str:
    """75%, 87.5%: a share as people read it (whole when it is whole)."""
    if rate is None:
        return NO_VALUE
    share = rate * 100
    return f"{share:.0f}%" if abs(share - round(share)) < 0.05 else f"{share:.1f}%"


def stamp(moment: datetime | None) -> str:
    """A moment in UTC, to the second, as operators compare it with logs."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else NO_VALUE


def iso(moment: datetime | None) -> str:
    return moment.astimezone(UTC).isoformat() if moment else ""


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


def field_text(value: Any) -> str:
    """A task field's value as its form input shows it (strings as they are, the rest as JSON)."""
    return value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)


ENVIRONMENT = Environment(
    loader=PackageLoader("webhooks.console", "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENVIRONMENT.filters.update(
    ago=ago,
    span=span,
    stamp=stamp,
    iso=iso,
    pretty_json=pretty_json,
    field_text=field_text,
    percent=percent,
)
ENVIRONMENT.globals.update(
    run_badge=present.run_badge,
    outcome_badge=present.outcome_badge,
    step_badge=present.step_badge,
    question_badge=present.question_badge,
    controls=present.controls,
    rate_tone=present.rate_tone,
)


def render(template: str, status: int = 200, **values: Any) -> web.Response:
    html = ENVIRONMENT.get_template(template).render(**values)
    return web.Response(
        text=html, status=status, content_type="text/html", charset="utf-8", headers=SECURITY_HEADERS
    )
