"""ONNX Runtime's memory, measured in fresh processes: the tables of docs/onnxruntime.md (minutes; ``rows`` about an
hour) and the measuring child that tests/test_onnxruntime_memory.py and tests/test_onnx_recompute.py check the
exporter's model of ORT's memory against::

    python benchmarks/onnxruntime_memory.py arena    # CPU arena on and off
    python benchmarks/onnxruntime_memory.py rows     # predicted vs measured peak, every benchmark row

``measure``: a child loads a bundle into an ``OnnxRuntimeSession`` (and warms it up if asked), takes its resident
size as the baseline, resets the high-water mark (``/proc/self/clear_refs``), trains, and reports
``VmHWM - baseline``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from exporters import ModelSpec, OptimizerConfig, export_bundle, load_bundle
from exporters.techniques import FreezeConfig, RecomputeConfig, apply_freeze
from sdk_tools.measure import measure_training
from sdk_tools.memory import proc_status_bytes, reset_peak
from sdk_tools.models import MLP, MobileNetV2, SmallCNN, build_model
from sdk_tools.runner.onnxruntime_session import OnnxRuntimeSession
from sdk_tools.runner.session import TORCH_DTYPES
from sdk_tools.runner.train import TrainConfig

CONFIGS: dict[str, tuple[type[torch.nn.Module], dict[str, Any], tuple[int, ...]]] = {
    "mlp": (MLP, {}, (1, 8, 8)),
    "small_cnn": (SmallCNN, {}, (1, 8, 8)),
    "mobilenet_v2 x0.25 32x32": (MobileNetV2, {"width_mult": 0.25}, (3, 32, 32)),
    "mobilenet_v2 x0.5 64x64": (MobileNetV2, {"width_mult": 0.5}, (3, 64, 64)),
    "mobilenet_v2 x1.0 64x64": (MobileNetV2, {}, (3, 64, 64)),
    "mobilenet_v2 x1.0 96x96": (MobileNetV2, {}, (3, 96, 96)),
}
SMALL = "mobilenet_v2 x0.25 32x32"


def _child(bundle_dir: str, arena: str, steps: int, warmup: int) -> None:
    torch.set_num_threads(1)
    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest
    inputs = torch.rand(manifest.inputs[0].shape)
    labels = torch.zeros(manifest.labels.shape, dtype=TORCH_DTYPES[manifest.labels.dtype])
    micro_batches = [(inputs, labels)] * manifest.training["micro_batches"]
    session = OnnxRuntimeSession(bundle, cpu_mem_arena=arena == "on")
    for _ in range(warmup):
        session.train_step(micro_batches)
    baseline = proc_status_bytes("VmRSS")
    reset_peak()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        session.train_step(micro_batches)
        times.append(time.perf_counter() - started)
    peak_delta = proc_status_bytes("VmHWM") - baseline
    print(json.dumps({"peak_delta_bytes": peak_delta, "step_s": statistics.median(times[1:] or times)}))


def measure(bundle_dir: Path, arena: bool, steps: int = 8, warmup: int = 0) -> dict[str, float]:
    """Peak RSS delta of ``steps`` training steps over the loaded (and ``warmup`` steps warmed-up) session, and
    the median step time, in a fresh process."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(bundle_dir), "on" if arena else "off", str(steps), str(warmup)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.splitlines()[-1])


def export(name: str, out_dir: Path, batch_size: int = 8, recompute: RecomputeConfig | None = None) -> Path:
    factory, kwargs, sample_shape = CONFIGS[name]
    torch.manual_seed(0)
    bundle = export_bundle(
        factory(**kwargs),
        out_dir,
        sample_shape=sample_shape,
        batch_size=batch_size,
        backend="onnxruntime",
        optimizer=OptimizerConfig("adamw", lr=1e-3),
        recompute=recompute,
        overwrite=True,
    )
    return bundle.directory


# Benchmark rows for ``rows``: model, its kwargs and sample shape.
ROW_MODELS: dict[str, tuple[str, dict[str, Any], tuple[int, ...]]] = {
    "MLP": ("mlp", {}, (1, 8, 8)),
    "SmallCNN": ("small_cnn", {}, (1, 8, 8)),
    "MobileNetV2 x0.5 32x32": ("mobilenet_v2", {"width_mult": 0.5, "in_channels": 3}, (3, 32, 32)),
}
ROW_FREEZES = {
    "full": FreezeConfig(),
    "bias-only": FreezeConfig(bias_only=True),
    "classifier-only": FreezeConfig(trainable=("classifier.*",)),
}
ROW_OPTIMIZERS = {"SGD": OptimizerConfig("sgd", lr=0.01), "AdamW": OptimizerConfig("adamw", lr=3e-4)}


def benchmark_rows() -> Iterator[tuple[str, str, FreezeConfig, OptimizerConfig, RecomputeConfig | None]]:
    for model in ROW_MODELS:
        for freeze_name, freeze in ROW_FREEZES.items():
            for optimizer_name, optimizer in ROW_OPTIMIZERS.items():
                for recompute in (None, RecomputeConfig("auto")):
                    label = f"{model}, {freeze_name}, {optimizer_name}{', recompute' if recompute else ''}"
                    yield label, model, freeze, optimizer, recompute


def rows() -> None:
    """Export every benchmark row, measure it with ``memwall measure`` (20 steps, evaluation before and after,
    final checkpoint) and print predicted against measured peak."""
    root = Path(os.environ.get("TMPDIR", "/tmp"), "memwall-ort-rows")
    print("| case | predicted MiB | measured MiB | error | step ms |\n|---|---|---|---|---|")
    for label, model_name, freeze, optimizer, recompute in benchmark_rows():
        spec, kwargs, shape = ROW_MODELS[model_name]
        torch.manual_seed(0)
        model = apply_freeze(build_model(spec, **kwargs), freeze)
        directory = root / label.replace(", ", "-").replace(" ", "_")
        export_bundle(
            model,
            directory,
            sample_shape=shape,
            batch_size=8,
            backend="onnxruntime",
            optimizer=optimizer,
            model_spec=ModelSpec(spec, kwargs),
            recompute=recompute,
            overwrite=True,
        )
        result = measure_training(directory, TrainConfig(steps=20, checkpoint_every=0, progress=False))
        step_ms = statistics.median(result.train["step_times_s"][1:]) * 1e3
        print(
            f"| {label} | {result.predicted_peak_bytes / 2**20:.1f} | {result.peak_delta_bytes / 2**20:.1f} "
            f"| {result.prediction_error:+.1%} | {step_ms:.0f} |",
            flush=True,
        )


def arena() -> None:
    torch.set_num_threads(1)
    root = Path(os.environ.get("TMPDIR", "/tmp"), "memwall-ort-arena")
    print("model (AdamW, batch 8) | planned | arena on MiB | arena off MiB | step ms on / off")
    for name in CONFIGS:
        bundle_dir = export(name, root / name.replace(" ", "_"))
        planned = load_bundle(bundle_dir).manifest.memory.planned_arena_bytes
        on, off = measure(bundle_dir, arena=True), measure(bundle_dir, arena=False)
        print(
            f"{name} | {planned / 2**20:.1f} | {on['peak_delta_bytes'] / 2**20:.1f} "
            f"| {off['peak_delta_bytes'] / 2**20:.1f} | {on['step_s'] * 1e3:.1f} / {off['step_s'] * 1e3:.1f}",
            flush=True,
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    elif sys.argv[1:2] == ["rows"]:
        rows()
    else:
        arena()
