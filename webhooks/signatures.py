"""Verify (and produce) webhook signatures: Standard Webhooks, GitHub and Stripe.

Every scheme signs the raw body bytes, never a re-serialised JSON, so verification
runs before the body is parsed. Signatures are compared with ``hmac.compare_digest``
and every configured secret is tried, so a sender can rotate its secret while the old
one still works. Schemes that sign a timestamp are refused when it is too far off,
which stops a captured delivery from being replayed later.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from enum import StrEnum
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _hashlib import HASH

    KeyStates = tuple[HASH, HASH]  # SHA-256 after a key's inner and outer padded blocks

STANDARD_SECRET_PREFIX = "whsec_"
_SHA256_BLOCK = hashlib.sha256().block_size  # HMAC pads (or first hashes) its key to one block
_INNER_PAD = bytes(byte ^ 0x36 for byte in range(256))  # translate() tables, as the hmac module's
_OUTER_PAD = bytes(byte ^ 0x5C for byte in range(256))


class Scheme(StrEnum):
    STANDARD = "standard"
    GITHUB = "github"
    STRIPE = "stripe"


class SignatureError(Exception):
    """The delivery is not signed by a configured secret; the message says what is wrong."""


class StaleTimestamp(SignatureError):
    """The signed timestamp is too far from now: a replay, or a badly wrong clock."""


def secret_key(scheme: Scheme, secret: str) -> bytes:
    """The HMAC key a secret stands for: Standard Webhooks secrets are base64 after ``whsec_``.

    Like the Standard Webhooks reference libraries, the base64 padding may be left off
    (``whsec_abc`` is ``whsec_abc=``): secrets copied from a dashboard often lose it.
    """
    if scheme is not Scheme.STANDARD:
        return secret.encode()
    encoded = secret.strip().removeprefix(STANDARD_SECRET_PREFIX).rstrip("=")
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError("a Standard Webhooks secret is 'whsec_' followed by base64") from exc
    if not key:
        raise ValueError("a Standard Webhooks secret is 'whsec_' followed by base64 of at least one byte")
    return key


class Verifier:
    """Checks one source's deliveries: its scheme, with its keys' HMAC states worked out once.

    Made once per source (:attr:`webhooks.sources.Source.verifier`); :meth:`verify` is
    what each delivery costs, so it does no more than the scheme asks.
    """

    def __init__(self, scheme: Scheme, keys: list[bytes]) -> None:
        self.scheme = scheme
        self._states = [_keyed(key) for key in keys]

    def verify(self, headers: Mapping[str, str], body: bytes, now: float, tolerance: float) -> str | None:
        """Check the delivery's signature; returns its delivery id when the scheme sends one."""
        if self.scheme is Scheme.STANDARD:
            return _verify_standard(self._states, headers, body, now, tolerance)
        if self.scheme is Scheme.GITHUB:
            return _verify_github(self._states, headers, body)
        _verify_stripe(self._states, headers, body, now, tolerance)
        return None  # Stripe names the event inside the body ("id"); the caller reads it there


def sign_standard(key: bytes, msg_id: str, timestamp: int | str, body: bytes) -> str:
    return "v1," + _standard_mac(_keyed(key), _standard_message(msg_id, timestamp, body)).decode()


def sign_github(key: bytes, body: bytes) -> str:
    return _github_signature(_keyed(key), body)


def sign_stripe(key: bytes, timestamp: int | str, body: bytes) -> str:
    return f"t={timestamp},v1={_stripe_mac(_keyed(key), timestamp, body)}"


def _standard_message(msg_id: str, timestamp: int | str, body: bytes) -> bytes:
    return f"{msg_id}.{timestamp}.".encode() + body


def _github_signature(states: KeyStates, body: bytes) -> str:
    """The whole X-Hub-Signature-256 value."""
    return "sha256=" + _hmac_sha256(states, body).hex()


def _stripe_mac(states: KeyStates, timestamp: int | str, body: bytes) -> str:
    """The hex HMAC that follows ``v1=`` in a Stripe-Signature."""
    return _hmac_sha256(states, f"{timestamp}.".encode() + body).hex()


def _standard_mac(states: KeyStates, message: bytes) -> bytes:
    """The base64 HMAC that follows ``v1,`` in a Standard Webhooks signature."""
    return binascii.b2a_base64(_hmac_sha256(states, message), newline=False)  # b64encode, one call less


