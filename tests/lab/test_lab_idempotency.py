"""A report is stored once per (device, run.report_id), however often it is retried."""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

from sdk_tools.lab.client import post_report, register_device
from sdk_tools.lab.examples import example_report


def test_sequential_retries_store_once(api, device, rows) -> None:
    report = example_report(device.device_id)
    answers = [api.post("/api/v1/reports", report, token=device.token) for _ in range(5)]
    assert [a.status for a in answers] == [201, 200, 200, 200, 200]
    assert {a.body["id"] for a in answers} == {answers[0].body["id"]}
    assert [a.body["created"] for a in answers] == [True, False, False, False, False]
    assert answers[1].headers["location"] == f"/api/v1/reports/{answers[0].body['id']}"
    assert rows.reports(device_id=device.device_id) == 1


def test_concurrent_retries_store_once(lab_server, device, rows) -> None:
    report = example_report(device.device_id)
    with ThreadPoolExecutor(max_workers=16) as pool:
        acks = list(pool.map(lambda _: post_report(lab_server.url, device.token, report), range(32)))
    assert len({ack["id"] for ack in acks}) == 1
    assert sum(ack["created"] for ack in acks) == 1
    assert rows.reports(device_id=device.device_id) == 1


def test_report_id_is_case_insensitive(api, device, rows) -> None:
    report = example_report(device.device_id)
    first = api.post("/api/v1/reports", report, token=device.token)
    shouted = copy.deepcopy(report)
    shouted["run"]["report_id"] = report["run"]["report_id"].upper()
    # Same run, different spelling of its id: the canonical payload differs, so it is a conflict, not a copy.
    second = api.post("/api/v1/reports", shouted, token=device.token)
    assert (first.status, second.status) == (201, 409)
    assert rows.reports(device_id=device.device_id) == 1


def test_reusing_a_report_id_for_different_content_is_409(api, device, rows) -> None:
    report = example_report(device.device_id)
    assert api.post("/api/v1/reports", report, token=device.token).status == 201
    changed = copy.deepcopy(report)
    changed["run"]["steps"] += 1
    answer = api.post("/api/v1/reports", changed, token=device.token)
    assert answer.status == 409 and "different content" in answer.body["message"]
    assert rows.reports(device_id=device.device_id) == 1


def test_same_report_id_on_two_devices_is_two_reports(lab_server, device, rows) -> None:
    other_id, other_token = register_device(lab_server.url, "twin")
    mine = example_report(device.device_id, seed=7)
    theirs = example_report(other_id, seed=7)
    assert mine["run"]["report_id"] == theirs["run"]["report_id"]
    assert post_report(lab_server.url, device.token, mine)["created"]
    assert post_report(lab_server.url, other_token, theirs)["created"]
    assert rows.reports(report_id=mine["run"]["report_id"]) == 2
