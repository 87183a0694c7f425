"""A local fake of Slack's side: its Web API (aiohttp, random port) and its request signing.

The fake checks what Slack checks before it accepts a call: the token, the required
arguments, that ``chat.update`` names a channel id and a message that exists, and Block
Kit's limits (50 blocks a message, 100 a view, text lengths). It records every call,
keeps the messages it was sent, and can be told to answer 429 with Retry-After, or
500, a number of times. Its limits are written from Slack's documentation, not taken
from ``bot.blocks``, so a mistake there cannot hide here.

Test modules load its fixtures with ``pytest_plugins = ("tests.fake_slack",)``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
import redis
import yaml
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from bot.settings import SlackSettings
from bot.web import SLACK_BOT, attach
from engine.api import Engine
from engine.catalog import load_folder

BOT_TOKEN = "xoxb-test-token"
APP_TOKEN = "xapp-1-test-token"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
TEAM = "T0TEAM"

# Block Kit limits, from https://api.slack.com/reference/block-kit
MESSAGE_BLOCKS = 50
VIEW_BLOCKS = 100
TEXT_LIMITS = {"section": 3000, "header": 150, "context": 2000}


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    at: float
    status: int
    ok: bool
    error: str | None = None


@dataclass
class Failure:
    status: int
    times: int
    retry_after: int | None = None


@dataclass
class FakeSlack:
    """State of the fake: what was called, what was posted, what should fail next."""

    calls: list[Call] = field(default_factory=list)
    responses: list[dict[str, Any]] = field(default_factory=list)  # bodies posted to response_urls
    messages: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (channel id, ts)
    failures: dict[str, Failure] = field(default_factory=dict)
    url: str = ""
    socket_acks: list[dict[str, Any]] = field(default_factory=list)  # what the app sent back over Socket Mode
    sockets: list[web.WebSocketResponse] = field(default_factory=list)
    usergroups: dict[str, list[str]] = field(default_factory=dict)  # user group id: its members
    _ts: int = 0

    # -- control -------------------------------------------------------------------------

    def fail(self, method: str, status: int, times: int, retry_after: int | None = None) -> None:
        self.failures[method] = Failure(status, times, retry_after)

    def ok_calls(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.ok]

    def message_with(self, action_id: str, value: str) -> tuple[str, str] | None:
        """(channel id, ts) of the message that carries a button with this action and value."""
        for key, args in self.messages.items():
            for block in _blocks(args):
                for element in block.get("elements", []) if block.get("type") == "actions" else []:
                    if element.get("action_id") == action_id and element.get("value") == value:
                        return key
        return None

    def updates_of(self, message: tuple[str, str]) -> list[Call]:
        return [c for c in self.ok_calls("chat.update") if (c.args["channel"], c.args["ts"]) == message]

    def response_url(self) -> str:
        return f"{self.url}response/{uuid.uuid4().hex}"

    async def wait_for(self, check: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Poll until ``check()`` is truthy: delivery happens in background tasks."""
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting; calls so far: {[c.method for c in self.calls]}")
            await asyncio.sleep(0.02)

    # -- the Web API ---------------------------------------------------------------------

    async def api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args = await _arguments(request)
        failure = self.failures.get(method)
        if failure and failure.times > 0:
            failure.times -= 1
            headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else {}
            error = "ratelimited" if failure.status == 429 else "internal_error"
            self.calls.append(Call(method, args, time.time(), failure.status, False, error))
            if failure.status >= 500:
                return web.Response(status=failure.status, text="upstream trouble", headers=headers)
            return web.json_response({"ok": False, "error": error}, status=failure.status, headers=headers)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ") or args.get("token")
        if method == "apps.connections.open":
            if token != APP_TOKEN:
                return self._answer(method, args, {"ok": False, "error": "invalid_auth"})
            return self._answer(
                method, args, {"ok": True, "url": f"{self.url.replace('http', 'ws', 1)}socket"}
            )
        if token != BOT_TOKEN:
            return self._answer(method, args, {"ok": False, "error": "invalid_auth"})
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        if handler is None:
            return self._answer(method, args, {"ok": False, "error": "unknown_method"})
        return self._answer(method, args, handler(args))

    def _answer(self, method: str, args: dict[str, Any], body: dict[str, Any]) -> web.Response:
        self.calls.append(Call(method, args, time.time(), 200, bool(body.get("ok")), body.get("error")))
        return web.json_response(body)

    async def record_response(self, request: web.Request) -> web.Response:
        """A message the app sent to a response_url (its ephemeral answers)."""
        self.responses.append({**await request.json(), "_url": str(request.url)})
        return web.Response(text="ok")

    async def socket(self, request: web.Request) -> web.WebSocketResponse:
        """Socket Mode: say hello, then relay what the app sends back (acks) into ``socket_acks``."""
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append(ws)
        await ws.send_json({"type": "hello", "num_connections": 1, "debug_info": {"host": "fake"}})
        async for frame in ws:
            if frame.type == web.WSMsgType.TEXT:
                self.socket_acks.append(json.loads(frame.data))
        return ws

    async def send_envelope(self, kind: str, payload: dict[str, Any]) -> str:
        """Push an envelope (``slash_commands``, ``interactive``, ``events_api``) to the connected app."""
        envelope_id = uuid.uuid4().hex
        envelope = {
            "envelope_id": envelope_id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": True,
        }
        await self.sockets[-1].send_json(envelope)
        return envelope_id

    def _auth_test(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "team_id": TEAM,
            "user_id": "U0BOT",
            "bot_id": "B0BOT",
            "url": "https://x.slack.com/",
        }

    def _chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        problem = _require(args, "channel") or _message_problem(args)
        if problem:
            return problem
        channel = _channel_id(args["channel"])
        if "thread_ts" in args and (channel, args["thread_ts"]) not in self.messages:
            return {"ok": False, "error": "thread_not_found"}
        self._ts += 1
        ts = f"{int(time.time())}.{self._ts:06d}"
        self.messages[(channel, ts)] = dict(args)
        return {"ok": True, "channel": channel, "ts": ts, "message": {"text": args.get("text", "")}}

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        problem = _require(args, "channel", "ts") or _message_problem(args)
        if problem:
            return problem
        key = (args["channel"], args["ts"])
        if args["channel"][:1] not in ("C", "G", "D"):
            return {"ok": False, "error": "channel_not_found"}
        if key not in self.messages:
            return {"ok": False, "error": "message_not_found"}
        self.messages[key] = {**self.messages[key], **args}
        return {"ok": True, "channel": args["channel"], "ts": args["ts"]}

    def _chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        problem = _require(args, "channel", "user") or _message_problem(args)
        return problem or {"ok": True, "message_ts": f"{time.time():.6f}"}

    def _views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        problem = _require(args, "trigger_id", "view")
        if problem:
            return problem
        view = _view(args)
        return _view_problem(view, "modal") or {
            "ok": True,
            "view": {"id": "V" + uuid.uuid4().hex[:8], **view},
        }

    def _usergroups_users_list(self, args: dict[str, Any]) -> dict[str, Any]:
        problem = _require(args, "usergroup")
        if problem:
            return problem
        if args["usergroup"] not in self.usergroups:
            return {"ok": False, "error": "no_such_subteam"}
        return {"ok": True, "users": list(self.usergroups[args["usergroup"]])}

    def _views_publish(self, args: dict[str, Any]) -> dict[str, Any]:
        problem = _require(args, "user_id", "view")
        if problem:
            return problem
        view = _view(args)
        return _view_problem(view, "home") or {"ok": True, "view": {"id": "V" + uuid.uuid4().hex[:8], **view}}


