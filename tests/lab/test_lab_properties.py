"""Property tests against a real server: every valid report round-trips, every invalid one is refused.

Reports are drawn from report.v1 itself (lab_fuzz.py). A valid report must come back equal through
GET /reports/{id}, be listed under its own filters and appear in the CSV export with every text cell
safe for spreadsheets; an invalid one must get a 4xx and leave the database as it was.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from lab_fuzz import check_mutated, check_raw_body, check_round_trip, mutated_reports, raw_bodies, reports

# Each example is a few HTTP round trips and a draw (30-300 ms); 25 per database keeps the file near 40 s.
PROPERTY_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@PROPERTY_SETTINGS
@given(report=reports())
def test_valid_report_round_trips_through_api_and_csv(report: dict[str, Any], api, device) -> None:
    check_round_trip(api, device, report)


@PROPERTY_SETTINGS
@given(report=mutated_reports())
def test_mutated_report_is_stored_only_if_the_schema_admits_it(report: dict[str, Any], api, device, rows) -> None:
    check_mutated(api, device, rows, report)


@PROPERTY_SETTINGS
@given(body=raw_bodies())
def test_arbitrary_bytes_get_a_one_line_4xx(body: bytes, api, device, rows) -> None:
    check_raw_body(api, device, rows, body)
