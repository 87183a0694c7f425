"""Load workflow files (YAML or JSON) from a folder, with errors that name file and field."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from engine.errors import NotFound
from engine.workflow import Workflow

WORKFLOW_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class FileError:
    path: Path
    location: str  # dotted path to the field, e.g. "steps.2.task.expires_in"
    message: str

    def __str__(self) -> str:
        where = f" at {self.location}" if self.location else ""
        return f"{self.path}{where}: {self.message}"


@dataclass
class Catalog:
    """The workflows a process knows by id, and the files that failed to load."""

    workflows: dict[str, Workflow] = field(default_factory=dict)
    errors: list[FileError] = field(default_factory=list)
    sources: dict[str, Path] = field(default_factory=dict)

    def get(self, workflow_id: str) -> Workflow:
        try:
            return self.workflows[workflow_id]
        except KeyError:
            known = ", ".join(sorted(self.workflows)) or "none"
            raise NotFound(f"No workflow {workflow_id!r}. Known workflows: {known}.") from None

    def add(self, workflow: Workflow, source: Path | None = None) -> None:
        self.workflows[workflow.id] = workflow
        if source is not None:
            self.sources[workflow.id] = source


def load_file(path: Path) -> Workflow:
    """Parse and validate one file; raises :class:`WorkflowFileError` with every problem."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise WorkflowFileError([FileError(path, "", f"cannot be read: {exc}")]) from exc
    if not isinstance(data, dict):
        found = type(data).__name__
        raise WorkflowFileError([FileError(path, "", f"expected a mapping at the top, got {found}")])
    try:
        return Workflow.model_validate(data)
    except ValidationError as exc:
        errors = [
            FileError(path, ".".join(str(part) for part in err["loc"]), err["msg"]) for err in exc.errors()
        ]
        raise WorkflowFileError(errors) from exc


def load_folder(folder: Path) -> Catalog:
    """Every workflow file under ``folder``; bad files are reported, good ones still load."""
    catalog = Catalog()
    if not folder.is_dir():
        catalog.errors.append(FileError(folder, "", "is not a folder of workflow files"))
        return catalog
    for path in sorted(folder.rglob("*")):
        if path.suffix not in WORKFLOW_SUFFIXES or not path.is_file():
            continue
        try:
            workflow = load_file(path)
        except WorkflowFileError as exc:
            catalog.errors.extend(exc.errors)
            continue
        if workflow.id in catalog.workflows:
            first = catalog.sources[workflow.id]
            catalog.errors.append(
                FileError(path, "id", f"workflow id {workflow.id!r} is already defined in {first}")
            )
            continue
        catalog.add(workflow, path)
    return catalog


class WorkflowFileError(ValueError):
    def __init__(self, errors: list[FileError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))
