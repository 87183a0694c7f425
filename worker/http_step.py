"""``http`` steps: one request; the response becomes the step result.

Failures carry ``HTTP_REQUEST_FAILED``, the status the provider returned (if any), and
whether a retry could help: connection errors, timeouts, 429 and 5xx can; other 4xx
responses say the request itself is wrong, so they cannot.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.request
from email.message import Message
from typing import Any
from urllib.parse import urlsplit

from engine.model import FailureCode, StepError
from worker.failure import StepFailure

DEFAULT_TIMEOUT = 30.0
MAX_BODY_BYTES = 64 * 1024  # the result lives in the run document: keep it small
KEPT_HEADERS = ("content-type", "content-length", "location", "retry-after", "etag")
DEFAULT_EXPECTED = (200, 201, 202, 204)


def perform_request(spec: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    """Send the request described by a rendered ``HttpSpec`` dump; raise StepFailure on failure."""
    method = str(spec.get("method") or "GET").upper()
    url = str(spec.get("url") or "")
    expected = [int(s) for s in spec.get("expect_status") or DEFAULT_EXPECTED]
    if urlsplit(url).scheme not in ("http", "https"):
        raise StepFailure(
            _failed(f"{method} {url!r}: only http and https URLs are allowed.", retryable=False)
        )
    headers = {str(k): str(v) for k, v in (spec.get("headers") or {}).items()}
    body = spec.get("json")
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout or DEFAULT_TIMEOUT) as response:
            result = _result(response.status, response.headers, response.read(MAX_BODY_BYTES + 1))
    except urllib.error.HTTPError as exc:
        # 4xx and 5xx arrive as exceptions, but they are responses like any other.
        result = _result(exc.code, exc.headers, exc.read(MAX_BODY_BYTES + 1))
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, socket.timeout | TimeoutError):
            reason = f"no response within {timeout or DEFAULT_TIMEOUT:g}s"
        raise StepFailure(_failed(f"{method} {url} failed: {reason}", retryable=True)) from exc
    status = result["status"]
    if status not in expected:
        snippet = result["body"] if isinstance(result["body"], str) else json.dumps(result["body"])
        raise StepFailure(
            _failed(
                f"{method} {url} returned {status}, expected {', '.join(map(str, expected))}:"
                f" {snippet[:200]}",
                retryable=status == 429 or status >= 500,
                provider_status=status,
            )
        )
    return result


def _result(status: int, headers: Message, raw: bytes) -> dict[str, Any]:
    truncated = len(raw) > MAX_BODY_BYTES
    raw = raw[:MAX_BODY_BYTES]
    try:
        text = raw.decode(headers.get_content_charset() or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        text = raw.decode("utf-8", errors="replace")
    body: Any = text
    if not truncated and "json" in (headers.get("content-type") or ""):
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = text  # labelled JSON but is not: keep what the server said
    kept = {name: headers[name] for name in KEPT_HEADERS if headers.get(name) is not None}
    return {"status": status, "headers": kept, "body": body, "truncated": truncated}


def _failed(message: str, retryable: bool, provider_status: int | None = None) -> StepError:
    return StepError(
        code=FailureCode.HTTP_REQUEST_FAILED,
        message=message,
        retryable=retryable,
        provider_status=provider_status,
    )
