"""The shape of a Slack request that bolt and this app's listeners can be handed.

bolt reads a request's body without checking it: ``team`` may be a string or an object
with an ``id``, ``authorizations[0]`` must be an object, a ``block_actions`` payload
must carry ``actions[0]``, and the listeners read ``user.id``, ``view.state.values``,
the modal's ``private_metadata``... A body of the wrong shape raises deep inside bolt
or a listener (a 500, a traceback). Slack itself never sends one, but anyone holding
the signing secret could, so :func:`check_envelope` checks every member either reads,
and the HTTP edge answers 400 naming the first one that is wrong. Members nobody reads
may hold anything: they are left alone.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    StrictBool,
    StrictStr,
    StringConstraints,
    ValidationError,
    model_validator,
)

from bot import ids

# Payload types whose listeners read ``user``, ``channel`` and ``container`` as objects.
INTERACTIVE = frozenset({"block_actions", "view_submission", "view_closed", "shortcut", "message_action"})
# Payload types bolt routes by their top-level ``callback_id``.
BY_CALLBACK_ID = frozenset(
    {"shortcut", "message_action", "interactive_message", "dialog_submission", "dialog_cancellation"}
)
OUR_MODALS = frozenset({ids.REJECT_MODAL, ids.EDIT_MODAL})

# A team or enterprise id. Slack's are a dozen characters; bolt sends the request's in the
# URL of every Web API call it makes for it (auth.test first), where a long one is refused
# by the server (the URL is too long) and bolt logs an error instead of answering.
TeamId = Annotated[StrictStr, StringConstraints(max_length=64)]


class _Open(BaseModel):
    """A Slack object: the members listed are checked, any others kept as they are."""

    model_config = ConfigDict(extra="allow")


class Ref(_Open):
    """A team, user, channel or enterprise given as an object."""

    id: TeamId | None = None  # a team's, a user's or a channel's: all short
    team_id: TeamId | None = None
    enterprise_id: TeamId | None = None
    username: StrictStr | None = None
    name: StrictStr | None = None


class Authorization(_Open):
    team_id: TeamId | None = None
    user_id: StrictStr | None = None
    enterprise_id: TeamId | None = None
    is_enterprise_install: StrictBool | None = None


class Action(_Open):
    action_id: StrictStr
    block_id: StrictStr | None = None
    value: StrictStr | None = None
    type: StrictStr | None = None


class InputValue(_Open):
    value: StrictStr | None = None


class State(_Open):
    values: dict[str, dict[str, InputValue]] = Field(default_factory=dict)


class Origin(BaseModel):
    """What this app keeps in its modals' ``private_metadata`` (see ``bot.cards.origin_metadata``)."""

    run: StrictStr
    task: StrictStr
    channel: StrictStr | None = None


class View(_Open):
    id: StrictStr | None = None
    type: StrictStr | None = None
    callback_id: StrictStr | None = None
    private_metadata: StrictStr | None = None
    team_id: TeamId | None = None
    app_installed_team_id: TeamId | None = None
    state: State = Field(default_factory=State)

    @model_validator(mode="after")
    def _our_modals_carry_their_origin(self) -> View:
        if self.callback_id in OUR_MODALS:
            try:
                Origin.model_validate(json.loads(self.private_metadata or "null"))
            except (ValueError, ValidationError):
                raise ValueError(
                    "private_metadata is not the origin this app's modal was opened with"
                ) from None
        return self


class Place(_Open):
    """Where bolt looks for a user, channel or thread: a message, an item, an assistant thread."""

    user: StrictStr | Ref | None = None
    channel: StrictStr | Ref | None = None
    channel_id: StrictStr | None = None
    thread_ts: StrictStr | None = None


class Container(_Open):
    type: StrictStr | None = None


class ResponseUrl(_Open):
    response_url: HttpUrl


class FunctionData(_Open):
    execution_id: StrictStr | None = None
    inputs: dict[str, Any] | None = None


class Event(Place):
    type: StrictStr
    tab: StrictStr | None = None
    team: TeamId | Ref | None = None
    bot_id: StrictStr | None = None
    subtype: StrictStr | None = None
    bot_access_token: StrictStr | None = None
    function_execution_id: StrictStr | None = None
    inputs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _home_opened_by_a_user(self) -> Event:
        if self.type == "app_home_opened" and not isinstance(self.user, str):
            raise ValueError("app_home_opened names its user by id")
        return self


class Envelope(Place):
    """A command's form, an interactivity payload or an Events API envelope."""

    type: StrictStr | None = None
    token: StrictStr | None = None
    team_id: TeamId | None = None
    user_id: StrictStr | None = None
    enterprise_id: TeamId | None = None
    api_app_id: StrictStr | None = None
    trigger_id: StrictStr | None = None
    command: StrictStr | None = None
    text: StrictStr | None = None
    callback_id: StrictStr | None = None
    challenge: StrictStr | None = None
    function_execution_id: StrictStr | None = None
    bot_access_token: StrictStr | None = None
    response_url: HttpUrl | None = None
    team: TeamId | Ref | None = None
    enterprise: TeamId | Ref | None = None
    is_ext_shared_channel: StrictBool | None = None
    authorizations: list[Authorization] = Field(default_factory=list)
    response_urls: list[ResponseUrl] = Field(default_factory=list)
    actions: list[Action] = Field(default_factory=list)
    view: View = Field(default_factory=View)
    container: Container | None = None
    message: Place | None = None
    previous_message: Place | None = None
    item: Place | None = None
    assistant_thread: Place | None = None
    function_data: FunctionData | None = None
    event: Event | None = None

    @model_validator(mode="after")
    def _what_each_kind_needs(self) -> Envelope:
        fields = self.model_fields_set
        if self.type == "event_callback" and self.event is None:
            raise ValueError("an event_callback carries its event")
        if self.type == "block_actions" and not self.actions:
            raise ValueError("block_actions carries at least one action")
        if self.type in ("view_submission", "view_closed") and (
            "view" not in fields or self.view.callback_id is None
        ):
            raise ValueError(f"{self.type} carries its view and the view its callback_id")
        if self.type in BY_CALLBACK_ID and self.callback_id is None:
            raise ValueError(f"{self.type} carries its callback_id")
        if self.type in INTERACTIVE and not isinstance(self.user, Ref):
            raise ValueError("an interactivity payload names its user by an object")
        if self.type in INTERACTIVE and isinstance(self.channel, str):
            raise ValueError("an interactivity payload names its channel by an object")
        if self.command is not None and self.response_url is None:
            raise ValueError("a slash command carries its response_url")
        return self


def check_envelope(body: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first member bolt or a listener could not read."""
    try:
        Envelope.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise ValueError(f"{where}: {first['msg']}") from None
