"""Well-formed example reports: the reference for app developers, and the load of tests and benchmarks."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from typing import Any

MiB = 1024 * 1024
PLANS: tuple[dict[str, Any], ...] = (
    {"name": "full-finetune"},
    {"name": "lora-r8", "lora": {"rank": 8}},
    {"name": "lora-r8+recompute", "lora": {"rank": 8}, "recompute": {"segments": "auto"}},
)


def example_report(
    device_id: str,
    *,
    status: str = "ok",
    backend: str = "executorch",
    model: str = "mobilenet_v3_small",
    plan: dict[str, Any] | None = None,
    predicted_peak_bytes: int = 96 * MiB,
    measured_delta_bytes: int | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """A report that satisfies report.v1; failed statuses carry partial data, as a killed app's would."""
    rng = random.Random(seed)
    measured = measured_delta_bytes or int(predicted_peak_bytes * rng.uniform(0.9, 1.15))
    baseline = 48 * MiB
    predicted = {
        "planned_arena_bytes": predicted_peak_bytes // 2,
        "parameter_bytes": predicted_peak_bytes // 5,
        "trainable_parameter_bytes": predicted_peak_bytes // 20,
        "gradient_bytes": predicted_peak_bytes // 20,
        "optimizer_state_bytes": predicted_peak_bytes // 10,
        "runtime_overhead_bytes": predicted_peak_bytes // 10,
        "predicted_peak_bytes": predicted_peak_bytes,
    }
    steps = 20
    report: dict[str, Any] = {
        "schema_version": 1,
        "device": {
            "device_id": device_id,
            "model": "Pixel 8",
            "manufacturer": "Google",
            "os": "android",
            "os_version": "14",
            "ram_bytes": 8 * 1024 * MiB,
            "app_memory_limit_bytes": 512 * MiB,
            "abi": "arm64-v8a",
        },
        "bundle": {
            "manifest_sha256": rng.randbytes(32).hex(),
            "name": f"{model}-{backend}",
            "backend": backend,
            "model": model,
            "plan": plan if plan is not None else PLANS[1],
            "predicted_peak_bytes": predicted_peak_bytes,
            "predicted": predicted,
        },
        "run": {
            "report_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "started_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "steps": steps,
            "batch_size": 8,
            "micro_batches": 2,
            "step_times_ms": [round(rng.uniform(80, 120), 2) for _ in range(steps)],
            "loss_curve": [round(2.3 * 0.9**i, 4) for i in range(steps)],
            "accuracy_before": 0.12,
            "accuracy_after": 0.61,
            "threads": 4,
        },
        "memory": {
            "peak_rss_bytes": baseline + measured,
            "baseline_bytes": baseline,
            "peak_delta_bytes": measured,
            "native_heap_bytes": measured // 2,
            "samples": [{"t_ms": 100.0 * i, "rss_bytes": baseline + measured * i // steps} for i in range(steps + 1)],
        },
        "status": status,
        "error": None,
    }
    if status != "ok":
        # A killed run reports what it had: no accuracy, the steps it finished, the memory seen so far.
        report["run"] = {k: report["run"][k] for k in ("report_id", "started_at", "batch_size", "threads")}
        report["run"]["steps"] = steps // 2
        report["memory"] = {"baseline_bytes": baseline, "samples": report["memory"]["samples"][: steps // 2]}
        report["error"] = {
            "kind": {"oom": "oom_kill", "crash": "SIGSEGV", "error": "exception"}[status],
            "message": f"training stopped: {status}",
            "signal": {"oom": 9, "crash": 11}.get(status),
        }
    return report
