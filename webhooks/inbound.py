"""What an HTTP edge reads from a client it does not trust: headers, body bytes, text, JSON.

The REST API, the signed webhooks and Slack's events endpoint all read requests through
these functions, so a malformed request gets the same clear refusal everywhere
(:class:`Malformed`, with the status it deserves) instead of an exception from deep
inside a parser turning into a 500. What each function guards against:

- headers: aiohttp keeps bytes that are not UTF-8 as lone surrogates, which crash the
  first ``.encode()`` (a token digest, an HMAC, a Redis key);
- bodies: a ``Content-Encoding`` that aiohttp does not decode would be read as if it
  were plain, and one it does decode may not be what it says (aiohttp raises on read);
  the size is counted after decoding, so a small compressed body cannot expand past
  the limit;
- text: JSON and Slack's forms are UTF-8; a body that is not, or a ``charset`` that
  says otherwise, is refused rather than guessed at;
- JSON: Python's parser recurses once per nesting level (10,000 ``[`` exhaust the
  stack) and refuses integers of more than 4,300 digits with a plain ``ValueError``;
  both, ``NaN``/``Infinity`` (not JSON) and numbers too large for a float (which it
  would read as infinity) are refused with a sentence;
- aiohttp itself: its ``Expect`` handler (run before any middleware) fails on a value
  that is not UTF-8, and it logs every message its HTTP parser refuses with a
  traceback: :func:`expect_handler` and :func:`quiet_malformed_http` replace both.

This package depends on aiohttp only, so both the web server (``webhooks``) and the
Slack app (``bot``) use it without depending on each other.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from collections.abc import Mapping
from itertools import accumulate
from typing import Any

import orjson
from aiohttp import HttpVersion11, web
from aiohttp.compression_utils import HAS_BROTLI, HAS_ZSTD
from aiohttp.http_exceptions import BadHttpMessage, ContentEncodingError

MAX_JSON_DEPTH = 64
UTF8_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})
# What aiohttp decodes itself; anything else would reach us still encoded.
CONTENT_CODINGS = frozenset(
    {"identity", "gzip", "x-gzip", "deflate"}
    | ({"br"} if HAS_BROTLI else set())
    | ({"zstd"} if HAS_ZSTD else set())
)
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_A_BRACKET = re.compile(r"[^\[\]{}]+")
# A number orjson would read inexactly: integers past 64 bits become floats (18 digits always fit).
# Nineteen digits inside a string send the text to the json module too, which reads it the same.
_LONG_NUMBER = re.compile(r"[0-9]{19}")
# The same test on bytes: every digit made "0", then 19 zeros looked for, in C. The regex
# scans slowly: 73 us on a 6 KB body where this takes 6 us.
_DIGITS_AS_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_ZEROS = b"0" * 19


class Malformed(ValueError):
    """A request that cannot be read as sent: the client's fault, answered with ``status``.

    ``slug`` names the kind of problem (``malformed-json``, ``bad-encoding``, ...) for
    problem documents; the message is a sentence the client can act on, and ``extra``
    says more where there is more (the line and column of a JSON syntax error).
    """

    def __init__(self, status: int, detail: str, slug: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug
        self.extra = extra


async def expect_handler(request: web.BaseRequest) -> None:
    """``Expect: 100-continue`` answered as aiohttp does; any other expectation is ignored.

    aiohttp's own handler runs before any middleware and fails with a 500 on an
    ``Expect`` value that is not UTF-8 (it cannot encode its refusal). RFC 9110 lets a
    server ignore an expectation it does not meet, so the request goes on to the
    header checks every other header gets. Routes are added with ``expect_handler=``.
    """
    if (
        request.version >= HttpVersion11
        and request.headers.get("Expect", "").strip().lower() == "100-continue"
    ):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer itself has not started


def check_headers(headers: Mapping[str, str]) -> None:
    """Refuse header values that are not UTF-8 text (aiohttp keeps such bytes as surrogates)."""
    if "".join(headers.values()).isascii():  # nearly every request: one pass in C, not one per header
        return
    for name, value in headers.items():
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise Malformed(
                    400, f"The {_printable(name)} header is not UTF-8 text.", "malformed-header"
                ) from None


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The body as the client meant it (decoded from its Content-Encoding), at most ``limit`` bytes.

    Refused with 413 as soon as it is known to be larger, 415 for a content coding this
    server cannot decode, and 400 when the body is not what its Content-Encoding says.
    """
    coding = request.headers.get("Content-Encoding")  # mostly none: nothing to tidy then
    if coding is not None:
        coding = coding.strip().lower()
        if coding and coding not in CONTENT_CODINGS:
            accepted = ", ".join(sorted(CONTENT_CODINGS))
            raise Malformed(
                415,
                f"Content-Encoding {_printable(coding)!r} is not supported; send one of {accepted}, or none.",
                "unsupported-encoding",
            )
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        if declared is not None and coding in (None, "", "identity"):
            # Not decoded, so aiohttp delivers exactly the declared length: one read, no loop.
            return await request.content.read()
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except (web.RequestPayloadError, BadHttpMessage) as exc:
        # aiohttp raises what its parser met reading the body as a RequestPayloadError.
        cause = exc.__cause__ if isinstance(exc, web.RequestPayloadError) else exc
        if isinstance(cause, ContentEncodingError):
            detail = f"The body is not valid {_printable(coding or '')} data, as its Content-Encoding says."
            raise Malformed(400, detail, "bad-encoding") from None
        raise Malformed(400, f"The body could not be read: {_one_line(exc)}.", "bad-body") from None
    return b"".join(chunks)


