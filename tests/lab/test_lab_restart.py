"""Killing the server mid-load loses no acknowledged report, and client retries fill in the rest."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select

from sdk_tools.lab.client import LabClientError, post_report, register_device
from sdk_tools.lab.examples import example_report
from sdk_tools.lab.models import Report

REPORTS = 300
CLIENTS = 8
ACKED_BEFORE_SIGNAL = 80


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_acknowledged_reports_survive_a_restart(new_server, rows_for, sig: signal.Signals) -> None:
    server = new_server().start()
    device_id, token = register_device(server.url, f"restart-{sig.name}")
    reports = [example_report(device_id) for _ in range(REPORTS)]
    acked: dict[str, int] = {}
    refused: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        for report in reports[index::CLIENTS]:
            try:
                ack = post_report(server.url, token, report, retries=0, timeout=10)
            except LabClientError as exc:
                # Only a lost connection is expected; any HTTP error status is a bug.
                if exc.status is not None:
                    refused.append(str(exc))
                continue
            with lock:
                acked[ack["report_id"]] = ack["id"]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(acked) < ACKED_BEFORE_SIGNAL and time.monotonic() < deadline:
        time.sleep(0.005)
    exit_code = server.stop(sig)
    for thread in threads:
        thread.join(timeout=60)
    # uvicorn re-raises SIGTERM after its graceful shutdown, so both end "killed by the signal".
    assert exit_code == -sig
    assert "Traceback" not in server.log()
    assert not refused
    assert ACKED_BEFORE_SIGNAL <= len(acked) < REPORTS, "the signal must land mid-load"

    server.start()
    rows = rows_for(server.db_url)
    with rows.engine.connect() as connection:
        stored = dict(connection.execute(select(Report.report_id, Report.id)).tuples().all())
    lost = {report_id for report_id in acked if stored.get(report_id) != acked[report_id]}
    assert not lost, f"{len(lost)} acknowledged reports lost or renumbered after {sig.name}"

    # The apps retry whatever was not acknowledged; every report ends up stored exactly once.
    def retry(report: dict) -> None:
        ack = post_report(server.url, token, report, retries=3, backoff_s=0.05)
        assert ack["created"] is (ack["report_id"] not in stored)
        assert ack["id"] == acked.get(ack["report_id"], ack["id"])

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        list(pool.map(retry, reports))
    assert rows.reports(device_id=device_id) == REPORTS
