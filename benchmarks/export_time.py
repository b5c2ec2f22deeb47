"""Export time by stage: where `export_bundle` and `memwall plan` spend their seconds, on both backends.

Each case exports a real bundle with ``export_bundle`` while the functions of each stage are wrapped with timers
(exclusive time: a stage called inside another is counted once, in the inner stage):

- ``trace``: ``torch.export.export`` (ExecuTorch) / ``torch.onnx.export`` (ONNX Runtime)
- ``joint``: ``_export_forward_backward`` (joint forward/backward graph) / ``generate_artifacts`` (ORT's gradient
  graph, optimizer model and checkpoint)
- ``edge``: ``to_edge`` / ``to_edge_transform_and_lower`` and ``run_decompositions`` (decompositions, edge dialect)
- ``passes``: memwall's rewrites and graph passes (speed routes, recomputation, fused update)
- ``lowering``: delegation to XNNPACK (``to_backend``); ``to_executorch``: its passes before memory planning
- ``planning``: memory planning; ``emit``: the flatbuffer program; ``serialization``: its bytes
- ``verifier``: ``torch.export``'s program verifier (runs each time a program is built)
- ``memory profile``: the per-layer memory profile and ORT's allocation plan
- ``verification``: the exporter's runtime verification pass, where ``exporters.verify`` exists
- ``other``: everything else (model preparation, manifest, hashes, loading the bundle back)

Plans: ``memwall plan`` at ``--budget`` for the planner's reference model (the demo's MobileNetV2 x0.5 at 32x32,
batch 8), and at 100 KB (no plan fits: refused from a lower bound), each in a child process with a fresh work dir,
wall time including imports.

    python benchmarks/export_time.py --label before          # on the old code (PYTHONPATH at its checkout)
    python benchmarks/export_time.py --label after           # then: both columns in the results file
    python benchmarks/export_time.py --quick                 # the test suite's small reference models

Results of every label are kept in ``benchmarks/RESULTS-export-time.json``; the Markdown file shows each case's
stages per label side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from exporters import OptimizerConfig, export_bundle
from exporters.techniques.freeze import FreezeConfig, apply_freeze
from exporters.techniques.speed_routes import SpeedConfig
from exporters.verify import VerificationError
from sdk_tools.models import build_model

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "RESULTS-export-time.md"
STAGES = (
    "trace",
    "joint",
    "edge",
    "passes",
    "lowering",
    "to_executorch",
    "planning",
    "emit",
    "serialization",
    "verifier",
    "memory profile",
    "verification",
    "other",
)
# (stage, module, attribute): the attribute is wrapped where the module holds it; missing ones are skipped, so the
# same table times older and newer code alike. "Class.method" wraps a method on the class.
HOOKS: tuple[tuple[str, str, str], ...] = (
    ("trace", "torch.export", "export"),
    ("trace", "torch.onnx", "export"),
    ("joint", "exporters.executorch_export", "_export_forward_backward"),
    ("joint", "exporters.onnxruntime_export", "_generate_artifacts"),
    ("edge", "executorch.exir.program._program", "to_edge"),
    ("edge", "exporters.executorch_export", "to_edge"),
    ("edge", "exporters.edge_program", "to_edge_once"),
    ("edge", "exporters.edge_program", "_generate_edge_program"),
    ("edge", "exporters.edge_program", "generate_edge_program"),
    ("edge", "exporters.techniques.xnnpack_frozen", "to_edge_transform_and_lower"),
    ("edge", "torch.export.exported_program", "ExportedProgram.run_decompositions"),
    ("passes", "exporters.executorch_export", "rewrite_pointwise_convs"),
    ("passes", "exporters.executorch_export", "rewrite_im2col_convs"),
    ("passes", "exporters.executorch_export", "recompute_activations"),
    ("passes", "exporters.executorch_export", "sink_temporaries"),
    ("passes", "exporters.executorch_export", "fuse_optimizer_update"),
    ("passes", "exporters.onnxruntime_export", "recompute_training_graph"),
    ("lowering", "executorch.exir.program._program", "EdgeProgramManager.to_backend"),
    ("to_executorch", "executorch.exir.program._program", "EdgeProgramManager.to_executorch"),
    ("planning", "executorch.exir.passes.memory_planning_pass", "MemoryPlanningPass.run"),
    ("emit", "executorch.exir.program._program", "emit_program"),
    ("serialization", "executorch.exir.program._program", "serialize_for_executorch"),
    ("verifier", "torch.export.exported_program", "ExportedProgram.validate"),
    ("verifier", "torch.export.exported_program", "ExportedProgram._validate"),
    ("memory profile", "exporters.executorch_export", "profile_planned_method"),
    ("memory profile", "exporters.onnxruntime_export", "profile_onnx_training"),
    ("memory profile", "exporters.onnxruntime_export", "OrtRun.of"),
    ("memory profile", "exporters.onnxruntime_export", "session_memory"),
)


class StageClock:
    """Exclusive CPU time per stage: entering a stage pauses the one it was called from. CPU time of this process
    (torch runs one thread here), so that the other jobs of a shared machine do not inflate the figures."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        now = time.process_time()
        if self._stack:
            outer, since = self._stack[-1]
            self.seconds[outer] += now - since
        self._stack.append((name, now))
        self.calls[name] += 1
        try:
            yield
        finally:
            _, since = self._stack.pop()
            end = time.process_time()
            self.seconds[name] += end - since
            if self._stack:
                self._stack[-1] = (self._stack[-1][0], end)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.stage(name):
                return fn(*args, **kwargs)

        return timed


