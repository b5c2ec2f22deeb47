"""Bad bodies get a 4xx that says what is wrong, nothing is stored, and the server keeps serving."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Iterator

import pytest

from sdk_tools.lab.client import register_device
from sdk_tools.lab.examples import example_report


def _wrong_types(report: dict) -> bytes:
    report["run"]["steps"] = "twenty"
    report["memory"]["peak_rss_bytes"] = -5
    report["bundle"]["plan"] = ["lora"]
    return json.dumps(report).encode()


def _missing_fields(report: dict) -> bytes:
    del report["bundle"]
    del report["run"]["report_id"]
    return json.dumps(report).encode()


CASES = {
    "malformed json": (lambda r: json.dumps(r).encode()[:-20], 400, "malformed JSON", None),
    "not an object": (lambda r: b"[1, 2, 3]", 422, 'is not of type "object"', "$"),
    "wrong types": (_wrong_types, 422, 'is not of type "integer"', "$.run.steps"),
    "missing fields": (_missing_fields, 422, "required property is missing", "$.bundle"),
    "invalid utf-8": (
        lambda r: json.dumps(r).encode().replace(b"Pixel 8", b"Pixel \xc3\x28"),
        400,
        "UTF-8",
        None,
    ),
    "lone surrogate": (
        lambda r: json.dumps(r).replace("Pixel 8", "Pixel \\udc00").encode(),
        400,
        "surrogate",
        None,
    ),
    "nul character": (lambda r: json.dumps(r).replace("Pixel 8", "Pixel\\u0000").encode(), 400, "NUL", None),
    "nan": (lambda r: json.dumps(r).replace('"threads": 4', '"threads": NaN').encode(), 400, "NaN", None),
    "empty": (lambda r: b"", 400, "empty", None),
    "10 MB body": (lambda r: b'{"pad": "' + b"x" * 10_000_000 + b'"}', 413, "exceeds the limit", None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_body_is_refused_clearly_and_stores_nothing(case, api, device, rows) -> None:
    make_body, status, message, path = CASES[case]
    before = rows.snapshot()
    answer = api.post("/api/v1/reports", make_body(example_report(device.device_id)), token=device.token)
    assert answer.status == status
    said = [answer.body["message"]] + [e["message"] for e in answer.body["errors"]]
    assert any(message in text for text in said), said
    if path is not None:
        assert path in [e["path"] for e in answer.body["errors"]]
    assert rows.snapshot() == before
    assert api.get("/api/v1/health").status == 200


def test_chunked_body_over_the_limit_is_cut_off(lab_server, device, rows) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"pad": "'
        for _ in range(20):
            yield b"x" * 100_000

    before = rows.snapshot()
    parsed = urllib.parse.urlsplit(lab_server.url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    headers = {"Authorization": f"Bearer {device.token}", "Content-Type": "application/json"}
    try:
        connection.request("POST", "/api/v1/reports", body=chunks(), headers=headers, encode_chunked=True)
        response = connection.getresponse()
        assert response.status == 413
        assert "exceeds the limit" in json.loads(response.read())["message"]
    finally:
        connection.close()
    assert rows.snapshot() == before


def test_garbage_device_registration_is_refused(api, rows) -> None:
    before = rows.snapshot()
    assert api.post("/api/v1/devices", b"\xff\xfe\x00garbage").status == 422
    assert api.post("/api/v1/devices", {"name": 7}).status == 422
    assert rows.snapshot() == before


def test_limit_is_configurable(new_server, http_for) -> None:
    server = new_server(max_body_bytes=4096).start()
    device_id, token = register_device(server.url, "small-limit")
    small = example_report(device_id, status="oom")
    large = example_report(device_id)
    large["memory"]["samples"] *= 10
    assert len(json.dumps(small)) < 4096 < len(json.dumps(large))
    api = http_for(server.url)
    assert api.post("/api/v1/reports", large, token=token).status == 413
    assert api.post("/api/v1/reports", small, token=token).status == 201
