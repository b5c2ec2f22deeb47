"""The report schema and body decoding, without a server."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from sdk_tools.lab.client import bundle_section, host_device_info
from sdk_tools.lab.examples import example_report
from sdk_tools.lab.schema import ReportInvalid, parse_report, report_schema, validate_report
from sdk_tools.lab.summary import error_pct, measured_peak_bytes, plan_label

DEVICE = str(uuid.uuid4())


def _errors(document: object) -> dict[str, str]:
    with pytest.raises(ReportInvalid) as caught:
        validate_report(document)
    assert caught.value.status == 422
    return {e.path: e.message for e in caught.value.errors}


def test_schema_is_valid_draft_2020_12_with_versioned_id() -> None:
    schema = report_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(":v1")
    assert "schema_version" in schema["required"]


@pytest.mark.parametrize("status", ["ok", "oom", "crash", "error"])
def test_example_reports_validate(status: str) -> None:
    report = example_report(DEVICE, status=status)
    assert validate_report(report) is report


def test_failed_run_with_only_partial_data_is_accepted() -> None:
    report = example_report(DEVICE, status="oom")
    report["run"] = {k: report["run"][k] for k in ("report_id", "started_at")}
    del report["memory"]
    validate_report(report)


def test_ok_run_needs_its_measurements() -> None:
    report = example_report(DEVICE)
    del report["memory"]["peak_delta_bytes"]
    del report["run"]["step_times_ms"]
    assert _errors(report) == {
        "$.memory.peak_delta_bytes": "required property is missing",
        "$.run.step_times_ms": "required property is missing",
    }


def test_failed_run_needs_an_error() -> None:
    report = example_report(DEVICE, status="crash")
    report["error"] = None
    assert "$.error" in _errors(report)


def test_errors_name_the_json_path_of_each_bad_field() -> None:
    report = example_report(DEVICE)
    report["memory"]["samples"][3]["rss_bytes"] = "lots"
    report["bundle"]["backend"] = "tflite"
    report["device"]["colour"] = "blue"
    errors = _errors(report)
    assert errors["$.memory.samples[3].rss_bytes"] == '"lots" is not of type "integer"'
    assert errors["$.bundle.backend"].startswith('"tflite" is not one of')
    assert "'colour' was unexpected" in errors["$.device"]


def test_impossible_date_is_refused_with_its_path() -> None:
    report = example_report(DEVICE)
    report["run"]["started_at"] = "2026-02-30T10:00:00Z"
    assert _errors(report) == {"$.run.started_at": '"2026-02-30T10:00:00Z" is not a "date-time"'}


@pytest.mark.parametrize(
    "started_at", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "2026-06-30T23:59:60Z"]
)
def test_dates_storage_cannot_hold_are_refused_by_the_schema(started_at: str) -> None:
    report = example_report(DEVICE)
    report["run"]["started_at"] = started_at
    assert "does not match" in _errors(report)["$.run.started_at"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "request body is empty"),
        (b'{"schema_version": 1,', "malformed JSON"),
        (b'{"a": NaN}', "NaN is not valid JSON"),
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"a": "\\ud800"}', "unpaired UTF-16 surrogate"),
        (b'{"a\\u0000": 1}', "member name contains a NUL"),
    ],
)
def test_undecodable_bodies_are_400(body: bytes, message: str) -> None:
    with pytest.raises(ReportInvalid) as caught:
        parse_report(body)
    assert caught.value.status == 400
    assert message in caught.value.message + " ".join(e.message for e in caught.value.errors)


def test_host_device_info_and_manifest_fill_a_valid_report(tmp_path: Path) -> None:
    manifest = {
        "schema_version": 1,
        "backend": "onnxruntime",
        "name": "tiny-mlp",
        "model": {"spec": "mlp", "kwargs": {}, "parameters": 500, "trainable_parameters": 50},
        "techniques": [
            {"name": "lora", "config": {"rank": 4}},
            {"name": "recompute", "config": {"segments": "blocks"}},
        ],
        "memory": {
            "planned_arena_bytes": 1000,
            "parameter_bytes": 2000,
            "trainable_parameter_bytes": 200,
            "gradient_bytes": 200,
            "optimizer_state_bytes": 400,
            "predicted_peak_bytes": 3800,
        },
    }
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    report = example_report(DEVICE)
    report["device"] = {**host_device_info(), "device_id": DEVICE}
    report["bundle"] = bundle_section(path)
    validate_report(report)
    assert report["bundle"]["predicted"] == manifest["memory"]
    assert report["bundle"]["model"] == "mlp"
    assert plan_label(report["bundle"]["plan"]) == "lora(rank=4)+recompute(segments=blocks)"


def test_derived_numbers() -> None:
    assert plan_label({"name": "lora-r8", "lora": {"rank": 8}}) == "lora-r8"
    assert plan_label({"fp16": False}) == "baseline"
    assert measured_peak_bytes({"peak_rss_bytes": 150, "baseline_bytes": 50}) == 100
    assert measured_peak_bytes({"baseline_bytes": 50}) is None
    assert error_pct(110, 100) == 10.0  # predicted 10% too high
    assert error_pct(100, 125) == -20.0  # the run used more than predicted
    assert error_pct(100, None) is None
