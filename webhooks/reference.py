"""The API reference page at ``/v1/docs``: the OpenAPI document rendered to HTML on the server.

No script and no CDN: the page is the document (:func:`webhooks.openapi.build_openapi`) put
through a Jinja template, so it says exactly what ``/v1/openapi.json`` says, readable offline
and behind a firewall.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from jinja2 import Environment, PackageLoader, select_autoescape

from webhooks.openapi import build_openapi
from webhooks.routing import endpoint

_REF = "#/components/schemas/"
_templates = Environment(
    loader=PackageLoader("webhooks", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def type_text(schema: dict[str, Any]) -> str:
    """A schema as a short type: ``string``, ``list of RunSummary``, ``Actor or null``, ``"a" | "b"``."""
    if "$ref" in schema:
        return str(schema["$ref"]).removeprefix(_REF)
    if "enum" in schema:
        return " | ".join(f'"{v}"' for v in schema["enum"])
    if "const" in schema:
        return f'"{schema["const"]}"'
    for combined in ("anyOf", "oneOf", "allOf"):
        if combined in schema:
            joiner = " and " if combined == "allOf" else " or "
            return joiner.join(type_text(part) for part in schema[combined])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {type_text(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map of {type_text(schema['additionalProperties'])}"
    if isinstance(kind, list):
        return " or ".join(kind)
    return f"{kind} ({schema['format']})" if "format" in schema else str(kind)


def fields(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of an object schema's table: name, type, required, description."""
    required = set(schema.get("required", []))
    return [
        {
            "name": name,
            "type": type_text(prop),
            "required": name in required,
            "description": prop.get("description", ""),
            "read_only": prop.get("readOnly", False),
        }
        for name, prop in schema.get("properties", {}).items()
    ]


def reference_html(document: dict[str, Any]) -> str:
    groups: dict[str, list[dict[str, Any]]] = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            tag = (operation.get("tags") or ["other"])[0]
            groups.setdefault(tag, []).append({"path": path, "method": method.upper(), **operation})
    return _templates.get_template("reference.html").render(
        document=document,
        groups=groups,
        schemas=document["components"]["schemas"],
        type_text=type_text,
        fields=fields,
    )


@endpoint(None, tag="operations", media_type="text/html")
async def api_reference(request: web.Request) -> web.StreamResponse:
    """This API's reference, as a page to read (from the same document as /v1/openapi.json)."""
    return web.Response(text=reference_html(build_openapi(request.app)), content_type="text/html")
