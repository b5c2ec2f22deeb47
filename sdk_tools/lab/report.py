"""``memwall lab report``: load summaries from a lab server or its database; plot and export them."""

from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import make_url

from sdk_tools.lab.client import iter_summaries
from sdk_tools.lab.store import ReportFilter, iter_reports
from sdk_tools.lab.summary import ReportSummary

MiB = 1024 * 1024
MAX_PLOTTED_GROUPS = 60


def summaries_from_server(url: str, where: ReportFilter) -> list[ReportSummary]:
    filters = {
        "device": where.device_id,
        "backend": where.backend,
        "model": where.model,
        "status": where.status,
    }
    return [ReportSummary.from_json(item) for item in iter_summaries(url, **filters)]


def summaries_from_db(db_url: str, where: ReportFilter) -> list[ReportSummary]:
    from sdk_tools.lab.db import open_database

    parsed = make_url(db_url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        raise FileNotFoundError(f"no lab database at {parsed.database}")
    # A reporting tool must not change the schema of a database a server may be using.
    db = open_database(db_url, migrate=False)
    try:
        return list(iter_reports(db, where))
    finally:
        db.close()


def _groups(summaries: list[ReportSummary]) -> dict[tuple[str, str, str, str], list[ReportSummary]]:
    groups: dict[tuple[str, str, str, str], list[ReportSummary]] = defaultdict(list)
    for s in summaries:
        if s.status == "ok" and s.measured_peak_bytes is not None:
            groups[(s.device_name, s.model, s.backend, s.plan)].append(s)
    return groups


def plot_png(summaries: list[ReportSummary], path: Path) -> int:
    """Predicted vs measured peak per device/model/backend/plan; returns the number of groups drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _groups(summaries)
    keys = sorted(groups)[:MAX_PLOTTED_GROUPS]
    # Summaries are newest first, so [0] is the latest prediction for the group.
    predicted = [groups[k][0].predicted_peak_bytes / MiB for k in keys]
    measured = [statistics.median(s.measured_peak_bytes or 0 for s in groups[k]) / MiB for k in keys]
    errors = [100.0 * (m - p) / p if p else 0.0 for p, m in zip(predicted, measured, strict=True)]
    labels = [f"{device} · {model} · {backend}\n{plan[:60]}" for device, model, backend, plan in keys]
    failed = sum(s.status != "ok" for s in summaries)

    height = max(3.0, 0.55 * len(keys) + 1.6)
    fig, (bars, err) = plt.subplots(
        1, 2, figsize=(13, height), sharey=True, gridspec_kw={"width_ratios": [3, 1]}, layout="constrained"
    )
    rows = range(len(keys))
    bars.barh([r - 0.2 for r in rows], predicted, height=0.4, label="predicted peak", color="#3e63dd")
    bars.barh([r + 0.2 for r in rows], measured, height=0.4, label="measured peak (median)", color="#f76808")
    bars.set_yticks(list(rows), labels, fontsize=8)
    # Top to bottom in sorted order, without the default half-row margins.
    bars.set_ylim(max(len(keys), 1) - 0.5, -0.5)
    bars.set_xlabel("MiB above pre-load baseline")
    bars.legend(loc="lower right", fontsize=8)
    bars.grid(axis="x", alpha=0.3)
    err.barh(list(rows), errors, color=["#b42318" if abs(e) > 25 else "#667085" for e in errors])
    err.axvline(0, color="black", linewidth=0.8)
    err.set_xlabel("error % (measured vs predicted)")
    err.grid(axis="x", alpha=0.3)
    if not keys:
        bars.text(0.5, 0.5, "no successful runs with a measured peak", ha="center", transform=bars.transAxes)
    runs = sum(len(groups[k]) for k in keys)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    fig.suptitle(f"memwall lab: predicted vs measured peak ({runs} ok runs, {failed} failed) · {stamp}")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return len(keys)
