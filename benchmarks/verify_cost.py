"""What verified export costs, and how far verified bundles are from eager PyTorch (the tolerance's headroom).

    python benchmarks/verify_cost.py [--out benchmarks/RESULTS-verify.md]

Exports the test-size reference models (tests/conftest.py: MLP, SmallCNN, MobileNetV2 x0.25 16x16 in 5 blocks)
with each bundle kind both backends produce: plain, speed routes (im2col / pointwise matmuls, frozen part on
XNNPACK), fused AdamW, recomputation + micro-batches, LoRA, int8 frozen weights; prints and writes, per bundle,
the export's wall time, the verification's (eager step + loading the program + the runtime's calls) and the
largest error relative to the compared tensor's largest value, which ``Tolerance.rel`` (1e-3) must sit far above.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from exporters import ModelSpec, OptimizerConfig
from exporters.plan import TrainingPlan, export_plan
from exporters.techniques import FreezeConfig, FusedUpdateConfig, Int8WeightsConfig, LoraConfig, RecomputeConfig
from exporters.techniques.speed_routes import SpeedConfig
from tests.conftest import BATCH, REFERENCE_CASES, make_model

SGD = OptimizerConfig("sgd", lr=0.01, momentum=0.9)
ADAMW = OptimizerConfig("adamw", lr=1e-3, weight_decay=0.01)
HEAD = FreezeConfig(("classifier.*",), bias_only=True)
KINDS: dict[str, tuple[str, TrainingPlan]] = {
    "plain": ("executorch", TrainingPlan(optimizer=SGD)),
    "speed routes": ("executorch", TrainingPlan(optimizer=SGD, speed=SpeedConfig())),
    "speed routes, biases + head (XNNPACK)": ("executorch", TrainingPlan(HEAD, SGD, speed=SpeedConfig())),
    "fused AdamW": ("executorch", TrainingPlan(optimizer=ADAMW, fused_update=FusedUpdateConfig())),
    "recompute + 2 micro-batches": (
        "executorch",
        TrainingPlan(optimizer=SGD, micro_batches=2, recompute=RecomputeConfig()),
    ),
    "LoRA r4": ("executorch", TrainingPlan(optimizer=SGD, lora=LoraConfig(4))),
    "int8 frozen, biases + head": ("executorch", TrainingPlan(HEAD, SGD, int8_frozen=Int8WeightsConfig())),
    "ORT AdamW": ("onnxruntime", TrainingPlan(optimizer=ADAMW)),
    "ORT recompute + 2 micro-batches": (
        "onnxruntime",
        TrainingPlan(optimizer=SGD, micro_batches=2, recompute=RecomputeConfig()),
    ),
}


def runtime_import_seconds() -> tuple[float, float]:
    """(importing ExecuTorch's runtime bindings, which the first verification in a process pays once; a fresh
    interpreter with torch and those bindings, which verifying in a child process would pay every export)."""
    code = "import time; t = time.perf_counter(); import torch; u = time.perf_counter(); "
    code += "import executorch.extension.pybindings.portable_lib; print(time.perf_counter() - u)"
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1]), time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/RESULTS-verify.md"))
    args = parser.parse_args()
    rows = []
    header = "| model | bundle | backend | export s | verification s | share | largest error (relative) | of |"
    print(header)
    with tempfile.TemporaryDirectory(prefix="memwall-verify-cost-") as tmp:
        for model_name, (kwargs, shape) in REFERENCE_CASES.items():
            for kind, (backend, plan) in KINDS.items():
                start = time.perf_counter()
                try:
                    bundle = export_plan(
                        make_model(model_name),
                        Path(tmp) / f"{model_name}-{len(rows)}",
                        plan,
                        sample_shape=shape,
                        batch_size=BATCH,
                        backend=backend,
                        model_spec=ModelSpec(model_name, kwargs),
                    )
                except ValueError as exc:  # a technique this model cannot take (LoRA without 1x1 convs...)
                    print(f"| {model_name} | {kind} | {backend} | skipped: {str(exc)[:80]} |", flush=True)
                    continue
                total = time.perf_counter() - start
                record = bundle.manifest.verification or {}
                worst = record["largest_error"]
                row = (
                    f"| {model_name} | {kind} | {backend} | {total:.1f} | {record['seconds']:.2f} | "
                    f"{record['seconds'] / total:.0%} | {worst['relative']:.1e} | {worst['tensor']} |"
                )
                rows.append(row)
                print(row, flush=True)
    imports, child = runtime_import_seconds()
    text = [
        "# Verified export: cost and error (`python benchmarks/verify_cost.py`)",
        "",
        f"{datetime.date.today()}, {platform.machine()}, a shared 2-core VM (other jobs running: times are "
        "inflated and noisy). Test-size models (tests/conftest.py), batch 4. Verification = eager step + loading the "
        "program + its calls (fused update: a dry-run call, then the step). The first verification in a process "
        "also imports the "
        f"runtime's bindings: {imports:.1f} s (ExecuTorch, measured in a fresh interpreter with torch loaded). "
        f"Verifying in a child process instead would add a fresh interpreter with torch and the bindings to every "
        f"export: {child:.1f} s.",
        "",
        header,
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    args.out.write_text("\n".join(text))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
