"""Child-process entry point that trains a bundle and measures its memory.

Run as ``python -m sdk_tools.runner.worker REQUEST.json RESULT.json``. It imports the runtime and loads the
data first, records that as the idle baseline and resets the peak (``/proc/self/clear_refs``), then opens the
bundle and trains: the peak it reports is what training itself costs, not the parent's imports.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from exporters.bundle import load_bundle
from sdk_tools.memory import proc_status_bytes, reset_peak
from sdk_tools.runner.train import TrainConfig, dataset_for, open_session, train


def load_runtime(backend: str) -> int:
    """Import the runtime (so its libraries are part of the idle baseline); return its thread count."""
    if backend == "executorch":
        from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count

        return max(1, _threadpool_get_thread_count())
    import onnxruntime.training.api  # noqa: F401  (~60 MB of libraries that are not training's cost)

    # ORT's intra-op pool defaults to one thread per physical core.
    return max(1, (os.cpu_count() or 2) // 2) if os.cpu_count() else 1


def main(request_path: str, result_path: str) -> int:
    request = json.loads(Path(request_path).read_text())
    bundle = load_bundle(request["bundle"])
    config = TrainConfig(**{**request["config"], "checkpoint": request["config"].get("checkpoint")})
    # Load the data before the baseline: it belongs to the app, not to training.
    for split in filter(None, (config.split, config.eval_split)):
        dataset_for(bundle, config.data, split)
    threads = load_runtime(bundle.manifest.backend)
    baseline = proc_status_bytes("VmRSS")
    reset_peak()
    session = open_session(bundle)
    loaded = proc_status_bytes("VmRSS")
    result = train(bundle, config, session)
    peak = proc_status_bytes("VmHWM")
    output = {
        "train": result.to_json(),
        "memory": {
            "baseline_rss_bytes": baseline,
            "loaded_rss_bytes": loaded,
            "peak_rss_bytes": peak,
            "peak_delta_bytes": peak - baseline,
        },
        "threads": threads,
    }
    Path(result_path).write_text(json.dumps(output))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
