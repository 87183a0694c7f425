"""The OpenAPI 3.1 document, built from the app's route table so it cannot drift.

Every route whose handler is declared with :func:`~webhooks.routing.endpoint` becomes
an operation: path parameters from the route's path, query and body schemas from its
pydantic models, the bearer requirement and error responses from its role.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from webhooks.routing import ENDPOINTS, Endpoint

_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")
PROBLEM = {"$ref": "#/components/schemas/Problem"}


def documented_routes(app: web.Application) -> list[tuple[str, str, Endpoint]]:
    """(method, path, endpoint) of every declared route, HEAD aside."""
    found = []
    for route in app.router.routes():
        spec = ENDPOINTS.get(route.handler)
        if spec is None or route.method in ("HEAD", "*") or route.resource is None:
            continue
        found.append((route.method, route.resource.canonical, spec))
    return found


def build_openapi(app: web.Application, version: str = "0.1.0") -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {"Problem": _problem_schema()}
    for method, path, spec in documented_routes(app):
        paths.setdefault(path, {})[method.lower()] = _operation(method, path, spec, schemas)
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
            str(spec.status): {"description": "Success", "content": {spec.media_type: {}}},
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
        name = spec.body.__name__
        schema = spec.body.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
        operation["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
        }
    if spec.response is not None:
        name = spec.response.__name__
        schema = spec.response.model_json_schema(
            ref_template="#/components/schemas/{model}", mode="serialization"
        )
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
        success = operation["responses"][str(spec.status)]["content"][spec.media_type]
        success["schema"] = {"$ref": f"#/components/schemas/{name}"}
    if spec.role is not None:
        operation["security"] = [{"bearer": []}]
        operation["x-required-role"] = spec.role.value
        operation["responses"]["401"] = _problem_response("No or an invalid bearer token")
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
