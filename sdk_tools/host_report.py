"""Host runs as lab reports: ``memwall measure/demo`` turn their measurement into a report.v1 document
and post it to a lab server (``--lab URL --token T``) or record it in the embedded local lab (SQLite)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from exporters.bundle import MANIFEST_NAME, atomic_write_bytes
from sdk_tools.lab.client import bundle_section, host_device_info, post_report
from sdk_tools.lab.config import DEFAULT_DATA_DIR, default_db_url
from sdk_tools.lab.db import open_database
from sdk_tools.lab.schema import validate_report
from sdk_tools.lab.store import add_report, register_device
from sdk_tools.measure import Measurement

HOST_DEVICE_FILE = "host-device.json"


def measurement_report(measurement: Measurement, device_id: str) -> dict[str, Any]:
    train = measurement.train
    manifest = json.loads((Path(measurement.bundle) / MANIFEST_NAME).read_text())
    return {
        "schema_version": 1,
        "device": {**host_device_info(), "device_id": device_id},
        "bundle": bundle_section(Path(measurement.bundle) / MANIFEST_NAME, measurement.runtime),
        "run": {
            "report_id": str(uuid.uuid4()),
            "started_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "steps": train["steps_run"],
            "batch_size": manifest["training"]["batch_size"],
            "micro_batches": manifest["training"]["micro_batches"],
            "step_times_ms": [round(t * 1000, 3) for t in train["step_times_s"]],
            "loss_curve": [None if v is None else round(v, 6) for v in train["losses"]],  # null: not finite
            "accuracy_before": train["accuracy_before"],
            "accuracy_after": train["accuracy_after"],
            "threads": measurement.threads,
            "runtime": measurement.runtime,
        },
        "memory": {
            "peak_rss_bytes": measurement.peak_rss_bytes,
            "baseline_bytes": measurement.baseline_rss_bytes,
            "peak_delta_bytes": measurement.peak_delta_bytes,
        },
        "status": "ok",
        "error": None,
    }


def post_to_lab(measurement: Measurement, url: str, token: str, device_id: str) -> dict:
    return post_report(url, token, measurement_report(measurement, device_id))


def record_locally(measurement: Measurement, data_dir: Path = DEFAULT_DATA_DIR) -> int:
    """Store the report in the embedded lab database (``memwall lab serve`` shows it); return its row id.

    This host registers itself once per lab directory; its id is kept in ``host-device.json`` there.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    db = open_database(default_db_url(data_dir))
    try:
        identity = data_dir / HOST_DEVICE_FILE
        if identity.is_file():
            device_id = json.loads(identity.read_text())["device_id"]
        else:
            device_id, _token = register_device(db, host_device_info()["model"])
            atomic_write_bytes(identity, json.dumps({"device_id": device_id}).encode())
        report = validate_report(measurement_report(measurement, device_id))
        return add_report(db, device_id, report).id
    finally:
        db.close()
