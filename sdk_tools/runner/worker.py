"""Child-process entry point that trains a bundle and measures its memory.

Run as ``python -P -m sdk_tools.runner.worker REQUEST.json RESULT.json`` in a neutral directory
(``isolation.python_command``). It imports the runtime, loads the data
and runs the host runner's own tensor work once (``host_warmup``) first, records that as the idle baseline and
resets the peak (``/proc/self/clear_refs``), then opens the bundle and trains: the peak it reports is what
training itself costs, not the parent's imports or the host runner's code.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from sdk_tools.quiet import quiet_library_chatter

# This process's stderr is the user's terminal (`memwall demo`, `memwall measure`): quiet before the imports below,
# which load torchao (its CUDA kernels' load failures were printed once per measurement, seen in `memwall demo`).
quiet_library_chatter()

from exporters.bundle import Bundle, BundleError, load_bundle  # noqa: E402
from sdk_tools.memory import proc_status_bytes, release_free_memory, reset_peak  # noqa: E402
from sdk_tools.memory_cap import CgroupCap, start_rss_watchdog  # noqa: E402
from sdk_tools.runner.checkpoint import CheckpointError  # noqa: E402
from sdk_tools.runner.host_warmup import warm_host_code  # noqa: E402
from sdk_tools.runner.session import InputError  # noqa: E402
from sdk_tools.runner.train import TrainConfig, dataset_for, open_session, train  # noqa: E402


def load_runtime(bundle: Bundle, threads: int | None = None) -> int:
    """Import the runtime (so its libraries and, for ExecuTorch, its sized thread pool are part of the idle
    baseline); return its thread count."""
    if bundle.manifest.backend == "executorch":
        from sdk_tools.runner.executorch_session import configure_runtime

        return configure_runtime(bundle, threads)
    import onnxruntime.training.api  # noqa: F401  (~60 MB of libraries that are not training's cost)

    # ORT's intra-op pool defaults to one thread per physical core.
    return max(1, (os.cpu_count() or 2) // 2) if os.cpu_count() else 1


class PhasePeaks:
    """Peak resident memory of each phase (load, train, evaluate, checkpoint), the highest over its visits.

    The peak is reset as each phase starts, so a phase's figure is its own high-water mark, not an earlier
    phase's; the process's peak is the largest of them.
    """

    def __init__(self, baseline: int) -> None:
        self.baseline = baseline
        self.peaks: dict[str, int] = {}
        self._current: str | None = None

    def start(self, name: str | None) -> None:
        if self._current is not None:
            hwm = proc_status_bytes("VmHWM")
            self.peaks[self._current] = max(self.peaks.get(self._current, 0), hwm)
        self._current = name
        release_free_memory()
        reset_peak()


def main(request_path: str, result_path: str) -> int:
    """Train and write the measurement; a refused bundle, checkpoint or data file is written as ``{"error"}``
    (one line for the parent to show) with exit status 2, not a traceback."""
    try:
        return measure(request_path, result_path)
    except (BundleError, CheckpointError, InputError, ValueError, OSError, KeyError) as exc:
        Path(result_path).write_text(json.dumps({"error": str(exc)}))
        return 2


def measure(request_path: str, result_path: str) -> int:
    request = json.loads(Path(request_path).read_text())
    bundle = load_bundle(request["bundle"])
    checkpoint = request["config"].get("checkpoint")
    config = TrainConfig(**{**request["config"], "checkpoint": Path(checkpoint) if checkpoint else None})
    # Load the data before the baseline: it belongs to the app, not to training.
    for split in filter(None, (config.split, config.eval_split)):
        dataset_for(bundle, config.data, split)
    threads = load_runtime(bundle, request.get("threads"))
    warm_host_code(bundle, config)  # the host runner's own torch code is not training's cost (host_warmup.py)
    release_free_memory()  # the baseline is what stays resident, not the imports' freed scratch
    baseline = proc_status_bytes("VmRSS")
    cap = request.get("cap")
    if cap and cap["cgroup"]:
        CgroupCap(Path(cap["cgroup"]), cap["bytes"], cap["by"]).join()  # from here on, what training adds is capped
    elif cap:
        start_rss_watchdog(cap["bytes"], baseline)
    phases = PhasePeaks(baseline)
    phases.start("load")
    # No preflight: this whole process is the isolation (the parent reports a crash as a clear error).
    session = open_session(bundle, request.get("threads"), preflight=False)
    loaded = proc_status_bytes("VmRSS")
    result = train(bundle, config, session, on_phase=phases.start)
    phases.start(None)
    peak = max(phases.peaks.values())
    output = {
        "train": result.to_json(),
        "memory": {
            "baseline_rss_bytes": baseline,
            "loaded_rss_bytes": loaded,
            "peak_rss_bytes": peak,
            "peak_delta_bytes": peak - baseline,
            "phase_peak_delta_bytes": {name: value - baseline for name, value in phases.peaks.items()},
        },
        "threads": threads,
    }
    Path(result_path).write_text(json.dumps(output, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