async def _arguments(request: web.Request) -> dict[str, Any]:
    if request.method == "GET":
        return dict(request.query)
    if request.content_type == "application/json":
        body = await request.json()
        return body if isinstance(body, dict) else {}
    return dict(parse_qsl(await request.text(), keep_blank_values=True))


def _require(args: dict[str, Any], *names: str) -> dict[str, Any] | None:
    for name in names:
        if not args.get(name):
            return {
                "ok": False,
                "error": f"{name}_not_found" if name == "channel" else f"invalid_arguments: {name}",
            }
    return None


def _channel_id(channel: str) -> str:
    """Slack accepts a #name (or a user id, for a DM) when posting and answers with the channel's id."""
    if channel.startswith("#"):
        return "C" + hashlib.sha1(channel.encode()).hexdigest()[:8].upper()
    if channel.startswith("U"):
        return "D" + channel[1:]  # the bot's direct message channel with that user
    return channel


def _view(args: dict[str, Any]) -> dict[str, Any]:
    view = args["view"]
    return json.loads(view) if isinstance(view, str) else view


def all_text(args: dict[str, Any]) -> str:
    """Every text of a message or view (its fallback text, blocks, fields and buttons), to search in."""
    found: list[str] = [str(args.get("text", ""))]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("text"), str):
                found.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(_blocks(args) or args.get("view", {}))
    return "\n".join(found)


