"""Where `memwall plan` spends its seconds: per candidate and per export stage, for the planner's reference model.

The reference: ``memwall plan --budget 32MB`` for the demo's MobileNetV2 x0.5 at 32x32, batch 8 (the command
``benchmarks/export_time.py`` times), run in this process with a fresh candidate cache and the export stages of
``benchmarks/export_time.py`` wrapped with CPU clocks (exclusive CPU seconds of this process; export lanes in
other processes report their own). Also the CLI itself, in a child process (imports included), for wall time.

    python benchmarks/plan_time.py --label NAME            # in-process stages + the CLI run
    python benchmarks/plan_time.py --label NAME --no-cli   # stages only (--workers 2: as the CLI searches)
    python benchmarks/plan_time.py --render                # the Markdown again from the JSON
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import export_time  # this script's directory is on sys.path
import torch
from export_time import StageClock, hooked, time_plan

from exporters import ModelSpec, OptimizerConfig
from exporters.techniques.speed_routes import SpeedConfig
from sdk_tools.models import build_model
from sdk_tools.planner import Planner, format_report

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "RESULTS-plan-time.md"
MODEL = ("mobilenet_v2", {"width_mult": 0.5}, (3, 32, 32))
# The planner's own work around the exports: sharing traces between a set's variants (hashing the model, copying
# the edge program), preparing the model, reading bundles back.
PLANNER_HOOKS = (
    ("sharing", "exporters.executorch_export", "trace_key"),
    ("sharing", "exporters.executorch_export", "remember"),
    ("sharing", "exporters.executorch_export", "recall"),
    ("model copy", "exporters.plan", "apply_model_techniques"),
    ("bundle read", "sdk_tools.planner", "load_bundle"),
)
export_time.HOOKS = (*export_time.HOOKS, *PLANNER_HOOKS)
STAGES = (*export_time.STAGES[:-1], *dict.fromkeys(stage for stage, _, _ in PLANNER_HOOKS), "other")


def plan_in_process(budget_bytes: int, work: Path, workers: int) -> dict[str, Any]:
    """The planner's search as ``memwall plan`` runs it, stages timed; per candidate: CPU and wall seconds."""
    name, kwargs, shape = MODEL
    torch.manual_seed(0)  # the CLI's --init-seed default
    model = build_model(name, **kwargs)
    clock = StageClock()
    events: list[tuple[str, float, float]] = []

    def log(message: str) -> None:
        events.append((message, time.process_time(), time.perf_counter()))
        print(f"[plan] {message}", file=sys.stderr)

    planner = Planner(
        model,
        shape,
        8,
        "executorch",
        OptimizerConfig(kind="sgd", lr=0.01),
        work,
        model_spec=ModelSpec(name, kwargs),
        speed=SpeedConfig(),
        workers=workers,
        log=log,
    )
    with hooked(clock):
        started, cpu = time.perf_counter(), time.process_time()
        with clock.stage("other"):
            report = planner.search(budget_bytes, top=3)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    candidates = []
    for (message, c0, w0), (_, c1, w1) in itertools.pairwise(events):
        if message.startswith("exporting: "):
            candidates.append({"plan": message.removeprefix("exporting: "), "cpu": c1 - c0, "wall": w1 - w0})
    return {
        "total": cpu,
        "wall": wall,
        "stages": dict(clock.seconds),
        "calls": dict(clock.calls),
        "candidates": candidates,
        "report": report.to_json(bundles=False),
        "table": format_report(report),
    }


def format_run(label: str, run: dict[str, Any], reference: dict[str, Any] | None) -> list[str]:
    lines = [f"## {label}", "", run["meta"], ""]
    if reference is not None and reference is not run and "report" in run:
        same = run["report"] == reference["report"]
        lines += [f"Report (plans, predicted peaks, arenas, everything tried) equal to the first run's: **{same}**", ""]
    if "stages" in run:
        lines += ["| stage | CPU s |", "|---|---|"]
        lines += [f"| {s} | {run['stages'][s]:.1f} |" for s in STAGES if run["stages"].get(s)]
        lines += [f"| **total (CPU)** | **{run['total']:.1f}** |", f"| wall | {run['wall']:.1f} |", ""]
        lines += ["| candidate exported | CPU s | wall s |", "|---|---|---|"]
        lines += [f"| {c['plan']} | {c['cpu']:.1f} | {c['wall']:.1f} |" for c in run["candidates"]]
        lines += ["", "```", run["table"], "```", ""]
    if "cli" in run:
        cli = run["cli"]
        lines += [
            f"CLI `memwall plan --budget 32MB` (child process, imports included): {cli['total']:.1f} s CPU, "
            f"{cli['wall']:.1f} s wall, {cli['exports']} export(s), {cli['outcome']}",
            "",
        ]
    return lines


def write_results(out: Path, label: str | None, run: dict[str, Any] | None) -> list[str]:
    """Add ``run`` under ``label`` to the JSON results (if given), write the Markdown of every run; ``run``'s lines."""
    results_json = out.with_suffix(".json")
    results: dict[str, Any] = json.loads(results_json.read_text()) if results_json.exists() else {}
    if label is not None:
        results[label] = run
        results_json.write_text(json.dumps(results, indent=1) + "\n")
    reference = next((r for r in results.values() if "report" in r), None)
    text = ["# memwall plan time (MobileNetV2 x0.5 32x32, batch 8, budget 32 MB)", ""]
    text += [line for name, r in results.items() for line in format_run(name, r, reference)]
    out.write_text("\n".join(text))
    return format_run(label, run, reference) if label is not None and run is not None else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", help="the run's name in the results (needed unless --render)")
    parser.add_argument("--workers", type=int, default=1, help="the in-process run's Planner(workers=...)")
    parser.add_argument("--no-stages", action="store_true", help="skip the in-process run")
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--render", action="store_true", help="only write the Markdown again from the JSON")
    args = parser.parse_args()
    if args.render:
        write_results(args.out, None, None)
        return 0
    if not args.label:
        parser.error("--label is needed to run")
    torch.set_num_threads(1)
    load = os.getloadavg()
    run: dict[str, Any] = {
        "meta": (
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} cores, load "
            f"{load[0]:.1f} at start; torch threads 1; `{' '.join(sys.argv[1:])}`"
        )
    }
    with tempfile.TemporaryDirectory(prefix="memwall-plan-time-") as tmp:
        if not args.no_stages:
            run.update(plan_in_process(32 * 2**20, Path(tmp) / "stages", args.workers))
        if not args.no_cli:
            run["cli"] = time_plan("32MB", Path(tmp) / "cli", timeout=3000)
    run["meta"] += f", load {os.getloadavg()[0]:.1f} at end"
    print("\n".join(write_results(args.out, args.label, run)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