def _verification_hooks() -> list[tuple[str, str, str]]:
    """The verification pass's entry points as ``exporters.export`` imported them (if it exists yet)."""
    try:
        export_module = importlib.import_module("exporters.export")
        importlib.import_module("exporters.verify")
    except ImportError:
        return []
    return [
        ("verification", "exporters.export", name)
        for name, value in vars(export_module).items()
        if callable(value) and getattr(value, "__module__", "") == "exporters.verify"
    ]


@contextlib.contextmanager
def hooked(clock: StageClock) -> Iterator[list[str]]:
    """Every hook that exists in the imported code wrapped with ``clock``; yields the ones installed."""
    undo: list[tuple[Any, str, Any]] = []
    installed = []
    for stage, module_name, attribute in (*HOOKS, *_verification_hooks()):
        try:
            owner: Any = importlib.import_module(module_name)
        except ImportError:
            continue
        *classes, name = attribute.split(".")
        for cls in classes:
            owner = getattr(owner, cls, None)
        original = getattr(owner, name, None) if owner is not None else None
        if original is None or (owner, name) in {(o, n) for o, n, _ in undo}:
            continue
        undo.append((owner, name, original))
        setattr(owner, name, clock.wrap(stage, original))
        installed.append(f"{stage}: {module_name}.{attribute}")
    try:
        yield installed
    finally:
        for owner, name, original in reversed(undo):
            setattr(owner, name, original)


@dataclass(frozen=True)
class Case:
    name: str
    backend: str
    model: str
    kwargs: dict[str, Any]
    sample_shape: tuple[int, ...]
    batch: int
    trainable: tuple[str, ...] = ()  # fnmatch patterns; () trains everything
    routes: bool = False

    def export(self, out: Path) -> dict[str, Any]:
        torch.manual_seed(0)
        model = build_model(self.model, **self.kwargs)
        if self.trainable:
            apply_freeze(model, FreezeConfig(self.trainable))
        clock = StageClock()
        with hooked(clock):
            started, cpu = time.perf_counter(), time.process_time()
            with clock.stage("other"):
                try:
                    bundle = export_bundle(
                        model,
                        out,
                        sample_shape=self.sample_shape,
                        batch_size=self.batch,
                        backend=self.backend,
                        optimizer=OptimizerConfig(kind="sgd", lr=0.01, momentum=0.9),
                        speed=SpeedConfig() if self.routes else None,
                        overwrite=True,
                    )
                except VerificationError as refused:  # every stage ran: its time is what an export costs
                    bundle, note = None, str(refused).split(":")[0]
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        found = {"total": cpu, "wall": wall, "stages": dict(clock.seconds), "calls": dict(clock.calls)}
        if bundle is None:
            return found | {"note": note}
        return found | {"planned_arena_bytes": bundle.manifest.memory.planned_arena_bytes}


