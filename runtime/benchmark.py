"""Native runtime vs the Python host runner on the same bundles: peak memory delta and step time.

    python runtime/benchmark.py BUNDLE [BUNDLE ...] [--steps 5] [--out runtime/RESULTS.md]

For each bundle: random data of the bundle's shapes in a .npz; memwall-run trains ``--steps`` steps with
``--report`` (its peak delta over the idle baseline taken before the program loads), and ``memwall measure``'s
child process trains the same steps through the Python runner (no evaluation in either). The floor is what the
manifest says training must hold: planned arena + program file (an upper bound on the pages touched) + optimizer
state, accumulation and workspace + delegate memory. Step times are medians without the first step.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

RUNTIME = Path(__file__).resolve().parent
sys.path.insert(0, str(RUNTIME.parent))

from exporters.bundle import load_bundle  # noqa: E402
from sdk_tools.measure import measure_training, predicted_peak  # noqa: E402
from sdk_tools.runner.train import TrainConfig  # noqa: E402

MIB = 2**20


def floor_bytes(memory) -> int:
    return (
        memory.planned_arena_bytes
        + memory.program_bytes
        + memory.optimizer_state_bytes
        + memory.gradient_accumulation_bytes
        + memory.optimizer_workspace_bytes
        + memory.delegate_bytes
    )


def row(bundle_dir: Path, steps: int, work: Path) -> dict:
    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest
    size = manifest.batch_size
    rng = np.random.default_rng(0)
    data = work / f"{bundle_dir.name}.npz"
    count = size * manifest.training["micro_batches"] * 4
    np.savez(
        data,
        x=rng.random((count, *manifest.sample_shape), dtype=np.float32),
        y=rng.integers(0, len(manifest.classes), count),
    )
    native_dir = work / f"native-{bundle_dir.name}"
    shutil.copytree(bundle_dir, native_dir)
    report_path = work / f"{bundle_dir.name}-report.json"
    command = [str(RUNTIME / "build" / "memwall-run"), str(native_dir), "--data", str(data), "--steps", str(steps)]
    subprocess.run(
        [*command, "--report", str(report_path)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    report = json.loads(report_path.read_text())
    python_dir = work / f"python-{bundle_dir.name}"
    shutil.copytree(bundle_dir, python_dir)
    config = TrainConfig(steps=steps, data=str(data), eval_split=None, progress=False, checkpoint_every=0)
    measured = measure_training(python_dir, config)
    predicted = predicted_peak(bundle, evaluates=False)
    native_peak = report["memory"]["peak_delta_bytes"]
    return {
        "bundle": bundle_dir.name,
        "threads": report["run"]["threads"],
        "planned_arena_mib": manifest.memory.planned_arena_bytes / MIB,
        "predicted_mib": predicted / MIB,
        "python_peak_mib": measured.peak_delta_bytes / MIB,
        "native_peak_mib": native_peak / MIB,
        "native_vs_prediction": (predicted - native_peak) / native_peak,
        "floor_mib": floor_bytes(manifest.memory) / MIB,
        "native_over_floor": native_peak / floor_bytes(manifest.memory),
        "python_ms": statistics.median([t * 1000 for t in measured.train["step_times_s"][1:]]),
        "native_ms": statistics.median(report["run"]["step_times_ms"][1:]),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| bundle | threads | arena MiB | predicted (host) MiB | Python peak MiB | native peak MiB | prediction error "
        "vs native | floor MiB | native / floor | Python ms/step | native ms/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['bundle']} | {r['threads']} | {r['planned_arena_mib']:.1f} | {r['predicted_mib']:.1f} | "
            f"{r['python_peak_mib']:.1f} | {r['native_peak_mib']:.1f} | {r['native_vs_prediction']:+.0%} | "
            f"{r['floor_mib']:.1f} | {r['native_over_floor']:.2f}x | {r['python_ms']:.2f} | {r['native_ms']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="memwall-native-bench-") as tmp:
        rows = [row(b, args.steps, Path(tmp)) for b in args.bundles]
    text = table(rows)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
