"""The memory wall, measured: naive full fine-tune vs each technique vs the planner's plans, on both backends.

    python benchmarks/memory_wall.py            # MobileNetV2 width 1.0, 128x128, batch 8 (long: ~1 h here)
    python benchmarks/memory_wall.py --quick    # width 0.35, 64x64: the same rows in minutes

Every row is a real bundle trained in its real runtime in a measuring child (``sdk_tools.measure``): measured
peak = VmHWM over the loaded-but-idle baseline, step time from the runtime. The eager column is the same
step (same trainable set, same optimizer) in eager PyTorch on the same thread count, timed in this process.
Accuracy: the plan's math (trainable set, optimizer, steps, data) trained in eager PyTorch on the user's
digits from the pretrained model and tested on their held-out digits; exact techniques (recomputation,
micro-batching, fused update) do not change it (the test suite proves gradients equal), so the column
repeats it for them. Planner rows: the best plan for each budget, measured under that budget as a hard cap.

Writes the table to ``benchmarks/RESULTS.md`` (command, date, machine) and ``benchmarks/memory_wall.png``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from exporters import ModelSpec, OptimizerConfig
from exporters.plan import TrainingPlan, apply_model_techniques, export_plan
from exporters.techniques import FreezeConfig, RecomputeConfig
from exporters.training_graph import prepare_for_training_export
from sdk_tools.data import DIGIT_CLASSES, load_digits_split
from sdk_tools.data.loading import Batches
from sdk_tools.measure import Measurement, OutOfMemoryError, measure_training
from sdk_tools.models import build_model
from sdk_tools.planner import NoPlanFitsError, Planner
from sdk_tools.pretrain import accuracy, pretrain
from sdk_tools.runner.train import TrainConfig

HERE = Path(__file__).parent
THREADS = 2
BUDGETS_MIB = (16, 32, 64, 128)


@dataclass(frozen=True)
class Row:
    label: str
    backend: str
    plan: TrainingPlan
    budget_mib: int | None = None


def techniques_rows(backend: str, optimizer: OptimizerConfig, batch: int) -> list[Row]:
    full = FreezeConfig()
    auto = RecomputeConfig("auto")
    rows = [
        Row("naive full fine-tune", backend, TrainingPlan(full, optimizer)),
        Row("recomputation", backend, TrainingPlan(full, optimizer, recompute=auto)),
        Row(f"micro-batches {batch}x1", backend, TrainingPlan(full, optimizer, micro_batches=batch)),
        Row("exact: recompute + micro-batches", backend, TrainingPlan(full, optimizer, batch, auto)),
        Row("last 2 blocks", backend, TrainingPlan(FreezeConfig(last_blocks=2), optimizer)),
        Row("bias-only + head (TinyTL)", backend, TrainingPlan(FreezeConfig(last_blocks=0, bias_only=True), optimizer)),
        Row("head only", backend, TrainingPlan(FreezeConfig(last_blocks=0), optimizer)),
        Row(
            "sparse: bias-only + recompute + micro-batches",
            backend,
            TrainingPlan(FreezeConfig(last_blocks=0, bias_only=True), optimizer, batch, auto),
        ),
    ]
    return rows


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.size = (64, 64) if args.quick else (128, 128)
        self.width = 0.35 if args.quick else 1.0
        self.batch = 8
        self.kwargs = {"width_mult": self.width, "num_classes": len(DIGIT_CLASSES), "in_channels": 3}
        self.work = Path(args.work_dir) / ("quick" if args.quick else "full")
        self.work.mkdir(parents=True, exist_ok=True)
        self.model = self._pretrained()
        self.personal = load_digits_split("personal", self.size, 3)
        self.personal_test = load_digits_split("personal_test", self.size, 3)
        self._accuracy: dict[str, float] = {}

    def _pretrained(self) -> torch.nn.Module:
        model = build_model("mobilenet_v2", **self.kwargs)
        path = self.work / "pretrained.pt"
        if path.exists():
            model.load_state_dict(torch.load(path, weights_only=True))
            return model
        pretrain(model, load_digits_split("pretrain", self.size, 3), epochs=4 if self.args.quick else 6)
        print(f"pretrained: {accuracy(model, load_digits_split('pretrain_test', self.size, 3)):.1%}", file=sys.stderr)
        torch.save(model.state_dict(), path)
        return model

    def export(self, row: Row, directory: Path) -> Path:
        export_plan(
            self.model,
            directory,
            row.plan,
            sample_shape=(3, *self.size),
            batch_size=self.batch,
            backend=row.backend,
            classes=DIGIT_CLASSES,
            model_spec=ModelSpec("mobilenet_v2", self.kwargs),
            overwrite=True,
        )
        return directory

    def measure(self, bundle: Path, cap_mib: int | None = None) -> Measurement:
        config = TrainConfig(steps=self.args.steps, eval_split="personal_test", checkpoint_every=0, progress=False)
        return measure_training(bundle, config, threads=THREADS, cap_bytes=cap_mib * 2**20 if cap_mib else None)

    def eager_step_seconds(self, plan: TrainingPlan) -> float:
        model = prepare_for_training_export(apply_model_techniques(self.model, plan))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = _torch_optimizer(plan.optimizer, params)
        x = self.personal.images[: self.batch]
        y = self.personal.labels[: self.batch]
        times = []
        for _ in range(6):
            started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            times.append(time.perf_counter() - started)
        return statistics.median(times[1:])

    def plan_accuracy(self, plan: TrainingPlan) -> float:
        """Personalization accuracy of the plan's math (trainable set + optimizer), eager PyTorch."""
        key = repr((plan.freeze, plan.optimizer))
        if key not in self._accuracy:
            model = prepare_for_training_export(apply_model_techniques(copy.deepcopy(self.model), plan))
            optimizer = _torch_optimizer(plan.optimizer, [p for p in model.parameters() if p.requires_grad])
            stream = Batches(self.personal, self.batch, seed=0).from_position(0)
            for _ in range(self.args.accuracy_steps):
                x, y = next(stream)
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                optimizer.step()
            self._accuracy[key] = accuracy(model, self.personal_test)
        return self._accuracy[key]


