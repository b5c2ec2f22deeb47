"""Posting needs the bearer token of the device the report is about; refusals write nothing."""

from __future__ import annotations

import pytest

from sdk_tools.lab.client import register_device
from sdk_tools.lab.examples import example_report


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing bearer token"),
        ({"Authorization": "Bearer not-a-real-token"}, "unknown bearer token"),
        ({"Authorization": "Basic dXNlcjpwdw=="}, "missing bearer token"),
        ({"Authorization": "Bearer"}, "missing bearer token"),
    ],
)
def test_missing_or_wrong_token_is_401(api, device, rows, headers, message) -> None:
    before = rows.snapshot()
    answer = api.post("/api/v1/reports", example_report(device.device_id), **headers)
    assert answer.status == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert message in answer.body["message"]
    assert rows.snapshot() == before


def test_another_devices_token_is_403(lab_server, api, device, rows) -> None:
    _, other_token = register_device(lab_server.url, "someone-else")
    before = rows.snapshot()
    answer = api.post("/api/v1/reports", example_report(device.device_id), token=other_token)
    assert answer.status == 403
    assert "device.device_id" in answer.body["message"]
    assert rows.snapshot() == before
    assert rows.reports(device_id=device.device_id) == 0
