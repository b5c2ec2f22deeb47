"""The memory wall, measured: naive full fine-tune vs each technique vs the planner's plans, on both backends.

    python benchmarks/memory_wall.py            # MobileNetV2 width 1.0, 128x128, batch 8 (hours here)
    python benchmarks/memory_wall.py --quick --out benchmarks/RESULTS-quick.md   # width 0.35, 64x64 (~1 h here)

Every row is a real bundle trained in its real runtime in a measuring child (``sdk_tools.measure``): measured
peak = VmHWM over the loaded-but-idle baseline, step time from the runtime. The eager column is the same
step (same trainable set, same optimizer) in eager PyTorch on the same thread count, timed in this process.
Accuracy: the plan's math (trainable set, optimizer, steps, data) trained in eager PyTorch on the user's
digits from the pretrained model and tested on their held-out digits; exact techniques (recomputation,
micro-batching, fused update) do not change it (the test suite proves gradients equal), so the column
repeats it for them. A sparse set wants a larger learning rate than the whole model, so each trainable set
gets its own: the one of ``--lrs`` that scores best on a validation fifth held out of the user's training
digits (trained on the other four fifths); the test digits are only used for the reported figure.
Planner rows: the best plan for each budget, measured under that budget as a hard cap.

Writes the table to ``--out`` (default ``benchmarks/RESULTS.md``: command, date, machine) and a plot beside it
(``RESULTS.png``); the table is rewritten after every row, so a long run that stops keeps what it measured.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import os
import platform
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Busy-waiting OpenMP threads slow eager steps by orders of magnitude when another process holds the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torch.nn.functional as F
from executorch.exir import EdgeCompileConfig, to_edge

from exporters import ModelSpec, OptimizerConfig, load_bundle
from exporters.bundle import write_manifest
from exporters.executorch_export import export_joint_graph
from exporters.losses import resolve_loss
from exporters.plan import TrainingPlan, apply_model_techniques
from exporters.techniques import FreezeConfig, FusedUpdateConfig, Int8WeightsConfig, LoraConfig, RecomputeConfig
from exporters.training_graph import prepare_for_training_export
from sdk_tools.data import DIGIT_CLASSES, DigitsSplit, load_digits_split
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
    # The runtime's own default instead of memwall's settings (ONNX Runtime: its CPU memory arena on).
    runtime_default: bool = False


def techniques_rows(backend: str, optimizer: OptimizerConfig, batch: int) -> list[Row]:
    full = FreezeConfig()
    auto = RecomputeConfig("auto")
    head = FreezeConfig(last_blocks=0)
    bias = FreezeConfig(last_blocks=0, bias_only=True)
    lora = LoraConfig(rank=4)
    int8 = Int8WeightsConfig()
    rows = []
    if backend == "onnxruntime":
        rows.append(Row("ORT's default (CPU arena on)", backend, TrainingPlan(full, optimizer), runtime_default=True))
    rows += [
        Row("naive full fine-tune", backend, TrainingPlan(full, optimizer)),
        Row("recomputation", backend, TrainingPlan(full, optimizer, recompute=auto)),
        Row(f"micro-batches {batch}x1", backend, TrainingPlan(full, optimizer, micro_batches=batch)),
        Row("exact: recompute + micro-batches", backend, TrainingPlan(full, optimizer, batch, auto)),
    ]
    if backend == "executorch":
        fused = FusedUpdateConfig()
        rows += [
            Row("fused update", backend, TrainingPlan(full, optimizer, fused_update=fused)),
            Row(
                "exact: recompute + fused update",
                backend,
                TrainingPlan(full, optimizer, recompute=auto, fused_update=fused),
            ),
        ]
    rows += [
        Row("last 2 blocks", backend, TrainingPlan(FreezeConfig(last_blocks=2), optimizer)),
        Row("LoRA r4 + head", backend, TrainingPlan(head, optimizer, lora=lora)),
        Row("bias-only + head (TinyTL)", backend, TrainingPlan(bias, optimizer)),
        Row("head only", backend, TrainingPlan(head, optimizer)),
        Row("head only + int8 frozen", backend, TrainingPlan(head, optimizer, int8_frozen=int8)),
        Row("sparse: bias-only + recompute + micro-batches", backend, TrainingPlan(bias, optimizer, batch, auto)),
        Row(
            "sparse: LoRA r4 + head + recompute + micro-batches",
            backend,
            TrainingPlan(head, optimizer, batch, auto, lora=lora),
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
        self._accuracy: dict[str, tuple[float, float]] = {}

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

    def with_runtime_defaults(self, bundle: Path) -> Path:
        """A copy of an ONNX Runtime bundle that runs with ORT's default session options (CPU arena on)."""
        copy_dir = bundle.with_name(bundle.name + "-ort-default")
        shutil.rmtree(copy_dir, ignore_errors=True)
        shutil.copytree(bundle, copy_dir)
        manifest = load_bundle(copy_dir).manifest
        options = {**manifest.backend_options, "cpu_mem_arena": True}
        write_manifest(copy_dir, dataclasses.replace(manifest, backend_options=options))
        return copy_dir

    def stock_executorch_arena(self, plan: TrainingPlan) -> int:
        """The training method's arena as ExecuTorch's own pipeline plans it (``to_executorch()`` defaults)."""
        model = prepare_for_training_export(apply_model_techniques(self.model, plan))
        x = torch.zeros((self.batch, 3, *self.size))
        y = torch.zeros(self.batch, dtype=torch.long)
        joint = export_joint_graph(model, resolve_loss("cross_entropy"), x, y)
        program = to_edge(joint, compile_config=EdgeCompileConfig(_check_ir_validity=False)).to_executorch()
        return sum(program.executorch_program.execution_plan[0].non_const_buffer_sizes)

    def measure(self, bundle: Path, cap_mib: int | None = None) -> Measurement:
        # Two predict batches run the predict method (its arena is part of the peak); the accuracy column comes
        # from eager PyTorch, so evaluating every test digit in the runtime would only cost time.
        config = TrainConfig(
            steps=self.args.steps,
            eval_split="personal_test",
            eval_samples=2 * self.batch,
            checkpoint_every=0,
            progress=False,
        )
        return measure_training(bundle, config, threads=THREADS, cap_bytes=cap_mib * 2**20 if cap_mib else None)

    def eager_step_seconds(self, plan: TrainingPlan) -> float:
        model = prepare_for_training_export(apply_model_techniques(self.model, plan))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = plan.optimizer.torch_optimizer(params)
        x = self.personal.images[: self.batch]
        y = self.personal.labels[: self.batch]
        times = []
        for _ in range(8):
            started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            times.append(time.perf_counter() - started)
        return min(times[1:])  # the least disturbed step: this machine is shared

    def plan_accuracy(self, plan: TrainingPlan) -> tuple[float, float]:
        """(test accuracy, learning rate) of the plan's math (trainable set + optimizer) in eager PyTorch, at
        the learning rate of ``--lrs`` that a validation fifth of the user's training digits picks."""
        # Exact techniques do not change the math: rows that differ only in those share one accuracy.
        key = repr((plan.freeze, plan.optimizer.kind, plan.lora, plan.int8_frozen))
        if key not in self._accuracy:
            train, validation = _split_fifth(self.personal)
            scores = {lr: accuracy(self._personalized(plan, lr, train), validation) for lr in self.args.lrs}
            lr = max(scores, key=lambda rate: (scores[rate], -rate))
            self._accuracy[key] = accuracy(self._personalized(plan, lr, self.personal), self.personal_test), lr
        return self._accuracy[key]

    def _personalized(self, plan: TrainingPlan, lr: float, data: DigitsSplit) -> torch.nn.Module:
        model = prepare_for_training_export(apply_model_techniques(copy.deepcopy(self.model), plan))
        config = dataclasses.replace(plan.optimizer, lr=lr)
        optimizer = config.torch_optimizer([p for p in model.parameters() if p.requires_grad])
        stream = Batches(data, self.batch, seed=0).from_position(0)
        for _ in range(self.args.accuracy_steps):
            x, y = next(stream)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        return model


