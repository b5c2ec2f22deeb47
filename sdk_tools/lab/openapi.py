"""The lab's OpenAPI document, with report.v1 as a component the spec's own references resolve in.

The report schema file is self-contained (``$id``, ``$defs`` and ``#/$defs/...`` references). Pasted
into an operation as it is, its references would point at the OpenAPI document's root, where there are
no ``$defs``: tools that generate requests from the spec (schemathesis, client generators) fail on it.
So each definition becomes ``components/schemas/ReportV1_<name>`` and the references follow.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from sdk_tools.lab.schema import report_schema

REPORT_COMPONENT = "ReportV1"
REPORT_REF = f"#/components/schemas/{REPORT_COMPONENT}"


def _component_name(definition: str) -> str:
    return f"{REPORT_COMPONENT}_{definition}"


def _relocated(node: Any) -> Any:
    """A copy of ``node`` whose ``#/$defs/X`` references point at the components."""
    if isinstance(node, dict):
        out = {key: _relocated(value) for key, value in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            out["$ref"] = f"#/components/schemas/{_component_name(ref.removeprefix('#/$defs/'))}"
        return out
    if isinstance(node, list):
        return [_relocated(item) for item in node]
    return node


def report_components() -> dict[str, Any]:
    """report.v1 as OpenAPI component schemas: ``ReportV1`` and one ``ReportV1_<def>`` per definition."""
    schema = dict(report_schema())
    definitions = schema.pop("$defs")
    for key in ("$schema", "$id"):
        schema.pop(key)
    components = {REPORT_COMPONENT: _relocated(schema)}
    components.update({_component_name(name): _relocated(body) for name, body in definitions.items()})
    return components


def lab_openapi(app: FastAPI) -> dict[str, Any]:
    """``app.openapi`` for the lab: FastAPI's document plus the report components, built once."""
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, routes=app.routes)
        document.setdefault("components", {}).setdefault("schemas", {}).update(report_components())
        app.openapi_schema = document
    return app.openapi_schema
