"""schemathesis against the lab's own OpenAPI document, on a real server (SQLite and PostgreSQL).

Every operation gets requests generated from the spec served by the running lab, valid ones
(positive mode, report bodies drawn from report.v1) and invalid ones (negative mode). Asserted for
each: no 5xx, the answer matches the spec (status, content type, headers, body schema), a refused
request leaves the database as it was, and an acknowledged report reads back as posted.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode

from sdk_tools.lab.schema import schema_errors

# Examples per mode and database across all operations: about 20 s each on 2 cores.
MAX_EXAMPLES = 120


def _owned(body: Any, device_id: str) -> Any:
    """A valid report posted as the test's device, with a fresh report_id (else draws collide: 409)."""
    if not isinstance(body, dict) or schema_errors(body):
        return body
    run = {**body["run"], "report_id": str(uuid.uuid4())}
    return {**body, "device": {**body["device"], "device_id": device_id}, "run": run}


def check_case(case: Any, url: str, token: str, device_id: str, rows: Any) -> int:
    """Send one schemathesis case and assert what every answer must satisfy; returns the status."""
    if case.method == "POST" and case.path == "/api/v1/reports":
        case.body = _owned(case.body, device_id)
    before = rows.snapshot()
    response = case.call(base_url=url, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code < 500, response.text
    case.validate_response(response)
    if response.status_code >= 400:
        assert rows.snapshot() == before, f"{response.status_code} but the database changed"
        message = response.json()["message"]
        assert message and "\n" not in message
    elif case.method == "POST" and case.path == "/api/v1/reports":
        stored = requests.get(f"{url}{response.headers['location'][0]}", timeout=30)
        assert stored.status_code == 200 and stored.json()["report"] == json.loads(json.dumps(case.body))
    return response.status_code


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_lab_api_matches_its_spec_and_never_fails(mode, lab_server, device, rows) -> None:
    api_schema = schemathesis.openapi.from_url(f"{lab_server.url}/api/v1/openapi.json")
    seen: list[tuple[str, str, int]] = []

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=api_schema.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        seen.append((case.method, case.path, check_case(case, lab_server.url, device.token, device.device_id, rows)))

    run()
    print(f"{mode}: {len(seen)} requests, statuses {sorted(Counter(status for *_, status in seen).items())}")
    if mode is GenerationMode.POSITIVE:
        # (Negative mode skips operations that take no input: nothing about them can be made invalid.)
        assert len({(method, path) for method, path, _ in seen}) == len(list(api_schema.get_all_operations()))
        assert any(s == 201 for method, path, s in seen if (method, path) == ("POST", "/api/v1/reports"))
