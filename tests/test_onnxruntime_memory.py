"""Peak memory of ONNX Runtime training with the CPU memory arena on and off, each run in a fresh process.

A child loads the bundle into an ``OnnxRuntimeSession``, takes its resident size as the idle baseline,
resets the high-water mark (``/proc/self/clear_refs``), trains, and reports ``VmHWM - baseline``.

The figures in docs/onnxruntime.md come from running this file as a script (minutes)::

    python tests/test_onnxruntime_memory.py

The test measures one small configuration so that the script keeps working.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from exporters import OptimizerConfig, export_bundle, load_bundle
from sdk_tools.memory import proc_status_bytes, reset_peak
from sdk_tools.models import MLP, MobileNetV2, SmallCNN
from sdk_tools.runner.onnxruntime_session import OnnxRuntimeSession
from sdk_tools.runner.session import TORCH_DTYPES

# glibc raises its mmap threshold after large frees and then keeps freed blocks in the heap; with a fixed
# threshold large blocks are unmapped on free, as phone allocators do with large blocks.
FIXED_MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": "131072"}

CONFIGS: dict[str, tuple[type[torch.nn.Module], dict[str, Any], tuple[int, ...]]] = {
    "mlp": (MLP, {}, (1, 8, 8)),
    "small_cnn": (SmallCNN, {}, (1, 8, 8)),
    "mobilenet_v2 x0.25 32x32": (MobileNetV2, {"width_mult": 0.25}, (3, 32, 32)),
    "mobilenet_v2 x0.5 64x64": (MobileNetV2, {"width_mult": 0.5}, (3, 64, 64)),
    "mobilenet_v2 x1.0 64x64": (MobileNetV2, {}, (3, 64, 64)),
    "mobilenet_v2 x1.0 96x96": (MobileNetV2, {}, (3, 96, 96)),
}


def _child(bundle_dir: str, arena: str, steps: int) -> None:
    torch.set_num_threads(1)
    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest
    inputs = torch.rand(manifest.inputs[0].shape)
    labels = torch.zeros(manifest.labels.shape, dtype=TORCH_DTYPES[manifest.labels.dtype])
    session = OnnxRuntimeSession(bundle, cpu_mem_arena=arena == "on")
    baseline = proc_status_bytes("VmRSS")
    reset_peak()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        session.train_step([(inputs, labels)] * manifest.training["micro_batches"])
        times.append(time.perf_counter() - started)
    peak_delta = proc_status_bytes("VmHWM") - baseline
    print(json.dumps({"peak_delta_bytes": peak_delta, "step_s": statistics.median(times[1:])}))


def measure(bundle_dir: Path, arena: bool, steps: int = 8, env: dict[str, str] | None = None) -> dict[str, float]:
    """Peak RSS delta over the loaded-but-idle session and the median step time, in a fresh process."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(bundle_dir), "on" if arena else "off", str(steps)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=True,
    )
    return json.loads(proc.stdout.splitlines()[-1])


def export(name: str, out_dir: Path, batch_size: int = 8) -> Path:
    factory, kwargs, sample_shape = CONFIGS[name]
    torch.manual_seed(0)
    bundle = export_bundle(
        factory(**kwargs),
        out_dir,
        sample_shape=sample_shape,
        batch_size=batch_size,
        backend="onnxruntime",
        optimizer=OptimizerConfig("adamw", lr=1e-3),
        overwrite=True,
    )
    return bundle.directory


def test_arena_on_and_off_are_measured(tmp_path: Path) -> None:
    bundle_dir = export("mobilenet_v2 x0.25 32x32", tmp_path / "bundle", batch_size=4)
    assert load_bundle(bundle_dir).manifest.backend_options["cpu_mem_arena"] is False
    on, off = measure(bundle_dir, arena=True, steps=3), measure(bundle_dir, arena=False, steps=3)
    for result in (on, off):
        assert 0 < result["peak_delta_bytes"] < 1 << 30
        assert result["step_s"] > 0


def main() -> None:
    torch.set_num_threads(1)
    root = Path(os.environ.get("TMPDIR", "/tmp"), "memwall-ort-arena")
    print(
        "model (AdamW, batch 8) | planned | arena on MiB | arena off MiB | off, fixed mmap threshold MiB "
        "| step ms on / off"
    )
    for name in CONFIGS:
        bundle_dir = export(name, root / name.replace(" ", "_"))
        planned = load_bundle(bundle_dir).manifest.memory.planned_arena_bytes
        on = measure(bundle_dir, arena=True)
        off = measure(bundle_dir, arena=False)
        fixed = measure(bundle_dir, arena=False, env=FIXED_MMAP_THRESHOLD)
        mib = [r["peak_delta_bytes"] / 2**20 for r in (on, off, fixed)]
        print(
            f"{name} | {planned / 2**20:.1f} | {mib[0]:.1f} | {mib[1]:.1f} | {mib[2]:.1f} "
            f"| {on['step_s'] * 1e3:.1f} / {off['step_s'] * 1e3:.1f}",
            flush=True,
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
