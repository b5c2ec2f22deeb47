"""Derived numbers shown for a report: the plan's label, the measured peak and the prediction error.

Computed once at ingest and stored, so the dashboard, the CSV export and the PNG report cannot disagree.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any

from sdk_tools.figures import prediction_error

MAX_LABEL_CHARS = 500


def _scalar(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))


def plan_label(plan: dict[str, Any]) -> str:
    """A short, stable label for a free-form plan: its ``name`` if given, else its enabled techniques.

    ``{"lora": {"rank": 8}, "checkpointing": true, "fp16": false}`` -> ``checkpointing+lora(rank=8)``.
    """
    name = plan.get("name")
    if isinstance(name, str) and name.strip():
        return name.strip()[:MAX_LABEL_CHARS]
    parts = []
    for key in sorted(plan):
        value = plan[key]
        if value is None or value is False:
            continue
        if value is True:
            parts.append(key)
        elif isinstance(value, dict):
            inner = ",".join(f"{k}={_scalar(v)}" for k, v in sorted(value.items()))
            parts.append(f"{key}({inner})")
        else:
            parts.append(f"{key}={_scalar(value)}")
    return ("+".join(parts) or "baseline")[:MAX_LABEL_CHARS]


def measured_peak_bytes(memory: dict[str, Any] | None) -> int | None:
    """The number compared with the prediction: the peak above the pre-load baseline.

    The planner predicts what training the bundle adds to a process, so the baseline the app (or the
    Python interpreter on a host) had before loading the bundle is left out.
    """
    if not memory:
        return None
    if "peak_delta_bytes" in memory:
        return int(memory["peak_delta_bytes"])
    if "peak_rss_bytes" in memory and "baseline_bytes" in memory:
        return max(0, int(memory["peak_rss_bytes"]) - int(memory["baseline_bytes"]))
    return None


def error_pct(predicted: int, measured: int | None) -> float | None:
    """The prediction error in percent, as ``memwall measure`` and the benchmarks print it
    (``sdk_tools.figures.prediction_error``): positive means the prediction was too high."""
    if measured is None or measured <= 0:
        return None
    return round(100.0 * prediction_error(predicted, measured), 2)


def iso_utc(value: datetime) -> str:
    # SQLite hands back naive datetimes; everything is stored in UTC.
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


@dataclass(frozen=True)
class ReportSummary:
    """One row of the runs table, the CSV export and the PNG report."""

    id: int
    report_id: str
    device_id: str
    device_name: str
    device_model: str
    received_at: str
    started_at: str
    status: str
    backend: str
    model: str
    bundle_name: str
    manifest_sha256: str
    plan: str
    predicted_peak_bytes: int
    measured_peak_bytes: int | None
    peak_rss_bytes: int | None
    error_pct: float | None
    error_kind: str | None
    error_message: str | None

    @classmethod
    def from_row(cls, row: Any, device_name: str) -> ReportSummary:
        return cls(
            id=row.id,
            report_id=row.report_id,
            device_id=row.device_id,
            device_name=device_name,
            device_model=row.device_model,
            received_at=iso_utc(row.received_at),
            started_at=iso_utc(row.started_at),
            status=row.status,
            backend=row.backend,
            model=row.model,
            bundle_name=row.bundle_name,
            manifest_sha256=row.manifest_sha256,
            plan=row.plan_label,
            predicted_peak_bytes=row.predicted_peak_bytes,
            measured_peak_bytes=row.measured_peak_bytes,
            peak_rss_bytes=row.peak_rss_bytes,
            error_pct=error_pct(row.predicted_peak_bytes, row.measured_peak_bytes),
            error_kind=row.error_kind,
            error_message=row.error_message,
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReportSummary:
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


SUMMARY_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ReportSummary))
