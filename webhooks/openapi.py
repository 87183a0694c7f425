"""The OpenAPI 3.1 document, built from the app's route table so it cannot drift.

Every route whose handler is declared with :func:`~webhooks.routing.endpoint` becomes
an operation: path parameters from the route's path, query, body and answer schemas from
its pydantic models (the ones the handler validates and serializes with), the bearer
requirement and error responses from its role. A handler mounted on two paths (a run's
routes also live under ``/v1/workflows/{workflow_id}/runs/{run_id}``) gets one operationId
per path, so the document stays valid (``openapi-spec-validator`` checks it in the tests).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import JsonSchemaMode

from webhooks.routing import ENDPOINTS, Endpoint, endpoint_of

_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")
PROBLEM = {"$ref": "#/components/schemas/Problem"}


def documented_routes(app: web.Application) -> list[tuple[str, str, Endpoint]]:
    """(method, path, endpoint) of every declared route, HEAD aside."""
    found = []
    for route in app.router.routes():
        spec = endpoint_of(route.handler)
        if spec is None or route.method in ("HEAD", "*") or route.resource is None:
            continue
        found.append((route.method, route.resource.canonical, spec))
    return found


def build_openapi(app: web.Application, version: str = "0.1.0") -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {"Problem": _problem_schema()}
    taken: set[str] = set()
    for method, path, spec in documented_routes(app):
        operation = _operation(method, path, spec, schemas)
        operation["operationId"] = _unique(operation["operationId"], path, taken)
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Switchboard",
            "version": version,
            "description": "Signed inbound webhooks and the REST API of the Switchboard run engine.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _unique(name: str, path: str, taken: set[str]) -> str:
    """``name``, or for the same handler on a workflow-scoped path ``name_in_workflow`` (then numbered)."""
    candidate = name
    if candidate in taken and path.startswith("/v1/workflows/{workflow_id}/"):
        candidate = f"{name}_in_workflow"
    number = 2
    while candidate in taken:
        candidate, number = f"{name}_{number}", number + 1
    taken.add(candidate)
    return candidate


def _model_schema(model: type[BaseModel], schemas: dict[str, Any], mode: JsonSchemaMode) -> dict[str, Any]:
    """A reference to ``model``'s schema, which joins the components (with the models it uses)."""
    name = model.__name__
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)
    schemas.update(schema.pop("$defs", {}))
    schemas[name] = schema
    return {"$ref": f"#/components/schemas/{name}"}


def _answer(spec: Endpoint, model: type[BaseModel] | None, schemas: dict[str, Any]) -> dict[str, Any]:
    """The success response: the model's schema, else what the media type holds (text, any JSON)."""
    if model is not None:
        schema = _model_schema(model, schemas, "serialization")
    elif spec.media_type == "application/json":
        schema = {"type": "object"}
    else:
        schema = {"type": "string"}
    return {"description": "Success", "content": {spec.media_type: {"schema": schema}}}


def _body_required(model: type[BaseModel]) -> bool:
    """An empty body counts as ``{}`` (routing.read_body): it is required when ``{}`` is refused."""
    try:
        model.model_validate({})
    except ValidationError:
        return True
    return False


def _operation(method: str, path: str, spec: Endpoint, schemas: dict[str, Any]) -> dict[str, Any]:
    handler_name = next(h.__name__ for h, s in ENDPOINTS.items() if s is spec)
    operation: dict[str, Any] = {
        "operationId": handler_name,
        "summary": spec.summary,
        "tags": [spec.tag],
        "parameters": [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PARAM.findall(path)
        ],
        "responses": {
            str(spec.status): _answer(spec, spec.response, schemas),
            **{str(status): _answer(spec, model, schemas) for status, model in spec.also.items()},
            "default": {
                "description": "A problem",
                "content": {"application/problem+json": {"schema": PROBLEM}},
            },
        },
    }
    if spec.description:
        operation["description"] = spec.description
    if spec.query is not None:
        query_schema = spec.query.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(query_schema.pop("$defs", {}))
        required = set(query_schema.get("required", []))
        for name, prop in query_schema.get("properties", {}).items():
            operation["parameters"].append(
                {"name": name, "in": "query", "required": name in required, "schema": _inline(prop)}
            )
    if spec.body is not None:
        reference = _model_schema(spec.body, schemas, "validation")
        operation["requestBody"] = {
            "required": _body_required(spec.body),
            "content": {"application/json": {"schema": reference}},
        }
    if spec.idempotent:
        operation["parameters"].append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "A retry with the same key (from the same token) starts nothing twice:"
                " it answers the run the first request started.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            }
        )
    if spec.role is not None:
        operation["security"] = [{"bearer": []}]
        operation["x-required-role"] = spec.role.value
        operation["responses"]["401"] = _problem_response("No or an invalid bearer token, or none configured")
        operation["responses"]["403"] = _problem_response(f"The token lacks the {spec.role.value} role")
    return operation


def _inline(prop: dict[str, Any]) -> dict[str, Any]:
    # Query parameters are flat: enum references are spelled out where they appear.
    return {k: v for k, v in prop.items() if k != "title"}


def _problem_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {"schema": PROBLEM}}}


def _problem_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                },
            },
            "candidates": {"type": "array", "items": {"type": "string"}},
        },
    }
