"""Host runs are lab devices: `memwall measure --lab` posts a real measurement; the demo's embedded lab."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from exporters import OptimizerConfig
from sdk_tools import host_report
from sdk_tools.lab.client import get_json
from sdk_tools.lab.config import default_db_url
from sdk_tools.lab.db import open_database
from sdk_tools.lab.store import ReportFilter, list_reports
from sdk_tools.measure import measure_training
from sdk_tools.runner import TrainConfig
from tests.conftest import export_case


@pytest.fixture(scope="module")
def mlp_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_case(tmp_path_factory.mktemp("host"), "mlp", OptimizerConfig(lr=0.05)).bundle.directory


def test_measure_posts_its_result_to_the_lab(mlp_bundle: Path, lab_server, device, rows) -> None:
    before = rows.reports()
    proc = subprocess.run(
        [sys.executable, "-m", "sdk_tools.cli", "measure", str(mlp_bundle), "--steps", "4", "--json",
         "--lab", lab_server.url, "--token", device.token, "--device-id", device.device_id],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = json.loads(proc.stdout)
    assert rows.reports() == before + 1
    page = get_json(lab_server.url, "/api/v1/reports", {"device": device.device_id})
    (summary,) = page["items"]
    stored = get_json(lab_server.url, f"/api/v1/reports/{summary['id']}")["report"]
    assert stored["memory"]["peak_delta_bytes"] == measured["peak_delta_bytes"]
    assert stored["bundle"]["predicted_peak_bytes"] == measured["predicted_peak_bytes"]
    assert stored["bundle"]["backend"] == "executorch" and stored["bundle"]["model"] == "mlp"
    assert len(stored["run"]["loss_curve"]) == 4


def test_local_lab_records_into_embedded_sqlite(mlp_bundle: Path, tmp_path: Path) -> None:
    measurement = measure_training(mlp_bundle, TrainConfig(steps=3, progress=False, checkpoint_every=0))
    first = host_report.record_locally(measurement, data_dir=tmp_path)
    second = host_report.record_locally(measurement, data_dir=tmp_path)
    assert first != second  # two runs, two reports, one registered host device
    db = open_database(default_db_url(tmp_path))
    try:
        page = list_reports(db, ReportFilter(), limit=10)
        assert len(page.items) == 2
        assert len({item.device_id for item in page.items}) == 1
    finally:
        db.close()
