"""The ``/run`` grammar: text in, a parsed command or a usage message with the nearest valid form.

Pure and synchronous, so every form and every typo is tested without Slack.
"""

from __future__ import annotations

import difflib
import html
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.model import RunStatus

FORMS: dict[str, str] = {
    "start": "start <workflow> [key=value ...]",
    "pause": "pause <run>",
    "resume": "resume <run>",
    "stop": "stop <run> [--graceful]",
    "status": "status <run>",
    "list": "list [status]",
    "tasks": "tasks",  # or pending: tasks waiting for a decision and questions waiting for an answer
    "replay": "replay <run>",
    "recover": "recover <run> [--from <step>] [--force] [key=value ...]",
    "console": "console",
    "help": "help",
}
ALIASES = {"pending": "tasks"}  # /run pending: what waits on people, as /run tasks lists it
ONE_RUN = frozenset({"pause", "resume", "status", "replay"})
STOP_FLAGS = ("--graceful", "--immediate")
RECOVER_FLAGS = ("--from", "--force")
# Slack clients turn quotes into typographic ones; shlex only knows the straight kind.
_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2018": "'", "\u2019": "'"})


@dataclass(frozen=True)
class Command:
    verb: str
    target: str | None = None  # the workflow for start, the run for run commands, the status for list
    inputs: dict[str, str] = field(default_factory=dict)  # start inputs, or recover's corrections
    graceful: bool = False
    from_step: str | None = None  # recover --from
    force: bool = False  # recover --force


class UsageError(ValueError):
    """What was wrong, the form that was probably meant, and how to get every form."""


def usage(slash: str = "/run") -> str:
    lines = "\n".join(f"• `{slash} {form}`" for form in FORMS.values())
    return f"*Usage*\n{lines}\nA run is named by its id or at least 8 characters of it."


def form(verb: str, slash: str = "/run") -> str:
    return f"`{slash} {FORMS[verb]}`"


def parse(text: str, slash: str = "/run") -> Command:
    """Parse the text after the slash command; raises :class:`UsageError` with a sentence to show."""
    text = html.unescape(text or "").translate(_QUOTES).strip()
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise UsageError(
            f'Cannot read that command ({exc}). Close the quote, e.g. `title="two words"`.'
        ) from None
    if not words:
        return Command("help")
    verb, rest = words[0].lower(), words[1:]
    verb = ALIASES.get(verb, verb)
    if verb not in FORMS:
        verbs = [*FORMS, *ALIASES]
        raise UsageError(
            _unknown(words[0], verbs, "command", lambda v: form(ALIASES.get(v, v), slash), slash)
        )
    if verb == "start":
        return _start(rest, slash)
    if verb in ONE_RUN:
        return Command(verb, _one(verb, rest, slash))
    if verb == "stop":
        return _stop(rest, slash)
    if verb == "recover":
        return _recover(rest, slash)
    if verb == "list":
        return _list(rest, slash)
    if rest:
        raise UsageError(f"`{verb}` takes nothing after it. Usage: {form(verb, slash)}")
    return Command(verb)


def _start(rest: list[str], slash: str) -> Command:
    if not rest or "=" in rest[0]:
        raise UsageError(f"Name the workflow to start. Usage: {form('start', slash)}")
    return Command("start", rest[0], _inputs(rest[1:], "start", slash))


def _inputs(words: list[str], verb: str, slash: str) -> dict[str, str]:
    inputs: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise UsageError(
                f'Expected `key=value`, got `{word}`. Quote values with spaces: `key="two words"`.'
                f" Usage: {form(verb, slash)}"
            )
        inputs[key] = value
    return inputs


def _recover(rest: list[str], slash: str) -> Command:
    """``recover <run> [--from <step>] [--force] [key=value ...]``: options anywhere after the verb."""
    runs: list[str] = []
    assignments: list[str] = []
    from_step: str | None = None
    force = False
    words = iter(rest)
    for word in words:
        flag, _, attached = word.partition("=")
        if flag.lower() == "--force" and not attached:
            force = True
        elif flag.lower() == "--from":
            from_step = attached or next(words, "")
            if not from_step or from_step.startswith("-"):
                raise UsageError(f"`--from` needs the step to recover from. Usage: {form('recover', slash)}")
        elif word.startswith("-"):
            choices = list(RECOVER_FLAGS)
            raise UsageError(_unknown(word, choices, "option", lambda f: f"`{f}`", slash, "recover"))
        elif "=" in word:
            assignments.append(word)
        else:
            runs.append(word)
    if len(runs) != 1:
        what = "Name one run to recover" if not runs else f"`recover` takes one run, got {len(runs)}"
        raise UsageError(f"{what}. Usage: {form('recover', slash)}")
    inputs = _inputs(assignments, "recover", slash)
    return Command("recover", runs[0], inputs, from_step=from_step, force=force)


def _one(verb: str, rest: list[str], slash: str) -> str:
    if len(rest) != 1:
        what = "Name one run" if not rest else f"`{verb}` takes one run, got {len(rest)} words"
        raise UsageError(f"{what}. Usage: {form(verb, slash)}")
    return rest[0]


def _stop(rest: list[str], slash: str) -> Command:
    flags = [w for w in rest if w.startswith("-")]
    runs = [w for w in rest if not w.startswith("-")]
    for flag in flags:
        if flag.lower() not in STOP_FLAGS:
            raise UsageError(_unknown(flag, list(STOP_FLAGS), "option", lambda f: f"`{f}`", slash, "stop"))
    if len(runs) != 1:
        raise UsageError(f"Name one run to stop. Usage: {form('stop', slash)}")
    return Command("stop", runs[0], graceful="--graceful" in (f.lower() for f in flags))


def _list(rest: list[str], slash: str) -> Command:
    if len(rest) > 1:
        raise UsageError(f"`list` takes at most one status. Usage: {form('list', slash)}")
    if not rest:
        return Command("list")
    statuses = [s.value for s in RunStatus]
    status = rest[0].lower()
    if status not in statuses:
        raise UsageError(
            _unknown(rest[0], statuses, "status", lambda s: f"`{slash} list {s}`", slash, "list")
        )
    return Command("list", status)


def _unknown(
    word: str,
    choices: list[str],
    kind: str,
    shown: Callable[[str], str],
    slash: str,
    verb: str | None = None,
) -> str:
    message = f"Unknown {kind} `{word}`."
    close = nearest(word.lower(), choices)
    if close:
        message += f" Did you mean {shown(close)}?"
    if verb is not None:
        message += f" Usage: {form(verb, slash)} (valid: {', '.join(choices)})."
    else:
        message += "\n" + usage(slash)
    return message


def nearest(word: str, choices: list[str]) -> str | None:
    """The closest of ``choices`` to a mistyped ``word``, if any is close."""
    found = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return found[0] if found else None