def _too_large(limit: int) -> Malformed:
    return Malformed(413, f"The body is larger than {limit} bytes, the most accepted here.", "too-large")


def check_charset(request: web.BaseRequest) -> None:
    """Refuse a body declared in a charset other than UTF-8 (JSON and Slack's forms are UTF-8)."""
    charset = request.charset
    if charset is not None and charset.strip().lower() not in UTF8_CHARSETS:
        detail = f"The body's charset {_printable(charset)!r} is not supported; send UTF-8."
        raise Malformed(415, detail, "unsupported-charset")


def utf8_text(raw: bytes) -> str:
    """``raw`` as UTF-8 text, or a 400 saying where it is not."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        detail = f"The body is not UTF-8 text: {exc.reason} at byte {exc.start}."
        raise Malformed(400, detail, "bad-text") from None


def parse_json(raw: bytes | str) -> Any:
    """JSON from UTF-8 bytes or text, or a 400 saying where and what is wrong."""
    # Most bodies: orjson reads the bytes as they came (it checks the UTF-8 itself), no text made
    # first, when they are shallow and have no long number (see _LONG_NUMBER). Text is read as
    # its UTF-8 (a lone surrogate kept as such, which orjson refuses). Whatever it refuses goes
    # the long way below, which says what is wrong.
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    shallow = data.count(b"[") + data.count(b"{") <= MAX_JSON_DEPTH
    if shallow and _ZEROS not in data.translate(_DIGITS_AS_ZEROS):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    text = utf8_text(raw) if isinstance(raw, bytes) else raw
    if json_depth(text) > MAX_JSON_DEPTH:
        raise Malformed(400, f"The JSON is nested deeper than {MAX_JSON_DEPTH} levels.", "malformed-json")
    try:
        return _decode(text)
    except json.JSONDecodeError as exc:
        raise Malformed(
            400,
            f"Malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}.",
            "malformed-json",
            line=exc.lineno,
            column=exc.colno,
        ) from None
    except Malformed:
        raise
    except ValueError:  # the one other refusal of json.loads: sys.get_int_max_str_digits()
        raise Malformed(
            400,
            f"The JSON has a number of more than {sys.get_int_max_str_digits()} digits.",
            "malformed-json",
        ) from None


def _decode(text: str) -> Any:
    """orjson where it reads what the json module reads (several times faster), else the json module.

    orjson reads integers past 64 bits as floats, and refuses some text the json module
    reads (a lone surrogate escape, a number too large for a float): such text, and any
    error, go to the json module, so what is read and what a client is told are its.
    """
    if not _LONG_NUMBER.search(text):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return _DECODER.decode(text)


def json_depth(text: str) -> int:
    """How deeply ``text`` nests arrays and objects, without parsing it (nor recursing).

    Strings are taken out first, so brackets inside them do not count; on text that is
    not JSON the answer is an upper bound of how deep a parser would get.
    """
    openings = text.count("[") + text.count("{")
    if openings <= MAX_JSON_DEPTH:
        return openings
    brackets = _NOT_A_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(1 if b in "[{" else -1 for b in brackets), default=0)


def _no_constant(name: str) -> Any:
    raise Malformed(400, f"The JSON has {name}, which JSON does not allow.", "malformed-json")


def _finite(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise Malformed(400, f"The JSON has the number {text[:40]}, too large for a float.", "malformed-json")
    return number


# One decoder for every request: json.loads with an option builds a new one each call.
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)


class QuietMalformedHttp(logging.Filter):
    """aiohttp logs each request its HTTP parser refuses (answered 400) with a traceback.

    That is a client's malformed message (a bad header line, a Content-Encoding that is
    not what it says, broken chunking), not our error: one warning line says enough.
    aiohttp also logs, as "Unhandled exception", the same payload error once more when
    it drains the unread rest of such a body after the answer.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, BadHttpMessage | web.RequestPayloadError):
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
            record.msg, record.args = "malformed HTTP request refused: %s", (" ".join(str(error).split()),)
            record.exc_info, record.exc_text = None, None
        return True


_QUIET = QuietMalformedHttp()


def quiet_malformed_http() -> None:
    """Install :class:`QuietMalformedHttp` on aiohttp's server log (once, whoever asks first)."""
    server_log = logging.getLogger("aiohttp.server")
    if _QUIET not in server_log.filters:
        server_log.addFilter(_QUIET)


def _one_line(error: BaseException) -> str:
    """aiohttp's parser errors read ``400, message:\n  <what>``; just the what."""
    text = getattr(error, "message", None) or str(error)
    return " ".join(str(text).split()).removeprefix("400, message: ")


def _printable(text: str) -> str:
    """``text`` safe to put in an answer or a log line (surrogates escaped, at most 40 characters)."""
    return text[:40].encode("utf-8", "backslashreplace").decode("utf-8")
