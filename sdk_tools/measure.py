"""Train a bundle in a child process and measure its peak memory against the manifest's prediction."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from exporters.bundle import HOST_RUNTIME, Bundle, load_bundle
from sdk_tools.figures import prediction_error
from sdk_tools.memory_cap import create_cgroup_cap
from sdk_tools.runner.isolation import child_env, crash_message, describe_exit, neutral_path, python_command
from sdk_tools.runner.train import TrainConfig


class MeasurementError(RuntimeError):
    """The measuring child failed; the message carries its exit status and the end of its error output."""


class OutOfMemoryError(MeasurementError):
    """The child was killed at the memory cap: the bundle does not fit that budget."""

    def __init__(self, cap_bytes: int, enforced_by: str, predicted_bytes: int) -> None:
        self.cap_bytes = cap_bytes
        self.enforced_by = enforced_by
        super().__init__(
            f"out of memory: training was killed at the {cap_bytes / 2**20:.1f} MiB cap ({enforced_by}); "
            f"the bundle predicts {predicted_bytes / 2**20:.1f} MiB. Export a plan that fits "
            "('memwall plan --budget ...') or raise the cap"
        )


@dataclass(frozen=True)
class Measurement:
    bundle: str
    backend: str
    predicted_peak_bytes: int
    planned_arena_bytes: int
    baseline_rss_bytes: int
    peak_rss_bytes: int
    peak_delta_bytes: int
    phase_peak_delta_bytes: dict[str, int]  # load / train / evaluate_* / checkpoint: each phase's own peak
    threads: int
    train: dict[str, Any]
    cap_bytes: int | None = None  # the hard cap the child ran under, if any
    cap_enforced_by: str | None = None  # "cgroup-v1", "cgroup-v2" or "rss-watchdog"
    runtime: str = HOST_RUNTIME  # the runtime that trained (memory.by_runtime's key of the prediction compared)

    @property
    def prediction_error(self) -> float:
        """See ``sdk_tools.figures.prediction_error``: positive means the prediction was too high."""
        return prediction_error(self.predicted_peak_bytes, self.peak_delta_bytes)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "prediction_error": self.prediction_error}


def predicted_peak(bundle: Bundle, evaluates: bool, runtime: str = HOST_RUNTIME) -> int:
    """The manifest's prediction for a run in ``runtime``: the predict method's arena exists only if it ever runs.
    (``MemoryEstimate.prediction_for``)."""
    memory = bundle.manifest.memory
    return memory.prediction_for(runtime).predicted_peak_bytes - (0 if evaluates else memory.evaluation_arena_bytes)


def measure_training(
    bundle_dir: str | Path, config: TrainConfig, threads: int | None = None, cap_bytes: int | None = None
) -> Measurement:
    """Run ``config`` on the bundle in a fresh interpreter; progress goes to this process's stderr.

    With ``cap_bytes`` the child trains under a hard memory cap over its idle baseline (a memory cgroup, or
    an RSS watchdog where cgroups cannot be made) and ``OutOfMemoryError`` says when it was killed there.
    """
    bundle = load_bundle(bundle_dir)
    cgroup = create_cgroup_cap(cap_bytes) if cap_bytes else None
    enforced_by = (cgroup.enforced_by if cgroup else "rss-watchdog") if cap_bytes else None
    with tempfile.TemporaryDirectory(prefix="memwall-measure-") as tmp:
        request = Path(tmp, "request.json")
        result = Path(tmp, "result.json")
        # The child runs in ``tmp`` (isolation.py): every path it gets must not depend on this process's cwd.
        cfg = {
            **asdict(config),
            "checkpoint": neutral_path(config.checkpoint) if config.checkpoint else None,
            "data": neutral_path(config.data) if config.data.endswith(".npz") else config.data,
        }
        cap = (
            {"bytes": cap_bytes, "cgroup": str(cgroup.path) if cgroup else None, "by": enforced_by}
            if cap_bytes
            else None
        )
        request.write_text(
            json.dumps({"bundle": neutral_path(bundle.directory), "config": cfg, "cap": cap, "threads": threads})
        )
        env = dict(os.environ)
        if threads:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        try:
            proc = subprocess.run(
                python_command("sdk_tools.runner.worker", str(request), str(result)),
                cwd=tmp,
                env=child_env(env),
                stderr=subprocess.PIPE if not config.progress else None,
                text=True,
            )
        finally:
            if cgroup:
                cgroup.remove()
        if cap_bytes and proc.returncode == -signal.SIGKILL:
            raise OutOfMemoryError(cap_bytes, str(enforced_by), bundle.manifest.memory.predicted_peak_bytes)
        output = json.loads(result.read_text()) if result.exists() else {}
        if "error" in output:
            raise MeasurementError(output["error"])
        if proc.returncode < 0:
            raise MeasurementError(crash_message(proc.returncode, f"training {bundle.directory}"))
        if proc.returncode != 0 or not output:
            lines = (proc.stderr or "").strip().splitlines()
            raise MeasurementError(
                f"the training child ended with {describe_exit(proc.returncode)}" + (f": {lines[-1]}" if lines else "")
            )
    memory = output["memory"]
    return Measurement(
        bundle=str(bundle.directory),
        backend=bundle.manifest.backend,
        predicted_peak_bytes=predicted_peak(bundle, evaluates=config.eval_split is not None),
        planned_arena_bytes=bundle.manifest.memory.planned_arena_bytes,
        baseline_rss_bytes=memory["baseline_rss_bytes"],
        peak_rss_bytes=memory["peak_rss_bytes"],
        peak_delta_bytes=memory["peak_delta_bytes"],
        phase_peak_delta_bytes=memory["phase_peak_delta_bytes"],
        threads=output["threads"],
        train=output["train"],
        cap_bytes=cap_bytes,
        cap_enforced_by=enforced_by,
    )