def _hmac_sha256(states: KeyStates, message: bytes) -> bytes:
    """HMAC-SHA256 of ``message`` (RFC 2104), from its key's hash states computed once (:func:`_keyed`).

    What ``hmac.new(key, message, "sha256").digest()`` returns; copying two hash states
    costs a third of copying an ``hmac.HMAC`` (a Python object around them), and the
    key's own blocks are not hashed again for every delivery.
    """
    inner, outer = states
    inner = inner.copy()
    inner.update(message)
    outer = outer.copy()
    outer.update(inner.digest())
    return outer.digest()


@lru_cache(maxsize=64)
def _keyed(key: bytes) -> KeyStates:
    """SHA-256 after the key's inner and outer padded blocks: the part of HMAC that is the key's."""
    if len(key) > _SHA256_BLOCK:
        key = hashlib.sha256(key).digest()
    block = key.ljust(_SHA256_BLOCK, b"\0")
    return hashlib.sha256(block.translate(_INNER_PAD)), hashlib.sha256(block.translate(_OUTER_PAD))


def _verify_standard(
    keyed: list[KeyStates], headers: Mapping[str, str], body: bytes, now: float, tolerance: float
) -> str:
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signature = headers.get("webhook-signature")
    if not (msg_id and stamp and signature):
        raise _missing(headers, "webhook-id", "webhook-timestamp", "webhook-signature")
    message = _standard_message(msg_id, _timestamp(stamp, now, tolerance), body)
    # Space-separated "<version>,<base64>", compared as sent: other versions than v1 match nothing.
    expected = [b"v1," + _standard_mac(states, message) for states in keyed]
    _match_any(expected, signature.encode().split(b" "), "webhook-signature")
    return msg_id


def _verify_github(keyed: list[KeyStates], headers: Mapping[str, str], body: bytes) -> str | None:
    header = _required(headers, "X-Hub-Signature-256")
    if not header.startswith("sha256="):
        raise SignatureError("X-Hub-Signature-256 must look like 'sha256=<hex digest>'.")
    expected = [_github_signature(states, body).encode() for states in keyed]
    _match_any(expected, [header.strip().lower().encode()], "X-Hub-Signature-256")
    return headers.get("X-GitHub-Delivery") or None


def _verify_stripe(
    keyed: list[KeyStates], headers: Mapping[str, str], body: bytes, now: float, tolerance: float
) -> None:
    pairs = [item.split("=", 1) for item in _required(headers, "Stripe-Signature").split(",")]
    fields = [(pair[0].strip(), pair[1].strip()) for pair in pairs if len(pair) == 2]
    stamps = [value for name, value in fields if name == "t"]
    if len(stamps) != 1:
        raise SignatureError("Stripe-Signature must carry exactly one 't=<unix time>'.")
    timestamp = _timestamp(stamps[0], now, tolerance)
    given = [value.lower().encode() for name, value in fields if name == "v1"]
    expected = [_stripe_mac(states, timestamp, body).encode() for states in keyed]
    _match_any(expected, given, "Stripe-Signature")


def _required(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if not value:
        raise _missing(headers, name)
    return value


def _missing(headers: Mapping[str, str], *names: str) -> SignatureError:
    """The refusal of a delivery that lacks one of the ``names`` headers (or sends it empty)."""
    name = next(name for name in names if not headers.get(name))
    return SignatureError(f"The {name} header is missing.")


def _timestamp(value: str, now: float, tolerance: float) -> int:
    if not (value.isascii() and value.strip().isdigit() and len(value) <= 20):
        raise SignatureError(f"The signed timestamp {value[:40]!r} is not a Unix time in seconds.")
    timestamp = int(value)
    if abs(now - timestamp) > tolerance:
        raise StaleTimestamp(
            f"The signed timestamp is {abs(now - timestamp):.0f} seconds off;"
            f" at most {tolerance:.0f} seconds are accepted."
        )
    return timestamp


def _match_any(expected: list[bytes], given: list[bytes], header: str) -> None:
    # Compare every pair (no early exit) so timing says nothing about which one matched.
    matched = False
    for mine in expected:
        for theirs in given:
            matched |= hmac.compare_digest(mine, theirs)
    if not matched:
        raise SignatureError(f"The {header} header does not match the body with any configured secret.")