def _split_fifth(data: DigitsSplit) -> tuple[DigitsSplit, DigitsSplit]:
    """Four fifths to train on and every fifth sample to validate on (the split is stratified, so is this)."""
    held = torch.arange(len(data)) % 5 == 4
    return DigitsSplit(data.images[~held], data.labels[~held]), DigitsSplit(data.images[held], data.labels[held])


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_row(row: Row, bench: Bench, planners: dict[str, Planner]) -> dict:
    """Export (through the planner's cache) and measure one row; a failure is the row's note, not the run's end."""
    result: dict = {"row": row}
    try:
        if row.budget_mib is None:
            # Through the planner's cache: planner rows reuse these exports, and a rerun reuses all of them.
            found = planners[row.backend].candidate(row.plan)
            if found is None:
                raise ValueError(f"{row.backend} cannot export this plan")
            bundle, plan = found.bundle.directory, row.plan
            if row.runtime_default:
                bundle = bench.with_runtime_defaults(bundle)
        else:
            best = planners[row.backend].search(row.budget_mib * 2**20, margin=0.1, top=1).fitting[0]
            bundle, plan = best.bundle.directory, best.plan
            result["plan"] = plan.describe()
        result["bundle"] = bundle
        result["measurement"] = bench.measure(bundle, cap_mib=row.budget_mib)
    except NoPlanFitsError as exc:
        result["note"] = str(exc).split(";")[1].strip() if ";" in str(exc) else str(exc)
        return result
    except OutOfMemoryError:
        result["note"] = "killed at the budget (out of memory)"
        plan = row.plan
    except Exception as exc:  # one broken row must not cost the hour the others took: it is reported
        result["note"] = f"failed: {type(exc).__name__}: {exc}".replace("|", "/").replace("\n", " ")[:300]
        return result
    result["eager_s"] = bench.eager_step_seconds(plan)
    result["accuracy"] = bench.plan_accuracy(plan)
    result["plan_obj"] = plan
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="width 0.35, 64x64: a smaller model, same rows")
    parser.add_argument("--backends", nargs="+", default=["executorch", "onnxruntime"])
    parser.add_argument("--steps", type=int, default=4, help="measured training steps per row")
    parser.add_argument("--accuracy-steps", type=int, default=150, help="personalization steps for the accuracy")
    parser.add_argument(
        "--lrs", nargs="+", type=float, default=[3e-4, 1e-3, 3e-3, 1e-2], help="learning rates the accuracy may pick"
    )
    parser.add_argument("--budgets", nargs="*", type=int, default=list(BUDGETS_MIB), help="planner budgets (MiB)")
    parser.add_argument("--rows", nargs="*", help="only the rows whose label contains one of these texts")
    parser.add_argument("--work-dir", default="memwall_runs/benchmarks")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    bench = Bench(args)
    optimizers = {
        "executorch": OptimizerConfig("adamw", lr=3e-4),
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
    if args.rows:
        rows = [row for row in rows if any(text in row.label for text in args.rows)]
    # Stopped by Ctrl-C or SIGTERM (a long run on a shared machine), it still writes the table and plot so far.
    signal.signal(signal.SIGTERM, _interrupt)
    stopped = ""
    for i, row in enumerate(rows, 1):
        print(f"[{i}/{len(rows)}] {row.backend}: {row.label}", file=sys.stderr, flush=True)
        try:
            results.append(run_row(row, bench, planners))
        except KeyboardInterrupt:
            stopped = (
                f"\n(stopped after {i - 1} of {len(rows)} rows: {', '.join(r.label for r in rows[i - 1 :])} not run)\n"
            )
            print(stopped.strip(), file=sys.stderr)
            break
        Path(args.out).write_text(render(results, args, bench, None) + f"\n(partial: {i} of {len(rows)} rows)\n")
    stock = None
    if "executorch" in args.backends and not stopped:
        stock = bench.stock_executorch_arena(TrainingPlan(optimizer=optimizers["executorch"]))
    text = render(results, args, bench, stock) + stopped
    print(text)
    Path(args.out).write_text(text)
    plot(results, Path(args.out).with_suffix(".png"))
    return 0


def render(results: list[dict], args: argparse.Namespace, bench: Bench, stock_arena: int | None) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Memory wall benchmark",
        "",
        f"Command: `python benchmarks/memory_wall.py {' '.join(sys.argv[1:])}`  ",
        f"Date: {now}; machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; "
        f"{THREADS} threads everywhere.  ",
        f"Model: MobileNetV2 width {bench.width}, 3x{bench.size[0]}x{bench.size[1]}, batch {bench.batch}, "
        f"10 classes (digits), BatchNorm frozen; {args.steps} measured steps per row, then the predict method on two "
        f"batches; accuracy on the user's test digits after {args.accuracy_steps} personalization steps at the "
        f"learning rate (of {', '.join(f'{lr:g}' for lr in args.lrs)}) a validation fifth of their "
        "training digits picks.",
        "",
        "| backend | row | plan | predicted MiB | measured MiB | error | vs naive | step ms | eager ms | "
        "step/eager | accuracy (lr) | note |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    naive: dict[str, int] = {}
    for r in results:
        row: Row = r["row"]
        m: Measurement | None = r.get("measurement")
        if m is None:
            lines.append(f"| {row.backend} | {row.label} | - | - | - | - | - | - | - | - | - | {r.get('note', '')} |")
            continue
        if not row.runtime_default:
            naive.setdefault(row.backend, m.peak_delta_bytes)
        step_ms = 1000 / m.train["steps_per_second"]
        eager_ms = r["eager_s"] * 1000
        plan = r.get("plan") or r["plan_obj"].describe()
        predicted, error = f"{m.predicted_peak_bytes / 2**20:.1f}", f"{m.prediction_error:+.1%}"
        if row.runtime_default:  # memwall predicts its own settings, not the runtime's defaults
            predicted = error = "-"
        versus = f"{naive[row.backend] / m.peak_delta_bytes:.1f}x" if row.backend in naive else "-"
        lines.append(
            f"| {row.backend} | {row.label} | {plan} | {predicted} | "
            f"{m.peak_delta_bytes / 2**20:.1f} | {error} | "
            f"{versus} | {step_ms:.0f} | {eager_ms:.0f} | "
            f"{step_ms / eager_ms:.1f}x | {r['accuracy'][0]:.1%} ({r['accuracy'][1]:g}) | {r.get('note', '')} |"
        )
    naive_et = next((r for r in results if r["row"].backend == "executorch" and r.get("measurement")), None)
    if stock_arena is not None and naive_et is not None:
        planned = load_bundle(naive_et["bundle"]).manifest.memory.planned_arena_bytes
        lines += [
            "",
            f"ExecuTorch's default export (`to_executorch()` with its default memory planning) plans the naive "
            f"training method's arena at {stock_arena / 2**20:.1f} MiB; memwall's naive export plans "
            f"{planned / 2**20:.1f} MiB: the naive row is what a user gets without memwall.",
        ]
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
        predicted = [r for r in rs if not r["row"].runtime_default]  # memwall predicts its own settings only
        ax.scatter(
            [r["measurement"].predicted_peak_bytes / 2**20 for r in predicted],
            [r["row"].label for r in predicted],
            color="red",
            label="predicted",
        )
        ax.invert_yaxis()
        ax.set_xlabel("peak training memory over idle (MiB)")
        ax.set_title(backend)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
