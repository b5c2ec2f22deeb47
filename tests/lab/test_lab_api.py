"""The HTTP API end to end: a real server, a real database."""

from __future__ import annotations

import csv
import io
import uuid

from sdk_tools.lab.client import get_json, post_report, register_device
from sdk_tools.lab.examples import PLANS, example_report


def test_health_names_the_database(api, db_factory) -> None:
    answer = api.get("/api/v1/health")
    assert answer.status == 200
    assert answer.body == {
        "status": "ok",
        "database": db_factory.kind,
        "api_version": "v1",
        "schema_version": 1,
    }


def test_register_returns_id_and_token_and_stores_only_a_hash(api, rows) -> None:
    answer = api.post("/api/v1/devices", {"name": "pixel-8-lab"})
    assert answer.status == 201
    device_id, token = answer.body["device_id"], answer.body["token"]
    uuid.UUID(device_id)
    assert len(token) >= 40
    with rows.engine.connect() as connection:
        stored = connection.exec_driver_sql(f"SELECT name, token_sha256 FROM devices WHERE id = '{device_id}'").one()
    assert stored[0] == "pixel-8-lab"
    assert token not in stored[1] and len(stored[1]) == 64


def test_register_validates_its_body(api) -> None:
    answer = api.post("/api/v1/devices", {"name": ""})
    assert answer.status == 422
    assert answer.body["errors"][0]["path"] == "$.body.name"


def test_post_then_read_back(lab_server, device, rows) -> None:
    report = example_report(device.device_id, predicted_peak_bytes=100 * 2**20, measured_delta_bytes=110 * 2**20)
    ack = post_report(lab_server.url, device.token, report)
    assert ack["created"] is True and ack["report_id"] == report["run"]["report_id"]
    detail = get_json(lab_server.url, f"/api/v1/reports/{ack['id']}")
    assert detail["report"] == report
    summary = detail["summary"]
    assert summary["device_id"] == device.device_id
    assert summary["plan"] == "lora-r8"
    assert summary["measured_peak_bytes"] == 110 * 2**20
    assert summary["error_pct"] == -9.09  # the same sign and denominator as memwall measure: (100 - 110) / 110
    assert rows.reports(device_id=device.device_id) == 1


def test_failed_runs_are_stored_with_their_error(lab_server, device) -> None:
    ack = post_report(lab_server.url, device.token, example_report(device.device_id, status="oom"))
    summary = get_json(lab_server.url, f"/api/v1/reports/{ack['id']}")["summary"]
    assert (summary["status"], summary["error_kind"], summary["measured_peak_bytes"]) == (
        "oom",
        "oom_kill",
        None,
    )


def test_filters_and_cursor_pagination(lab_server, device) -> None:
    other = register_device(lab_server.url, "other")
    for i in range(5):
        backend = "onnxruntime" if i % 2 else "executorch"
        post_report(lab_server.url, device.token, example_report(device.device_id, backend=backend, plan=PLANS[i % 3]))
    post_report(lab_server.url, other[1], example_report(other[0], status="crash"))

    mine = {"device": device.device_id}
    assert get_json(lab_server.url, "/api/v1/reports", {**mine, "backend": "onnxruntime"})["total"] == 2
    assert get_json(lab_server.url, "/api/v1/reports", {"device": other[0], "status": "crash"})["total"] == 1
    assert get_json(lab_server.url, "/api/v1/reports", {**mine, "status": "crash"})["total"] == 0

    seen, cursor = [], None
    while True:
        page = get_json(lab_server.url, "/api/v1/reports", {**mine, "limit": 2, "cursor": cursor})
        assert page["total"] == 5 and len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen, reverse=True) and len(set(seen)) == 5


def test_query_parameters_are_validated(api) -> None:
    answer = api.get("/api/v1/reports?limit=0")
    assert answer.status == 422
    assert answer.body["errors"][0]["path"] == "$.query.limit"


def test_unknown_report_is_404_and_impossible_ids_are_422(api) -> None:
    answer = api.get("/api/v1/reports/987654321")
    assert answer.status == 404 and "987654321" in answer.body["message"]
    too_big = api.get(f"/api/v1/reports/{2**64}")
    assert too_big.status == 422 and too_big.body["errors"][0]["path"] == "$.path.row_id"


def test_csv_export_has_one_row_per_report(lab_server, device, api) -> None:
    for status in ("ok", "oom"):
        post_report(lab_server.url, device.token, example_report(device.device_id, status=status))
    answer = api.get(f"/api/v1/reports.csv?device={device.device_id}")
    assert answer.status == 200 and answer.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(answer.body)))
    assert sorted(row["status"] for row in table) == ["ok", "oom"]
    assert {row["device_id"] for row in table} == {device.device_id}


def test_csv_neutralises_spreadsheet_formulas(lab_server, api) -> None:
    device_id, token = register_device(lab_server.url, "=HYPERLINK(1)")
    post_report(lab_server.url, token, example_report(device_id))
    table = list(csv.DictReader(io.StringIO(api.get(f"/api/v1/reports.csv?device={device_id}").body)))
    assert table[0]["device_name"] == "'=HYPERLINK(1)"


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for value in node.values() for r in _refs(value)]
    return [r for item in node for r in _refs(item)] if isinstance(node, list) else []


def test_openapi_spec_carries_the_report_schema(api) -> None:
    spec = api.get("/api/v1/openapi.json").body
    body = spec["paths"]["/api/v1/reports"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ReportV1"}
    served = api.get("/api/v1/schemas/report.v1.json").body
    assert spec["components"]["schemas"]["ReportV1"]["title"] == served["title"]
    for name in served["$defs"]:
        assert f"ReportV1_{name}" in spec["components"]["schemas"]
    # Every reference resolves inside the spec itself, so generators and validators can follow it.
    for ref in _refs(spec):
        node = spec
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]


def test_dashboard_is_served_with_a_strict_policy(api) -> None:
    answer = api.get("/")
    assert answer.status == 200 and "memwall device lab" in answer.body
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    chart = api.get("/static/vendor/chart.umd.min.js")
    assert chart.status == 200 and "Released under the MIT License" in chart.body[:300]
