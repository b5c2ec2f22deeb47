"""Native runtime vs the Python host runner on the same bundles: peak memory delta, prediction error and step time.

    python runtime/benchmark.py BUNDLE [BUNDLE ...] [--steps 5] [--repeats 3] [--out runtime/RESULTS-table.md]
    python runtime/benchmark.py --small --memory-wall [--work-dir memwall_runs/benchmarks] [BUNDLE ...]

``--memory-wall`` adds the ExecuTorch technique rows of ``benchmarks/memory_wall.py --quick`` (MobileNetV2 x0.35,
3x64x64, batch 8, AdamW), exported (or found) through the same planner cache that benchmark uses.

For each bundle: random data of the bundle's shapes in a .npz; ``memwall-run`` trains ``--steps`` steps with
``--report`` (its peak delta over the idle baseline taken before the program loads), and ``memwall measure``'s
child process trains the same steps through the Python runner (no evaluation in either), on the same thread count.
The two runs alternate (native first, then Python first) ``--repeats`` times, so both see the same machine load;
peaks and step times are medians (step times without each run's first step). Each runner's peak is compared with
its own prediction in the manifest (``MemoryEstimate.prediction_for``), by ``sdk_tools.figures.prediction_error``.

The floor is what training must hold (``floor_bytes``): planned arena + optimizer state, accumulation and
workspace + delegate memory, as the manifest sizes them, + the file-backed pages the native run faulted in
(memwall-run's ``file_backed_delta_bytes``, Linux RssFile: the program file's pages touched and the runtime
libraries' code its kernels run, which this runtime build cannot run without).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

RUNTIME = Path(__file__).resolve().parent
sys.path.insert(0, str(RUNTIME.parent))

from exporters.bundle import HOST_RUNTIME, NATIVE_RUNTIME, Bundle, MemoryEstimate, RuntimePrediction, load_bundle  # noqa: E402
from exporters.native_runtime_memory import XNNPACK, program_values, runtime_predictions  # noqa: E402
from sdk_tools.figures import prediction_error  # noqa: E402
from sdk_tools.measure import measure_training  # noqa: E402
from sdk_tools.runner.train import TrainConfig  # noqa: E402

MIB = 2**20
MEMWALL_RUN = RUNTIME / "build" / "memwall-run"


def floor_bytes(memory: MemoryEstimate, file_backed_bytes: int) -> int:
    """What training must hold: the planned arena, optimizer state, accumulation and workspace and delegate memory
    (anonymous memory, as the manifest sizes it) + the file-backed pages the run faulted in (measured: the program
    file's pages touched and the runtime libraries' code the kernels run)."""
    return (
        memory.planned_arena_bytes
        + memory.optimizer_state_bytes
        + memory.gradient_accumulation_bytes
        + memory.optimizer_workspace_bytes
        + memory.delegate_bytes
        + file_backed_bytes
    )


def write_data(bundle: Bundle, path: Path) -> None:
    manifest = bundle.manifest
    rng = np.random.default_rng(0)
    count = manifest.batch_size * manifest.training["micro_batches"] * 4
    np.savez(
        path,
        x=rng.random((count, *manifest.sample_shape), dtype=np.float32),
        y=rng.integers(0, len(manifest.classes), count),
    )


def current_predictions(bundle: Bundle) -> dict[str, RuntimePrediction]:
    """What the exporter writes into ``memory.by_runtime`` today, from the manifest's host figures: bundles exported
    before a change of the native constants are measured against the constants in use."""
    memory = bundle.manifest.memory
    return runtime_predictions(
        bundle.manifest.backend,
        bundle.manifest.backend_options,
        bundle.manifest.techniques,
        memory.runtime_overhead_bytes,
        memory.predicted_peak_bytes,
    )


def native_run(bundle_dir: Path, data: Path, steps: int, threads: int, work: Path) -> dict:
    """One memwall-run in a fresh copy of the bundle (it writes its checkpoint there); its report.v1."""
    run_dir = work / f"native-{bundle_dir.name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(bundle_dir, run_dir)
    report = work / f"{bundle_dir.name}-report.json"
    command = [str(MEMWALL_RUN), str(run_dir), "--data", str(data), "--steps", str(steps), "--threads", str(threads)]
    subprocess.run([*command, "--report", str(report)], check=True, stdout=subprocess.DEVNULL)
    return json.loads(report.read_text())


def python_run(bundle_dir: Path, data: Path, steps: int, threads: int, work: Path) -> tuple[int, list[float]]:
    run_dir = work / f"python-{bundle_dir.name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(bundle_dir, run_dir)
    config = TrainConfig(steps=steps, data=str(data), eval_split=None, progress=False, checkpoint_every=0)
    measured = measure_training(run_dir, config, threads=threads)
    return measured.peak_delta_bytes, [t * 1000 for t in measured.train["step_times_s"][1:]]


def row(bundle_dir: Path, label: str, steps: int, repeats: int, threads: int, work: Path) -> dict:
    bundle = load_bundle(bundle_dir)
    memory = bundle.manifest.memory
    data = work / f"{bundle_dir.name}.npz"
    write_data(bundle, data)
    native_peaks, file_backed, python_peaks, native_ms, python_ms = [], [], [], [], []
    for repeat in range(repeats):

        def native() -> None:
            report = native_run(bundle_dir, data, steps, threads, work)
            native_peaks.append(report["memory"]["peak_delta_bytes"])
            file_backed.append(report["memory"]["file_backed_delta_bytes"])
            native_ms.extend(report["run"]["step_times_ms"][1:])

        def python() -> None:
            peak, times = python_run(bundle_dir, data, steps, threads, work)
            python_peaks.append(peak)
            python_ms.extend(times)

        for run in (native, python) if repeat % 2 == 0 else (python, native):
            run()
    # Neither run evaluates: the predict method's arena is left out of both predictions.
    predictions = current_predictions(bundle)
    predicted_native = predictions[NATIVE_RUNTIME].predicted_peak_bytes - memory.evaluation_arena_bytes
    predicted_host = predictions[HOST_RUNTIME].predicted_peak_bytes - memory.evaluation_arena_bytes
    native_peak = int(statistics.median(native_peaks))
    python_peak = int(statistics.median(python_peaks))
    files = int(statistics.median(file_backed))
    floor = floor_bytes(memory, files)
    return {
        "bundle": label,
        "threads": threads,
        "planned_arena_mib": memory.planned_arena_bytes / MIB,
        "predicted_host_mib": predicted_host / MIB,
        "python_peak_mib": python_peak / MIB,
        "host_error": prediction_error(predicted_host, python_peak),
        "predicted_native_mib": predicted_native / MIB,
        "native_peak_mib": native_peak / MIB,
        "native_peaks_mib": [p / MIB for p in native_peaks],
        "native_error": prediction_error(predicted_native, native_peak),
        # What the native runtime cost beyond everything the manifest counts for the bundle itself.
        "native_overhead_mib": (native_peak - predicted_native + predictions[NATIVE_RUNTIME].runtime_overhead_bytes)
        / MIB,
        "values": program_values(memory.runtime_overhead_bytes),
        "xnnpack": XNNPACK in bundle.manifest.backend_options["runtime"]["backends"],
        "file_backed_mib": files / MIB,
        "floor_mib": floor / MIB,
        "native_over_floor": native_peak / max(floor, 1),
        "python_ms": statistics.median(python_ms) if python_ms else float("nan"),
        "native_ms": statistics.median(native_ms) if native_ms else float("nan"),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| bundle | arena MiB | predicted (host) MiB | Python peak MiB | host error | predicted (native) MiB | "
        "native peak MiB | native error | file pages MiB | floor MiB | native / floor | "
        "Python ms/step | native ms/step | native / Python |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['bundle']} | {r['planned_arena_mib']:.1f} | {r['predicted_host_mib']:.1f} | "
            f"{r['python_peak_mib']:.1f} | {r['host_error']:+.1%} | {r['predicted_native_mib']:.1f} | "
            f"{r['native_peak_mib']:.1f} | {r['native_error']:+.1%} | {r['file_backed_mib']:.1f} | "
            f"{r['floor_mib']:.1f} | {r['native_over_floor']:.2f}x | {r['python_ms']:.2f} | "
            f"{r['native_ms']:.2f} | {r['native_ms'] / r['python_ms']:.2f}x |"
        )
    return "\n".join(lines)


def fit(rows: list[dict]) -> str:
    """The native overhead model's constants (``exporters/native_runtime_memory.py``) by least squares weighted by
    1/peak (small bundles count as much as large ones): overhead = base + per value x the program's values, over
    the rows without delegates; with delegates, what is left over that (their constants come from it)."""
    plain = [r for r in rows if not r["xnnpack"]]
    if len({r["values"] for r in plain}) < 2:
        return "(fit: needs two rows without delegates, with different value counts)"
    weights = np.array([1 / r["native_peak_mib"] for r in plain])
    design = np.array([[1.0, r["values"]] for r in plain]) * weights[:, None]
    target = np.array([r["native_overhead_mib"] * MIB for r in plain]) * weights
    (base, per_value), *_ = np.linalg.lstsq(design, target, rcond=None)
    left = [f"{r['native_overhead_mib'] * MIB - base - per_value * r['values']:,.0f} B" for r in rows if r["xnnpack"]]
    delegated = f"; left over on the rows with delegates: {', '.join(left)}" if left else ""
    return f"fit over {len(plain)} rows without delegates: base {base:,.0f} B, per value {per_value:,.0f} B{delegated}"


def small_bundles(work_dir: Path) -> list[tuple[Path, str]]:
    """Tiny bundles, where the runtime's own cost dominates: an MLP trained whole (portable kernels) and a SmallCNN
    whose frozen convolutions run on XNNPACK (speed routes), batch 4 of 1x8x8, SGD with momentum."""
    from exporters import ModelSpec, OptimizerConfig, export_bundle
    from exporters.bundle import BundleError
    from exporters.techniques.speed_routes import SpeedConfig
    from sdk_tools.models import build_model

    found = []
    for name, label, speed in (("mlp", "mlp", None), ("small_cnn", "small_cnn head, XNNPACK", SpeedConfig())):
        directory = work_dir / "native-small" / name
        try:
            found.append((load_bundle(directory).directory, label))
            continue
        except BundleError:
            pass
        model = build_model(name)
        for parameter_name, p in model.named_parameters():
            p.requires_grad_(speed is None or parameter_name.startswith("classifier."))
        bundle = export_bundle(
            model,
            directory,
            sample_shape=(1, 8, 8),
            batch_size=4,
            optimizer=OptimizerConfig("sgd", lr=0.05, momentum=0.9),
            model_spec=ModelSpec(name, {}),
            speed=speed,
            overwrite=True,
        )
        found.append((bundle.directory, label))
    return found


def memory_wall_bundles(work_dir: Path) -> list[tuple[Path, str]]:
    """The ExecuTorch technique rows of ``benchmarks/memory_wall.py --quick``, through its planner cache."""
    sys.path.insert(0, str(RUNTIME.parent / "benchmarks"))
    import torch
    from memory_wall import techniques_rows

    from exporters import ModelSpec, OptimizerConfig
    from sdk_tools.data import DIGIT_CLASSES
    from sdk_tools.models import build_model
    from sdk_tools.planner import Planner

    # The weights do not change memory or speed, so an untrained model stands in for the benchmark's pretrained one;
    # seeded, because the planner's cache key covers the weights.
    torch.manual_seed(0)
    kwargs = {"width_mult": 0.35, "num_classes": len(DIGIT_CLASSES), "in_channels": 3}
    optimizer = OptimizerConfig("adamw", lr=3e-4)
    planner = Planner(
        build_model("mobilenet_v2", **kwargs),
        (3, 64, 64),
        8,
        "executorch",
        optimizer,
        work_dir / "quick" / "plans" / "executorch",
        ModelSpec("mobilenet_v2", kwargs),
    )
    found = []
    for r in techniques_rows("executorch", optimizer, 8):
        candidate = planner.candidate(r.plan)
        if candidate is not None:
            found.append((candidate.bundle.directory, r.label))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", nargs="*", help="bundle directories, each optionally DIR=LABEL")
    parser.add_argument("--small", action="store_true", help="add two tiny bundles (MLP; SmallCNN on XNNPACK)")
    parser.add_argument("--memory-wall", action="store_true", help="add the memory-wall benchmark's quick bundles")
    parser.add_argument("--work-dir", type=Path, default=Path("memwall_runs/benchmarks"))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="alternating native/Python runs per bundle")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only-export", action="store_true", help="export the --memory-wall bundles, run nothing")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    parser.add_argument("--json", type=Path, help="also write the rows (JSON) here")
    args = parser.parse_args()
    bundles = [(Path(b.split("=", 1)[0]), b.split("=", 1)[-1] if "=" in b else Path(b).name) for b in args.bundles]
    if args.small:
        bundles += small_bundles(args.work_dir)
    if args.memory_wall:
        bundles += memory_wall_bundles(args.work_dir)
    if args.only_export:
        return
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="memwall-native-bench-") as tmp:
        for bundle_dir, label in bundles:
            rows.append(row(bundle_dir, label, args.steps, args.repeats, args.threads, Path(tmp)))
            print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1) + "\n")
    load_after = os.getloadavg()
    text = table(rows) + (
        f"\n\nLoad average (1/5/15 min) at the start: {load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f}, "
        f"at the end: {load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f}; {args.repeats} alternating runs "
        f"of {args.steps} steps per runner and bundle, {args.threads} thread(s).\n"
    )
    print(text)
    print(fit(rows))
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
