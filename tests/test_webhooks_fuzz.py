"""Fuzzing ``POST /webhooks/{source}`` with hypothesis: whatever arrives, never a 5xx.

Half the examples are signed correctly, so the fuzzed bodies also reach JSON parsing,
filters, input mapping and the engine's validation, not just the signature check.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.engine_helpers import Clock
from tests.web_helpers import github_headers, standard_headers, stripe_headers

HEADER_NAMES = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "X-Hub-Signature-256",
    "X-GitHub-Delivery",
    "X-GitHub-Event",
    "Stripe-Signature",
    "Content-Type",
    "Content-Length",
]
header_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
payloads = st.fixed_dictionaries(
    {},
    optional={
        "service": json_values,
        "replicas": json_values,
        "repository": st.fixed_dictionaries({}, optional={"name": json_values}),
        "type": json_values,
        "data": json_values,
        "id": json_values,
    },
)
bodies = st.one_of(
    st.binary(max_size=600),
    payloads.map(lambda p: json.dumps(p).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
)


def signed(source: str, body: bytes, clock: Clock, delivery: str) -> dict[str, str]:
    if source == "github":
        return github_headers(body, delivery)
    if source == "payments":
        return stripe_headers(body, clock.now)
    return standard_headers(body, msg_id=delivery, at=clock.now)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    source=st.sampled_from(["releases", "github", "payments", "vector", "nobody", "unset"]),
    body=bodies,
    sign=st.booleans(),
    delivery=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30),
    extra=st.dictionaries(st.sampled_from(HEADER_NAMES), header_value, max_size=4),
)
async def test_fuzzed_deliveries_never_get_a_5xx(
    client: TestClient,
    clock: Clock,
    source: str,
    body: bytes,
    sign: bool,
    delivery: str,
    extra: dict[str, str],
) -> None:
    headers: dict[str, Any] = {k: v for k, v in extra.items() if k != "Content-Length"}
    if sign:
        headers.update(signed(source, body, clock, delivery))
    response = await client.post(f"/webhooks/{source}", data=body, headers=headers)
    text = await response.text()
    assert response.status < 500, text
    if response.status >= 400:
        assert response.content_type == "application/problem+json"
        assert json.loads(text)["detail"]
