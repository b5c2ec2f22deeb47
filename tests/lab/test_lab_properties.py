"""Property tests against a real server: every valid report round-trips, every invalid one is refused.

Reports are drawn from report.v1 itself (lab_strategies.py). A valid report must come back byte-for-byte
equal through GET /reports/{id}, be listed under its own filters and appear in the CSV export with every
text cell safe for spreadsheets; an invalid one must get a 4xx and leave the database as it was.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import urllib.parse
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lab_strategies import is_formula, reports

from sdk_tools.lab.schema import schema_errors
from sdk_tools.lab.store import ERROR_MESSAGE_CHARS
from sdk_tools.lab.summary import measured_peak_bytes, plan_label

# Each example is a few HTTP round trips and a draw (30-300 ms); 25 per database keeps the file near 40 s.
PROPERTY_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _query(**params: str) -> str:
    return urllib.parse.urlencode(params)


def _csv_rows(api, device_id: str) -> list[dict[str, str]]:
    answer = api.get(f"/api/v1/reports.csv?{_query(device=device_id)}")
    assert answer.status == 200
    return list(csv.DictReader(io.StringIO(answer.body, newline="")))


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _unescaped(cell: str) -> str:
    return cell[1:] if cell.startswith("'") and is_formula(cell[1:]) else cell


@PROPERTY_SETTINGS
@given(report=reports())
def test_valid_report_round_trips_through_api_and_csv(report: dict[str, Any], api, device, rows) -> None:
    report = {**report, "device": {**report["device"], "device_id": device.device_id}}
    report["run"] = {**report["run"], "report_id": str(uuid.uuid4())}
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

    (line,) = [r for r in _csv_rows(api, device.device_id) if r["id"] == str(row_id)]
    # Numbers (a negative error %) may start with "-"; text never starts a formula.
    assert not any(is_formula(cell) and not _is_number(cell) for cell in line.values()), line
    assert _unescaped(line["model"]) == report["bundle"]["model"]
    assert _unescaped(line["device_name"]) == summary["device_name"]
    assert _unescaped(line["error_message"]) == (summary["error_message"] or "")


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
    return _mutated(draw, draw(reports()))


@PROPERTY_SETTINGS
@given(report=mutated_reports())
def test_mutated_report_is_stored_only_if_the_schema_admits_it(report: dict[str, Any], api, device, rows) -> None:
    if isinstance(report.get("device"), dict):
        report["device"] = {**report["device"], "device_id": device.device_id}
    if isinstance(report.get("run"), dict) and "report_id" in report["run"]:
        report["run"]["report_id"] = str(uuid.uuid4())
    before = rows.snapshot()
    answer = api.post("/api/v1/reports", report, token=device.token)
    if schema_errors(json.loads(json.dumps(report))):
        assert answer.status == 422, answer.body
        assert answer.body["errors"] and answer.body["message"].startswith("report does not match")
        assert rows.snapshot() == before
    else:
        assert answer.status == 201, answer.body


@PROPERTY_SETTINGS
@given(body=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_arbitrary_bytes_get_a_one_line_4xx(body: bytes, api, device, rows) -> None:
    before = rows.snapshot()
    answer = api.post("/api/v1/reports", body, token=device.token)
    assert 400 <= answer.status < 500
    assert "\n" not in answer.body["message"]
    assert rows.snapshot() == before
