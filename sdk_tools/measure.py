"""Train a bundle in a child process and measure its peak memory against the manifest's prediction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from exporters.bundle import load_bundle
from sdk_tools.runner.train import TrainConfig


class MeasurementError(RuntimeError):
    """The measuring child failed; the message carries its exit status and the end of its error output."""


@dataclass(frozen=True)
class Measurement:
    bundle: str
    backend: str
    predicted_peak_bytes: int
    planned_arena_bytes: int
    baseline_rss_bytes: int
    peak_rss_bytes: int
    peak_delta_bytes: int
    threads: int
    train: dict[str, Any]

    @property
    def prediction_error(self) -> float:
        """(predicted - measured) / measured: positive means the prediction was too high."""
        return (self.predicted_peak_bytes - self.peak_delta_bytes) / self.peak_delta_bytes

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "prediction_error": self.prediction_error}


def measure_training(bundle_dir: str | Path, config: TrainConfig, threads: int | None = None) -> Measurement:
    """Run ``config`` on the bundle in a fresh interpreter; progress goes to this process's stderr."""
    bundle = load_bundle(bundle_dir)
    with tempfile.TemporaryDirectory(prefix="memwall-measure-") as tmp:
        request = Path(tmp, "request.json")
        result = Path(tmp, "result.json")
        cfg = {**asdict(config), "checkpoint": str(config.checkpoint) if config.checkpoint else None}
        request.write_text(json.dumps({"bundle": str(bundle.directory), "config": cfg}))
        env = dict(os.environ)
        if threads:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        proc = subprocess.run(
            [sys.executable, "-m", "sdk_tools.runner.worker", str(request), str(result)],
            env=env,
            stderr=subprocess.PIPE if not config.progress else None,
            text=True,
        )
        if proc.returncode != 0 or not result.exists():
            tail = (proc.stderr or "")[-2000:]
            raise MeasurementError(f"training child exited with status {proc.returncode}: {tail}")
        output = json.loads(result.read_text())
    memory = output["memory"]
    return Measurement(
        bundle=str(bundle.directory),
        backend=bundle.manifest.backend,
        predicted_peak_bytes=bundle.manifest.memory.predicted_peak_bytes,
        planned_arena_bytes=bundle.manifest.memory.planned_arena_bytes,
        baseline_rss_bytes=memory["baseline_rss_bytes"],
        peak_rss_bytes=memory["peak_rss_bytes"],
        peak_delta_bytes=memory["peak_delta_bytes"],
        threads=output["threads"],
        train=output["train"],
    )
