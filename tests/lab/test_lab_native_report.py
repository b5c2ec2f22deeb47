"""A real ``memwall lab serve`` takes a report written by the native runner (runtime/build/memwall-run) and shows
the prediction error against the native runtime's prediction (the manifest's memory.by_runtime.memwall_native), not
the host runner's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np

from exporters import ModelSpec, OptimizerConfig, export_bundle
from exporters.bundle import HOST_RUNTIME, NATIVE_RUNTIME
from sdk_tools.lab.client import get_json, host_device_info, post_report, register_device
from sdk_tools.lab.summary import error_pct, measured_peak_bytes
from tests.conftest import REFERENCE_CASES, make_model
from tests.lab.conftest import LabServer


def test_the_lab_shows_the_native_prediction_error_of_a_native_run(native: Path, tmp_path: Path) -> None:
    """A Linux board's flow: register, run memwall-run with the registered device (--device-json), post its report."""
    bundle = export_bundle(
        make_model("mlp"),
        tmp_path / "mlp",
        sample_shape=REFERENCE_CASES["mlp"][1],
        batch_size=4,
        optimizer=OptimizerConfig(kind="sgd", lr=0.05, momentum=0.9),
        model_spec=ModelSpec("mlp", {}),
    )
    memory = json.loads((bundle.directory / "manifest.json").read_text())["memory"]
    predicted = memory["by_runtime"][NATIVE_RUNTIME]["predicted_peak_bytes"]
    assert predicted != memory["by_runtime"][HOST_RUNTIME]["predicted_peak_bytes"]  # else the test shows nothing
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.random((8, *bundle.manifest.sample_shape), dtype=np.float32), y=rng.integers(0, 10, 8))
    server = LabServer(f"sqlite:///{tmp_path / 'lab.db'}", tmp_path / "server.log").start()
    try:
        device_id, token = register_device(server.url, "linux-board")
        device = tmp_path / "device.json"
        device.write_text(json.dumps({**host_device_info(), "device_id": device_id}))
        report_path = tmp_path / "report.json"
        command = [str(native), str(bundle.directory), "--data", str(data), "--steps", "5"]
        done = subprocess.run(
            [*command, "--device-json", str(device), "--report", str(report_path)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(report_path.read_text())
        created = post_report(server.url, token, report)
        stored = get_json(server.url, f"/api/v1/reports/{created['id']}")["report"]
        (summary,) = get_json(server.url, "/api/v1/reports", {"device": device_id})["items"]
    finally:
        server.stop()
    assert stored["run"]["runtime"] == NATIVE_RUNTIME
    assert stored["bundle"]["predicted_peak_bytes"] == predicted
    measured = measured_peak_bytes(report["memory"])
    assert summary["predicted_peak_bytes"] == predicted and summary["measured_peak_bytes"] == measured
    assert summary["error_pct"] is not None
    assert summary["error_pct"] == error_pct(predicted, measured)
