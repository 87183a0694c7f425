"""Webhook sources: who may call ``POST /webhooks/{source}`` and what a delivery does.

A sources file (YAML) maps each source name to its signing scheme, the names of the
environment variables holding its secrets (several while a secret is rotated), an
optional filter, and one action: start a workflow with inputs mapped from the payload,
or deliver an event to the runs waiting for it. Mappings and filters are templates
rendered by :mod:`engine.templating` against ``payload``, ``headers`` and ``source``.
Secrets are read once, when the file is loaded; they never live in the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.catalog import Catalog
from engine.model import Actor, ActorKind
from engine.templating import Fields, condition_template, names_read
from engine.workflow import Identifier, Workflow
from webhooks.signatures import Scheme, Verifier, secret_key

log = logging.getLogger(__name__)


class _Strict(BaseModel):
    # A misspelt key in the sources file must be an error, never silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class StartAction(_Strict):
    workflow: str
    inputs: dict[str, Any] = Field(default_factory=dict)


class DeliverAction(_Strict):
    event: str
    key: str = ""


class SourceSpec(_Strict):
    scheme: Scheme
    secrets: list[str] = Field(min_length=1, description="Environment variable names, not values.")
    filter: str | None = None
    start: StartAction | None = None
    deliver: DeliverAction | None = None
    body_limit: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_action(self) -> SourceSpec:
        if (self.start is None) == (self.deliver is None):
            raise ValueError("a source needs exactly one of 'start' or 'deliver'")
        return self


class SourcesFile(_Strict):
    sources: dict[Identifier, SourceSpec] = Field(default_factory=dict)


@dataclass(frozen=True)
class Source:
    """A source ready to verify deliveries: its spec with the secrets resolved to keys.

    And what every delivery of it shares, worked out once: its verifier (the keys' HMAC
    states), its mappings (:class:`~engine.templating.Fields`), the actor its runs and
    events are recorded as, and the names its filter and mappings read (``payload``,
    ``headers``, ...), so a delivery's context holds only those.
    """

    name: str
    spec: SourceSpec
    keys: list[bytes]
    body_limit: int
    workflow: Workflow | None = None  # what it starts, once resolved in the engine's catalog (with_workflow)

    def with_workflow(self, catalog: Catalog) -> Source | None:
        """This source with the workflow it starts resolved, or None if the catalog has no such workflow."""
        if self.spec.start is None:
            return self
        workflow = catalog.workflows.get(self.spec.start.workflow)
        return None if workflow is None else replace(self, workflow=workflow)

    @cached_property
    def verifier(self) -> Verifier:
        return Verifier(self.spec.scheme, self.keys)

    @cached_property
    def inputs(self) -> Fields:
        """The start's input mapping (none for a source that delivers events)."""
        return Fields(self.spec.start.inputs if self.spec.start else {}, "inputs")

    @cached_property
    def deliver_fields(self) -> Fields:
        """The event and key of a source that delivers events (none for one that starts runs)."""
        action = self.spec.deliver
        return Fields({"event": action.event, "key": action.key} if action else {}, "deliver")

    @cached_property
    def actor(self) -> Actor:
        return Actor(kind=ActorKind.WEBHOOK, id=self.name)

    @cached_property
    def names_read(self) -> frozenset[str]:
        action = self.spec.start or self.spec.deliver
        templates: list[Any] = [action.inputs if isinstance(action, StartAction) else dict(action or {})]
        if self.spec.filter is not None:
            templates.append(condition_template(self.spec.filter))
        return frozenset(names_read(templates))


class SourcesError(ValueError):
    """A sources file that cannot be used; the message names the file and the field."""


def load_sources(
    path: Path, default_body_limit: int, environ: Mapping[str, str] | None = None
) -> dict[str, Source]:
    """The usable sources of ``path``; a missing file means no sources.

    A source none of whose secret variables is set is left out (and logged): it could
    only accept unsigned deliveries, and those are never accepted. A secret that is set
    but cannot be used (a Standard Webhooks secret that is not base64) is a mistake to
    fix, not a source to drop quietly: :class:`SourcesError` names the source and the
    variable, and the server does not start.
    """
    if not path.exists():
        log.info("no webhook sources file", extra={"path": str(path)})
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        parsed = SourcesFile.model_validate(data)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SourcesError(f"{path}: cannot be read: {exc}") from exc
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SourcesError(f"{path}: {detail}") from exc
    return sources_from_specs(parsed.sources, default_body_limit, environ)


def sources_from_specs(
    specs: Mapping[str, SourceSpec], default_body_limit: int, environ: Mapping[str, str] | None = None
) -> dict[str, Source]:
    env = os.environ if environ is None else environ
    sources: dict[str, Source] = {}
    for name, spec in specs.items():
        keys: list[bytes] = []
        for variable in spec.secrets:
            value = env.get(variable)
            if not value:
                log.warning("webhook secret variable not set", extra={"source": name, "variable": variable})
                continue
            try:
                keys.append(secret_key(spec.scheme, value))
            except ValueError as exc:
                raise SourcesError(
                    f"webhook source {name!r}: the secret in {variable} cannot be used: {exc}."
                ) from None
        if not keys:
            log.error("webhook source disabled: none of its secrets is set", extra={"source": name})
            continue
        sources[name] = Source(name, spec, keys, spec.body_limit or default_body_limit)
    return sources