MNV2 = ("mobilenet_v2", {"width_mult": 1.0}, (3, 96, 96))
CASES = (
    Case("MobileNetV2 x1.0 96x96 b8 full", "executorch", *MNV2, batch=8),
    Case("MobileNetV2 x1.0 96x96 b8 full + routes", "executorch", *MNV2, batch=8, routes=True),
    Case(
        "MobileNetV2 x1.0 96x96 b8 last-2 + routes",
        "executorch",
        *MNV2,
        batch=8,
        trainable=("features.17.*", "features.18.*", "classifier.*"),
        routes=True,
    ),
    Case("MobileNetV2 x1.0 96x96 b8 full (ORT)", "onnxruntime", *MNV2, batch=8),
)
QUICK_MNV2 = (
    "mobilenet_v2",
    {"width_mult": 0.25, "settings": ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2)), "last_channels": 128},
    (3, 16, 16),
)
QUICK_CASES = (
    Case("MLP 1x8x8 b4", "executorch", "mlp", {}, (1, 8, 8), batch=4),
    Case("SmallCNN 1x8x8 b4", "executorch", "small_cnn", {}, (1, 8, 8), batch=4),
    Case("MobileNetV2 (test size) b4", "executorch", *QUICK_MNV2, batch=4),
    Case("MobileNetV2 (test size) b4 + routes", "executorch", *QUICK_MNV2, batch=4, routes=True),
    Case("MobileNetV2 (test size) b4 (ORT)", "onnxruntime", *QUICK_MNV2, batch=4),
)
PLAN_MODEL = ["--model", "mobilenet_v2", "--model-kwargs", '{"width_mult": 0.5}', "--input-shape", "3,32,32"]


def time_plan(budget: str, work: Path, timeout: float) -> dict[str, Any]:
    """``memwall plan`` in a child process (imports included), fresh candidate cache; stopped after ``timeout``."""
    command = [sys.executable, "-m", "sdk_tools.cli", "plan", *PLAN_MODEL, "--batch", "8", "--budget", budget]
    command += ["--work-dir", str(work), "--json"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired as stopped:
        err = stopped.stderr.decode() if isinstance(stopped.stderr, bytes) else stopped.stderr or ""
        done = subprocess.CompletedProcess(command, -9, "", err + f"\nstopped after {timeout:.0f} s")
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    exported = done.stderr.count("exporting: ")
    outcome = "fits" if done.returncode == 0 else (done.stderr.strip().splitlines() or ["?"])[-1][:160]
    if done.returncode == 0:
        report = json.loads(done.stdout)
        best = report["fitting"][0] if report.get("fitting") else None
        outcome = f"best: {best['description']}" if best else outcome
    return {"total": cpu, "wall": wall, "exports": exported, "exit": done.returncode, "outcome": outcome}


def _fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}"