def _torch_optimizer(config: OptimizerConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if config.kind == "adamw":
        return torch.optim.AdamW(
            params, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay
        )
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="width 0.35, 64x64: minutes instead of an hour")
    parser.add_argument("--backends", nargs="+", default=["executorch", "onnxruntime"])
    parser.add_argument("--steps", type=int, default=4, help="measured training steps per row")
    parser.add_argument("--accuracy-steps", type=int, default=150, help="personalization steps for the accuracy")
    parser.add_argument("--budgets", nargs="*", type=int, default=list(BUDGETS_MIB), help="planner budgets (MiB)")
    parser.add_argument("--work-dir", default="memwall_runs/benchmarks")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    bench = Bench(args)
    optimizers = {
        "executorch": OptimizerConfig("sgd", lr=0.01, momentum=0.9),
        "onnxruntime": OptimizerConfig("adamw", lr=3e-4),
    }
    rows: list[Row] = []
    for backend in args.backends:
        rows += techniques_rows(backend, optimizers[backend], bench.batch)
        rows += [
            Row(f"planner @ {b} MiB", backend, TrainingPlan(optimizer=optimizers[backend]), b) for b in args.budgets
        ]
    results = []
    planners = {
        backend: Planner(
            bench.model,
            (3, *bench.size),
            bench.batch,
            backend,
            optimizers[backend],
            bench.work / "plans" / backend,
            ModelSpec("mobilenet_v2", bench.kwargs),
        )
        for backend in args.backends
    }
    for i, row in enumerate(rows, 1):
        print(f"[{i}/{len(rows)}] {row.backend}: {row.label}", file=sys.stderr, flush=True)
        result: dict = {"row": row}
        try:
            if row.budget_mib is None:
                bundle = bench.export(row, bench.work / row.backend / f"row{i}")
                plan = row.plan
            else:
                best = planners[row.backend].search(row.budget_mib * 2**20, margin=0.1, top=1).fitting[0]
                bundle, plan = best.bundle.directory, best.plan
                result["plan"] = plan.describe()
            result["measurement"] = bench.measure(bundle, cap_mib=row.budget_mib)
        except NoPlanFitsError as exc:
            result["note"] = str(exc).split(";")[1].strip() if ";" in str(exc) else str(exc)
            results.append(result)
            continue
        except OutOfMemoryError:
            result["note"] = "killed at the budget (out of memory)"
            plan = row.plan
        result["eager_s"] = bench.eager_step_seconds(plan)
        result["accuracy"] = bench.plan_accuracy(plan)
        result["plan_obj"] = plan
        results.append(result)
    text = render(results, args, bench)
    print(text)
    Path(args.out).write_text(text)
    plot(results, Path(args.out).with_name("memory_wall.png"))
    return 0


def render(results: list[dict], args: argparse.Namespace, bench: Bench) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Memory wall benchmark",
        "",
        f"Command: `python benchmarks/memory_wall.py {' '.join(sys.argv[1:])}`  ",
        f"Date: {now}; machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; "
        f"{THREADS} threads everywhere.  ",
        f"Model: MobileNetV2 width {bench.width}, 3x{bench.size[0]}x{bench.size[1]}, batch {bench.batch}, "
        f"10 classes (digits), BatchNorm frozen; {args.steps} measured steps per row (with evaluation); "
        f"accuracy after {args.accuracy_steps} personalization steps.",
        "",
        "| backend | row | plan | predicted MiB | measured MiB | error | vs naive | step ms | eager ms | "
        "step/eager | accuracy | note |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    naive: dict[str, int] = {}
    for r in results:
        row: Row = r["row"]
        m: Measurement | None = r.get("measurement")
        if m is None:
            lines.append(f"| {row.backend} | {row.label} | - | - | - | - | - | - | - | - | - | {r.get('note', '')} |")
            continue
        naive.setdefault(row.backend, m.peak_delta_bytes)
        step_ms = 1000 / m.train["steps_per_second"]
        eager_ms = r["eager_s"] * 1000
        plan = r.get("plan") or r["plan_obj"].describe()
        lines.append(
            f"| {row.backend} | {row.label} | {plan} | {m.predicted_peak_bytes / 2**20:.1f} | "
            f"{m.peak_delta_bytes / 2**20:.1f} | {m.prediction_error:+.1%} | "
            f"{naive[row.backend] / m.peak_delta_bytes:.1f}x | {step_ms:.0f} | {eager_ms:.0f} | "
            f"{step_ms / eager_ms:.1f}x | {r['accuracy']:.1%} | {r.get('note', '')} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in results if r.get("measurement")]
    backends = list(dict.fromkeys(r["row"].backend for r in measured))
    fig, axes = plt.subplots(1, len(backends), figsize=(7 * len(backends), 6), squeeze=False)
    for ax, backend in zip(axes[0], backends, strict=True):
        rs = [r for r in measured if r["row"].backend == backend]
        labels = [r["row"].label for r in rs]
        ax.barh(labels, [r["measurement"].peak_delta_bytes / 2**20 for r in rs], label="measured")
        ax.scatter([r["measurement"].predicted_peak_bytes / 2**20 for r in rs], labels, color="red", label="predicted")
        ax.invert_yaxis()
        ax.set_xlabel("peak training memory over idle (MiB)")
        ax.set_title(backend)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
