"""schemathesis against the lab's own OpenAPI document, on a real server (SQLite and PostgreSQL).

Every operation gets requests generated from the spec served by the running lab, valid ones
(positive mode, report bodies drawn from report.v1) and invalid ones (negative mode). Asserted for
each: no 5xx, the answer matches the spec (status, content type, headers, body schema), a refused
request leaves the database as it was, and an acknowledged report reads back as posted.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from lab_fuzz import check_case
from schemathesis.generation.modes import GenerationMode

# Examples per mode and database across all operations: about 20 s each on 2 cores.
MAX_EXAMPLES = 120


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
        seen.append((case.method, case.path, check_case(case, lab_server.url, device, rows)))

    run()
    print(f"{mode}: {len(seen)} requests, statuses {sorted(Counter(status for *_, status in seen).items())}")
    if mode is GenerationMode.POSITIVE:
        # (Negative mode skips operations that take no input: nothing about them can be made invalid.)
        assert len({(method, path) for method, path, _ in seen}) == len(list(api_schema.get_all_operations()))
        assert any(s == 201 for method, path, s in seen if (method, path) == ("POST", "/api/v1/reports"))
