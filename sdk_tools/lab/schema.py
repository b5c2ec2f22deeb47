"""Parse and validate report bodies against the JSON Schema shipped with the package.

The schema file is the contract with the phone apps, so the server validates against it rather than
against a parallel set of Python models that could drift from it. Validation uses jsonschema-rs: the
pure-Python validator took 5 ms for a typical report and 2 s for a 1 MiB one, CPU that a client could
make the server spend at will.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import jsonschema_rs

SCHEMA_VERSION = 1
SCHEMA_RESOURCE = "report.v1.schema.json"
MAX_REPORTED_ERRORS = 20
MAX_INT_DIGITS = 4000


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str


class ReportInvalid(Exception):
    """A body that is not a storable report; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, errors: Sequence[FieldError] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = tuple(errors)


def schema_text() -> str:
    return resources.files("sdk_tools.lab").joinpath("schemas", SCHEMA_RESOURCE).read_text("utf-8")


@cache
def report_schema() -> dict[str, Any]:
    return json.loads(schema_text())


@cache
def _validator() -> jsonschema_rs.Draft202012Validator:
    # Formats are checked so that run.started_at is a real date (no February 30) that storage accepts.
    return jsonschema_rs.Draft202012Validator(report_schema(), validate_formats=True)


def json_path(parts: Sequence[str | int]) -> str:
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _reject_constant(name: str) -> float:
    # NaN and Infinity are not JSON; PostgreSQL and the apps' decoders would reject them later.
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(literal: str) -> float:
    # 1e400 is valid JSON but parses to infinity, which cannot be written back as JSON.
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"number {literal[:40]} is out of the range of a 64-bit float")
    return value


def _bounded_int(literal: str) -> int:
    # Python refuses to convert more digits than this, with advice meant for programmers, not apps.
    if len(literal) > MAX_INT_DIGITS:
        raise ValueError(f"an integer has {len(literal)} digits, more than the {MAX_INT_DIGITS} a report may use")
    return int(literal)


_SUSPECT_ESCAPE = re.compile(r"\\u(0000|[dD][89a-fA-F])")


def _bad_text(value: str) -> str | None:
    if "\x00" in value:
        return "contains a NUL character"
    if any("\ud800" <= ch <= "\udfff" for ch in value):
        return "contains an unpaired UTF-16 surrogate"
    return None


def _text_errors(node: Any, parts: list[str | int]) -> Iterator[FieldError]:
    """Strings that decode as JSON but cannot be stored as text in SQLite or PostgreSQL."""
    if isinstance(node, str):
        if problem := _bad_text(node):
            yield FieldError(json_path(parts), f"string {problem}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _text_errors(item, [*parts, index])
    elif isinstance(node, dict):
        for key, item in node.items():
            if problem := _bad_text(key):
                yield FieldError(json_path(parts), f"member name {problem}")
            else:
                yield from _text_errors(item, [*parts, key])


def decode_json(body: bytes) -> Any:
    """Decode a request body, raising ReportInvalid(400) for anything that is not strict UTF-8 JSON."""
    if not body.strip():
        raise ReportInvalid(400, "request body is empty; expected a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReportInvalid(400, f"request body is not valid UTF-8 (byte offset {exc.start})") from exc
    try:
        document = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        raise ReportInvalid(400, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except ValueError as exc:
        raise ReportInvalid(400, f"malformed JSON: {exc}") from exc
    except RecursionError as exc:
        raise ReportInvalid(400, "malformed JSON: nested too deeply") from exc
    # Both bad kinds of string can only come from \\u escapes, which most bodies do not have at all.
    text_errors = list(_text_errors(document, [])) if _SUSPECT_ESCAPE.search(text) else []
    if text_errors:
        raise ReportInvalid(400, "request body contains strings that cannot be stored", text_errors)
    return document


def _describe(error: jsonschema_rs.ValidationError) -> FieldError:
    parts = list(error.instance_path)
    # Point at the missing member itself, which is what an app developer needs to find.
    if isinstance(error.kind, jsonschema_rs.ValidationErrorKind.Required):
        return FieldError(json_path([*parts, error.kind.property]), "required property is missing")
    return FieldError(json_path(parts), error.message)


def schema_errors(document: Any) -> list[FieldError]:
    return sorted((_describe(e) for e in _validator().iter_errors(document)), key=lambda e: e.path)


def validate_report(document: Any) -> dict[str, Any]:
    """Return the report if it satisfies the schema (run.started_at's pattern and format make it a real date)."""
    errors = schema_errors(document)
    if errors:
        shown = errors[:MAX_REPORTED_ERRORS]
        summary = f"report does not match {SCHEMA_RESOURCE}: {shown[0].path}: {shown[0].message}"
        if len(errors) > 1:
            summary += f" (and {len(errors) - 1} more)"
        raise ReportInvalid(422, summary, shown)
    return document


def parse_report(body: bytes) -> dict[str, Any]:
    return validate_report(decode_json(body))
