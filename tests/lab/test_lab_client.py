"""The stdlib client: retries only what can succeed later, and says clearly what went wrong."""

from __future__ import annotations

import threading
import time

import pytest

from sdk_tools.lab.client import LabClientError, host_device_info, post_report, register_device
from sdk_tools.lab.examples import example_report


def test_host_device_info_reads_this_machine() -> None:
    info = host_device_info()
    assert info["ram_bytes"] > 0
    assert info["os"] and info["abi"] and info["cpu"]
    assert "device_id" not in info


def test_unreachable_lab_fails_after_the_retries() -> None:
    started = time.monotonic()
    with pytest.raises(LabClientError) as caught:
        post_report("http://127.0.0.1:9", "token", {"run": {}}, retries=2, backoff_s=0.01, timeout=2)
    assert caught.value.status is None
    assert "gave up after 3 attempts" in str(caught.value)
    assert time.monotonic() - started < 10


def test_client_errors_are_not_retried(lab_server, device) -> None:
    report = example_report(device.device_id)
    report["status"] = "exploded"
    started = time.monotonic()
    with pytest.raises(LabClientError) as caught:
        post_report(lab_server.url, device.token, report, retries=3, backoff_s=5)
    assert caught.value.status == 422 and time.monotonic() - started < 5
    assert caught.value.body["errors"][0]["path"] == "$.status"


def test_retries_reach_a_lab_that_comes_up_late(new_server) -> None:
    server = new_server().start()
    device_id, token = register_device(server.url, "late")
    report = example_report(device_id)
    server.stop()
    restarter = threading.Timer(0.5, server.start)
    restarter.start()
    ack = post_report(server.url, token, report, retries=50, backoff_s=0.1, max_backoff_s=0.3)
    restarter.join()
    assert ack["created"] is True
    assert post_report(server.url, token, report)["id"] == ack["id"]
