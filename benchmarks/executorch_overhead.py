"""Calibrate ExecuTorch's runtime overhead: what a training process holds beyond the bundle's planned memory.

    python benchmarks/executorch_overhead.py [--steps 10] [--out benchmarks/RESULTS-executorch-overhead.md]
        [--work-dir memwall_runs/calibration]   # bundles are kept there: a rerun measures without exporting

Every row is a real bundle measured by ``memwall measure`` (a child that has warmed the host runner's own code
before its baseline). The overhead of a row is its measured peak less everything the exporter predicts exactly
or from the bundle's files: planned arenas, program file, optimizer state, gradient accumulation, delegate
memory. What remains is the runtime's: its method structures (one object per value of each method), its
kernels' code pages faulted in on first use (per distinct operator) and the runner's per-step Python objects.
The script fits that remainder as ``base + per_value x values`` (least squares over the rows without XNNPACK
delegates; a distinct-operator term was tried and fitted a negative coefficient), then what the rows with
delegates hold beyond it as ``per_delegated_op x delegated ops`` (XNNPACK builds an operator object per lowered
op, with its packed weights), and prints the fit beside each row, to be copied into
``exporters/executorch_export.py`` and ``exporters/techniques/xnnpack_frozen.py``.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from executorch.exir._serialize._program import deserialize_pte_binary

from exporters import ModelSpec, OptimizerConfig, load_bundle
from exporters.bundle import BundleError
from exporters.executorch_export import (
    RUNTIME_OVERHEAD_BASE_BYTES,
    RUNTIME_OVERHEAD_PER_VALUE_BYTES,
    program_operators,
    program_values,
)
from exporters.plan import TrainingPlan, export_plan
from exporters.techniques import FreezeConfig, FusedUpdateConfig, RecomputeConfig
from exporters.techniques.speed_routes import SpeedConfig
from exporters.techniques.xnnpack_frozen import XNNPACK_PER_DELEGATED_OP_BYTES
from sdk_tools.measure import measure_training
from sdk_tools.models import build_model
from sdk_tools.runner.train import TrainConfig

SGD = OptimizerConfig("sgd", lr=0.01, momentum=0.9)
ADAMW = OptimizerConfig("adamw", lr=3e-4)
MODELS: dict[str, tuple[str, dict, tuple[int, ...]]] = {
    "MLP": ("mlp", {}, (1, 8, 8)),
    "SmallCNN": ("small_cnn", {}, (1, 8, 8)),
    "MobileNetV2 x0.25 32x32": ("mobilenet_v2", {"width_mult": 0.25}, (3, 32, 32)),
    "MobileNetV2 x0.35 64x64": ("mobilenet_v2", {"width_mult": 0.35}, (3, 64, 64)),
}


@dataclass(frozen=True)
class Row:
    model: str
    plan: TrainingPlan


def rows() -> list[Row]:
    full, head, bias = FreezeConfig(), FreezeConfig(last_blocks=0), FreezeConfig(last_blocks=0, bias_only=True)
    out = []
    for model in MODELS:
        out += [Row(model, TrainingPlan(full, SGD)), Row(model, TrainingPlan(full, ADAMW))]
        out += [Row(model, TrainingPlan(head, ADAMW)), Row(model, TrainingPlan(bias, ADAMW, micro_batches=4))]
    wide = "MobileNetV2 x0.35 64x64"
    out += [
        Row(wide, TrainingPlan(full, ADAMW, recompute=RecomputeConfig("auto"))),
        Row(wide, TrainingPlan(full, ADAMW, fused_update=FusedUpdateConfig())),
    ]
    # With XNNPACK delegates (the speed routes), to calibrate the delegates' own memory.
    speed = SpeedConfig()
    out += [Row("SmallCNN", TrainingPlan(head, ADAMW, speed=speed))]
    out += [Row("MobileNetV2 x0.25 32x32", TrainingPlan(plan, ADAMW, speed=speed)) for plan in (head, bias)]
    out += [Row(wide, TrainingPlan(plan, ADAMW, speed=speed)) for plan in (FreezeConfig(last_blocks=2), bias)]
    return out


@dataclass(frozen=True)
class Measured:
    label: str
    operators: int
    values: int
    delegated_ops: int  # ops lowered into XNNPACK delegates
    overhead_bytes: int  # measured peak less the exactly predicted components
    predicted_overhead_bytes: int  # what the bundle's manifest predicted for the same remainder


def measure_row(row: Row, root: Path, steps: int) -> Measured:
    spec, kwargs, shape = MODELS[row.model]
    label = f"{row.model}, {row.plan.describe()}"
    directory = root / label.replace(" ", "_").replace(",", "").replace("+", "plus")
    try:
        bundle = load_bundle(directory)
    except BundleError:
        torch.manual_seed(0)
        bundle = export_plan(
            build_model(spec, **kwargs),
            directory,
            row.plan,
            sample_shape=shape,
            batch_size=8,
            model_spec=ModelSpec(spec, kwargs),
            overwrite=True,
        )
    result = measure_training(directory, TrainConfig(steps=steps, checkpoint_every=0, progress=False))
    overhead = bundle.manifest.memory.runtime_overhead_bytes
    exact = result.predicted_peak_bytes - overhead
    program = deserialize_pte_binary(bundle.path("program").read_bytes()).program
    operators, values = len(program_operators(program)), program_values(program)
    xnnpack = next((t["config"] for t in bundle.manifest.techniques if t["name"] == "xnnpack_frozen"), None)
    if xnnpack is not None and "delegated_ops" not in xnnpack:
        raise BundleError(f"{directory} predates the delegated-op count: delete it to re-export")
    delegated = xnnpack["delegated_ops"] if xnnpack is not None else 0
    return Measured(label, operators, values, delegated, result.peak_delta_bytes - exact, overhead)


def fit(measured: list[Measured]) -> tuple[float, float]:
    """Least squares ``overhead = base + per_value * values`` over the rows without delegates."""
    plain = [m for m in measured if not m.delegated_ops]
    x = torch.tensor([[1.0, m.values] for m in plain], dtype=torch.float64)
    y = torch.tensor([float(m.overhead_bytes) for m in plain], dtype=torch.float64)
    base, per_value = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1).tolist()
    return base, per_value


def fit_per_delegated_op(measured: list[Measured], base: float, per_value: float) -> float:
    """XNNPACK's memory per delegated op (least squares through zero over the rows with delegates): what those
    rows hold beyond the plain fit, with the per-op term their manifests already predicted added back."""
    rows = [m for m in measured if m.delegated_ops]
    residual = [
        m.overhead_bytes - base - per_value * m.values + XNNPACK_PER_DELEGATED_OP_BYTES * m.delegated_ops for m in rows
    ]
    ops = [float(m.delegated_ops) for m in rows]
    return sum(r * o for r, o in zip(residual, ops, strict=True)) / sum(o * o for o in ops) if rows else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "RESULTS-executorch-overhead.md")
    parser.add_argument("--work-dir", type=Path, default=Path("memwall_runs/calibration"))
    args = parser.parse_args()
    measured = []
    for i, row in enumerate(rows(), 1):
        m = measure_row(row, args.work_dir, args.steps)
        measured.append(m)
        print(
            f"[{i}/{len(rows())}] {m.label}: {m.operators} ops, {m.values} values, {m.overhead_bytes / 2**20:.2f} MiB",
            flush=True,
        )
    base, per_value = fit(measured)
    per_op = fit_per_delegated_op(measured, base, per_value)

    def fitted(m: Measured) -> float:
        # Rows with delegates: their overhead is net of the per-op term their manifest predicted.
        return base + per_value * m.values + (per_op - XNNPACK_PER_DELEGATED_OP_BYTES) * m.delegated_ops

    errors = [abs(fitted(m) - m.overhead_bytes) for m in measured]
    lines = [
        "# ExecuTorch runtime overhead calibration",
        "",
        f"Command: `python benchmarks/executorch_overhead.py --steps {args.steps}`  ",
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
        f"{platform.platform()}; batch 8, evaluation before and after, no checkpoint inside the steps.",
        "",
        f"Fit over the {sum(not m.delegated_ops for m in measured)} rows without delegates: overhead = {base:,.0f} B "
        f"({base / 2**20:.2f} MiB) + {per_value:.0f} B x values; XNNPACK, over the rows with delegates: "
        f"{per_op:,.0f} B x delegated ops; largest error {max(errors) / 2**20:.2f} MiB. In use: "
        f"{RUNTIME_OVERHEAD_BASE_BYTES:,} B + {RUNTIME_OVERHEAD_PER_VALUE_BYTES} B x values "
        f"(`exporters/executorch_export.py`), {XNNPACK_PER_DELEGATED_OP_BYTES:,} B x delegated ops "
        "(`exporters/techniques/xnnpack_frozen.py`).",
        "",
        "The overhead column is the measured peak less everything else the manifest predicts (for rows with "
        "delegates, that includes the delegates' memory as predicted with the constant in use).",
        "",
        "| bundle | delegated ops | operators | values | measured overhead MiB | fit MiB | fit error | "
        "manifest's overhead MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in measured:
        lines.append(
            f"| {m.label} | {m.delegated_ops} | {m.operators} | {m.values} | {m.overhead_bytes / 2**20:.2f} "
            f"| {fitted(m) / 2**20:.2f} | {(fitted(m) - m.overhead_bytes) / 2**20:+.2f} "
            f"| {m.predicted_overhead_bytes / 2**20:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