def format_results(results: dict[str, dict[str, Any]]) -> list[str]:
    """One table per case: stages down, labels across."""
    labels = list(results)
    cases = list(dict.fromkeys(case for label in labels for case in results[label]["cases"]))
    lines = []
    for case in cases:
        runs = {label: results[label]["cases"].get(case) for label in labels}
        lines += [f"### {case}", "", "| stage (s) | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
        if all(run is None or "stages" in run for run in runs.values()):
            for stage in STAGES:
                cells = [_fmt(run["stages"].get(stage)) if run else "" for run in runs.values()]
                if any(cell not in ("", "-") for cell in cells):
                    lines.append(f"| {stage} | " + " | ".join(cells) + " |")
            if any(run and run.get("note") for run in runs.values()):
                notes = [run.get("note", "") if run else "" for run in runs.values()]
                lines.append("| note | " + " | ".join(notes) + " |")
        else:
            lines.append(
                "| exports | " + " | ".join(str(run["exports"]) if run else "" for run in runs.values()) + " |"
            )
            lines.append("| outcome | " + " | ".join(run["outcome"] if run else "" for run in runs.values()) + " |")
        totals = [f"**{_fmt(run['total'])}**" if run else "" for run in runs.values()]
        lines.append("| **total (CPU)** | " + " | ".join(totals) + " |")
        lines.append("| wall | " + " | ".join(_fmt(run.get("wall")) if run else "" for run in runs.values()) + " |")
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="now", help="column name for this code version (e.g. before, after)")
    parser.add_argument("--quick", action="store_true", help="the test suite's small reference models")
    parser.add_argument("--cases", nargs="*", help="substrings of case names to run (default: all)")
    parser.add_argument("--budgets", nargs="*", default=["32MB", "100KB"], help="memwall plan budgets (none: skip)")
    parser.add_argument("--plan-timeout", type=float, default=900, help="seconds before a plan run is stopped")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--report", action="store_true", help="only rewrite the Markdown from the JSON results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = [
        c for c in (QUICK_CASES if args.quick else CASES) if not args.cases or any(s in c.name for s in args.cases)
    ]
    store = args.out.with_suffix(".json")
    results: dict[str, dict[str, Any]] = json.loads(store.read_text()) if store.exists() else {}
    if args.report:
        write_report(args.out, results)
        return
    label = f"{args.label} (quick)" if args.quick else args.label
    run = results.setdefault(label, {"cases": {}})
    run.update(
        {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "load": os.getloadavg()[0],
        }
    )
    with tempfile.TemporaryDirectory(prefix="export-time-") as tmp:
        for i, case in enumerate(cases):
            _log(f"{case.name} ...")
            run["cases"][case.name] = found = case.export(Path(tmp) / f"case{i}")
            store.write_text(json.dumps(results, indent=1) + "\n")  # each case kept, should a later one be stopped
            _log(f"{case.name}: {found['total']:.1f} s")
        if not args.quick:
            for budget in args.budgets:
                name = f"memwall plan --budget {budget} (MobileNetV2 x0.5 32x32 b8)"
                _log(f"{name} ...")
                run["cases"][name] = found = time_plan(budget, Path(tmp) / f"plan-{budget}", args.plan_timeout)
                _log(f"{name}: {found['total']:.1f} s, {found['exports']} exports, {found['outcome']}")
    store.write_text(json.dumps(results, indent=1) + "\n")
    write_report(args.out, results)


def write_report(out: Path, results: dict[str, dict[str, Any]]) -> None:
    """Print the tables and write them, with each label's run, to ``out``."""
    lines = format_results({k: v for k, v in results.items() if v["cases"]})
    print("\n".join(lines))
    runs = "\n".join(
        f"- {k}: {v['date']}, load {v['load']:.1f}: `{v['command']}`" + (f". {v['note']}" if v.get("note") else "")
        for k, v in results.items()
    )
    out.write_text(
        "# Export time by stage\n\n"
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; torch threads 1.\n"
        "Stages are exclusive CPU seconds of the exporting process (see `benchmarks/export_time.py`): the machine "
        "is shared, and CPU time is what other jobs do not inflate; `wall` is the elapsed time of the same run. "
        "`plan` rows: the CLI in a child process, CPU time of it and its workers, and wall time.\n\n"
        f"Runs:\n{runs}\n\n" + "\n".join(lines)
    )


def _log(message: str) -> None:
    print(f"[export-time] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