def has_buttons(args: dict[str, Any]) -> bool:
    return any(block.get("type") == "actions" for block in _blocks(args))


def _blocks(args: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = args.get("blocks") or []
    return json.loads(blocks) if isinstance(blocks, str) else blocks


def _message_problem(args: dict[str, Any]) -> dict[str, Any] | None:
    blocks = _blocks(args)
    if not args.get("text") and not blocks:
        return {"ok": False, "error": "no_text"}
    errors = block_errors(blocks, MESSAGE_BLOCKS)
    return {"ok": False, "error": "invalid_blocks", "errors": errors} if errors else None


def _view_problem(view: dict[str, Any], kind: str) -> dict[str, Any] | None:
    errors = block_errors(view.get("blocks", []), VIEW_BLOCKS)
    if view.get("type") != kind:
        errors.append(f"view type must be {kind}")
    if kind == "modal":
        for name in ("title", "submit", "close"):
            text = (view.get(name) or {}).get("text", "")
            if name == "title" and not text:
                errors.append("a modal needs a title")
            if len(text) > 24:
                errors.append(f"{name} longer than 24 characters")
    if len(view.get("private_metadata", "")) > 3000:
        errors.append("private_metadata longer than 3000 characters")
    return {"ok": False, "error": "invalid_arguments", "errors": errors} if errors else None


def block_errors(blocks: list[dict[str, Any]], limit: int) -> list[str]:
    """What Slack would reject in ``blocks`` (an empty list when it would accept them)."""
    errors: list[str] = []
    if len(blocks) > limit:
        errors.append(f"{len(blocks)} blocks, more than {limit}")
    block_ids = [b["block_id"] for b in blocks if "block_id" in b]
    if len(block_ids) != len(set(block_ids)):
        errors.append("repeated block_id")
    for index, block in enumerate(blocks):
        kind = block.get("type")
        where = f"blocks[{index}] ({kind})"
        text = (block.get("text") or {}).get("text", "")
        if kind in TEXT_LIMITS and "text" in block and not (0 < len(text) <= TEXT_LIMITS[kind]):
            errors.append(f"{where}: text of {len(text)} characters")
        if kind == "section":
            fields = block.get("fields", [])
            if len(fields) > 10 or any(len(f.get("text", "")) > 2000 for f in fields):
                errors.append(f"{where}: more than 10 fields or a field over 2000 characters")
            if "text" not in block and not fields:
                errors.append(f"{where}: a section needs text or fields")
        if kind == "context":
            elements = block.get("elements", [])
            if not 0 < len(elements) <= 10 or any(len(e.get("text", "")) > 2000 for e in elements):
                errors.append(f"{where}: 1 to 10 elements of at most 2000 characters")
        if kind == "actions":
            elements = block.get("elements", [])
            if not 0 < len(elements) <= 25:
                errors.append(f"{where}: 1 to 25 elements")
            action_ids = [e.get("action_id") for e in elements]
            if len(action_ids) != len(set(action_ids)):
                errors.append(f"{where}: repeated action_id")
            for element in elements:
                if len(element.get("text", {}).get("text", "")) > 75 or len(element.get("value", "")) > 2000:
                    errors.append(f"{where}: button text over 75 or value over 2000 characters")
        if kind == "input":
            element = block.get("element", {})
            if (
                len(element.get("initial_value", "")) > 3000
                or len(block.get("label", {}).get("text", "")) > 2000
            ):
                errors.append(f"{where}: initial_value over 3000 or label over 2000 characters")
        if kind not in ("section", "header", "context", "actions", "divider", "input", "image"):
            errors.append(f"{where}: unknown block type")
    return errors


# -- signing requests as Slack does ---------------------------------------------------------


def signed_headers(body: str, secret: str = SIGNING_SECRET, timestamp: int | None = None) -> dict[str, str]:
    """Slack's v0 signature: HMAC-SHA256 of ``v0:{timestamp}:{body}`` with the signing secret."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{stamp}:{body}".encode(), hashlib.sha256).hexdigest()
    return {
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": f"v0={digest}",
        "Content-Type": "application/x-www-form-urlencoded",
    }


@dataclass
class SlackUser:
    id: str
    name: str


ALICE = SlackUser("U0ALICE", "alice")
BOB = SlackUser("U0BOB", "bob")
CAROL = SlackUser("U0CAROL", "carol")


@dataclass
class Slack:
    """Drives the real bolt app the way Slack does: signed form posts to ``/slack/events``."""

    client: TestClient
    fake: FakeSlack
    engine: Engine

    @property
    def bot(self) -> Any:
        return self.client.app[SLACK_BOT]

    async def post(self, body: str, headers: dict[str, str] | None = None) -> ClientResponse:
        return await self.client.post("/slack/events", data=body, headers=headers or signed_headers(body))

    async def command(self, text: str, user: SlackUser = ALICE, channel: str = "C0OPS") -> dict[str, Any]:
        """Send ``/run <text>`` and return the ephemeral reply posted to its response_url."""
        response_url = self.fake.response_url()
        body = urlencode(
            {
                "token": "legacy-verification-token",
                "team_id": TEAM,
                "team_domain": "switchboard",
                "channel_id": channel,
                "channel_name": "ops",
                "user_id": user.id,
                "user_name": user.name,
                "command": "/run",
                "text": text,
                "api_app_id": "A0APP",
                "is_enterprise_install": "false",
                "response_url": response_url,
                "trigger_id": f"trigger-{uuid.uuid4().hex}",
            }
        )
        response = await self.post(body)
        assert response.status == 200, await response.text()
        replies = await self.fake.wait_for(lambda: self.responses_to(response_url))
        return replies[0]

    async def interact(self, payload: dict[str, Any]) -> ClientResponse:
        body = urlencode({"payload": json.dumps(payload)})
        response = await self.post(body)
        assert response.status == 200, await response.text()
        return response

    async def click(
        self,
        action_id: str,
        value: str,
        user: SlackUser = BOB,
        message: tuple[str, str] | None = None,
    ) -> str | None:
        """Click a button on a message ``(channel, ts)`` or, without one, in App Home.

        Returns the response_url the app may answer on (None in App Home).
        """
        payload = click_payload(self.fake, action_id, value, user, message)
        await self.interact(payload)
        return payload.get("response_url")

    async def submit(
        self, view: dict[str, Any], values: dict[str, dict[str, str]], user: SlackUser = BOB
    ) -> ClientResponse:
        """Submit a modal the app opened; ``values`` maps block_id to {action_id: value}."""
        return await self.interact(submission_payload(view, values, user))

    async def event(self, event: dict[str, Any], event_id: str | None = None, retry: int = 0) -> ClientResponse:
        """Deliver an Events API event and check it got its 200; ``retry`` > 0 as Slack's retries do."""
        response = await self.post_event(event, event_id, retry)
        assert response.status == 200, await response.text()
        return response

    async def post_event(
        self, event: dict[str, Any], event_id: str | None = None, retry: int = 0
    ) -> ClientResponse:
        body = json.dumps(
            {
                "token": "legacy",
                "team_id": TEAM,
                "api_app_id": "A0APP",
                "type": "event_callback",
                "event_id": event_id or f"Ev{uuid.uuid4().hex[:10]}",
                "event_time": int(time.time()),
                "event": event,
                "authorizations": [{"team_id": TEAM, "user_id": "U0BOT", "is_bot": True}],
            }
        )
        headers = {**signed_headers(body), "Content-Type": "application/json"}
        if retry:
            headers |= {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"}
        return await self.post(body, headers)

    def responses_to(self, response_url: str | None) -> list[dict[str, Any]]:
        return [r for r in self.fake.responses if r.get("_url") == response_url]


# -- fixtures -------------------------------------------------------------------------------

WORKFLOWS: dict[str, dict[str, Any]] = {
    "approve-deploy": {
        "id": "approve-deploy",
        "name": "Approve deploy",
        "inputs": {"service": {"type": "string", "default": "api"}},
        "settings": {"slack_channel": "#deploys"},
        "steps": [
            {
                "id": "approve",
                "type": "human_task",
                "task": {
                    "task_type": "approval",
                    "title": "Deploy {{ inputs.service }}?",
                    "description": "Roll {{ inputs.service }} out to production.",
                    "fields": {"service": "{{ inputs.service }}", "replicas": 3},
                    "expires_in": "1h",
                    "on_expire": "reject",
                },
            },
            {
                "id": "announce",
                "type": "notify",
                "needs": ["approve"],
                "notify": {"text": "Deployed {{ inputs.service }}."},
            },
        ],
    },
    "edit-note": {
        "id": "edit-note",
        "name": "Edit note",
        "settings": {"slack_channel": "#comms"},
        "steps": [
            {
                "id": "review",
                "type": "human_task",
                "task": {
                    "task_type": "edit",
                    "title": "Review the note",
                    "fields": {"subject": "Hello", "body": "First draft", "count": 2},
                    "editable": ["subject", "body", "count"],
                    "expires_in": "1s",
                    "on_expire": "fail",
                },
            },
            {
                "id": "send",
                "type": "notify",
                "needs": ["review"],
                "notify": {"text": "Sent {{ steps.review.result.subject }}: {{ steps.review.result.body }}"},
            },
        ],
    },
    "edit-typed": {
        "id": "edit-typed",
        "name": "Edit typed fields",
        "inputs": {"notes": {"type": "string", "default": "short"}},
        "settings": {"slack_channel": "#comms"},
        "steps": [
            {
                "id": "review",
                "type": "human_task",
                "task": {
                    "task_type": "edit",
                    "title": "Check the order",
                    "fields": {
                        "count": 2,
                        "urgent": False,
                        "tags": ["a"],
                        "notes": "{{ inputs.notes }}",
                    },
                    "editable": ["count", "urgent", "tags", "notes"],
                },
            },
        ],
    },
    "payload-sync": {
        "id": "payload-sync",
        "name": "Payload sync",
        "inputs": {"payload": {"type": "string", "default": "none"}},
        "settings": {"slack_channel": "#sync"},
        "steps": [
            {"id": "sync", "type": "notify", "notify": {"text": "synced payload={{ inputs.payload }}"}}
        ],
    },
    "broken": {
        "id": "broken",
        "name": "Broken template",
        "settings": {"slack_channel": "#alerts"},
        "steps": [
            {
                "id": "build",
                "type": "action",
                "action": "worker.actions:echo",
                "args": {"x": "{{ steps.nope.result }}"},
            },
            {"id": "deploy", "type": "action", "action": "worker.actions:echo", "needs": ["build"]},
        ],
    },
    "slow-build": {
        "id": "slow-build",
        "name": "Slow build",
        "settings": {"slack_channel": "#builds", "drain_timeout": "1s"},
        "steps": [
            {"id": "build", "type": "action", "action": "worker.actions:sleep", "args": {"seconds": 60}}
        ],
    },
}


def click_payload(
    fake: FakeSlack,
    action_id: str,
    value: str,
    user: SlackUser = BOB,
    message: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The ``block_actions`` payload Slack sends for a button click, on a message or in App Home."""
    payload: dict[str, Any] = {
        "type": "block_actions",
        "team": {"id": TEAM, "domain": "switchboard"},
        "user": {"id": user.id, "username": user.name, "name": user.name, "team_id": TEAM},
        "api_app_id": "A0APP",
        "trigger_id": f"trigger-{uuid.uuid4().hex}",
        "actions": [
            {
                "type": "button",
                "action_id": action_id,
                "block_id": "b",
                "value": value,
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }
    if message is not None:
        channel, ts = message
        payload |= {
            "container": {"type": "message", "message_ts": ts, "channel_id": channel},
            "channel": {"id": channel, "name": "ops"},
            "message": fake.messages.get(message, {}),
            "response_url": fake.response_url(),
        }
    else:
        payload |= {
            "container": {"type": "view", "view_id": "VHOME"},
            "view": {"id": "VHOME", "type": "home"},
        }
    return payload


def submission_payload(
    view: dict[str, Any], values: dict[str, dict[str, str]], user: SlackUser = BOB
) -> dict[str, Any]:
    """The ``view_submission`` payload of a modal; ``values`` maps block_id to {action_id: value}."""
    state = {
        block_id: {
            action_id: {"type": "plain_text_input", "value": value} for action_id, value in inputs.items()
        }
        for block_id, inputs in values.items()
    }
    return {
        "type": "view_submission",
        "team": {"id": TEAM, "domain": "switchboard"},
        "user": {"id": user.id, "username": user.name, "name": user.name, "team_id": TEAM},
        "api_app_id": "A0APP",
        "trigger_id": f"trigger-{uuid.uuid4().hex}",
        "view": {**view, "id": "VMODAL", "state": {"values": state}},
    }


def write_workflows(folder: Path, workflows: dict[str, dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, definition in workflows.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(definition, sort_keys=False))
    return folder


async def serve_fake_slack() -> tuple[FakeSlack, TestServer]:
    """Start the fake on a random local port; its Web API base is ``f"{fake.url}api/"``."""
    fake = FakeSlack()
    app = web.Application()
    app.router.add_post("/api/{method}", fake.api)
    app.router.add_get("/api/{method}", fake.api)  # read methods the SDK sends as GET (usergroups.users.list)
    app.router.add_post("/response/{id}", fake.record_response)
    app.router.add_get("/socket", fake.socket)
    server = TestServer(app)
    await server.start_server()
    fake.url = str(server.make_url("/"))
    return fake, server


@pytest.fixture
async def fake_slack() -> AsyncIterator[FakeSlack]:
    fake, server = await serve_fake_slack()
    yield fake
    await server.close()


@pytest.fixture
def slack_engine(redis_conn: redis.Redis, namespace: str, tmp_path: Path) -> Engine:
    catalog = load_folder(write_workflows(tmp_path / "workflows", WORKFLOWS))
    assert not catalog.errors, catalog.errors
    return Engine(redis_conn, catalog, key_prefix=f"{namespace}:", queue_name=namespace)


def slack_settings(fake: FakeSlack, **extra: Any) -> SlackSettings:
    return SlackSettings(
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
        SLACK_API_URL=f"{fake.url}api/",
        SLACK_HOME_ACTIVE_SECONDS=600,
        SLACK_OUTBOX_MAX_BACKOFF=0.2,
        **extra,
    )


@pytest.fixture
async def slack(fake_slack: FakeSlack, slack_engine: Engine, aiohttp_client: Any) -> Slack:
    app = web.Application()
    attach(app, slack_engine, slack_settings(fake_slack))
    client = await aiohttp_client(app)
    return Slack(client, fake_slack, slack_engine)
