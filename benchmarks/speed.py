"""Training step time per model and freeze plan: ExecuTorch without and with each speed route, ONNX Runtime, eager.

Every ExecuTorch row is a real bundle from ``export_bundle`` (``speed=None``, pointwise only, im2col only, XNNPACK
only, all routes = ``SpeedConfig()``, as the CLI exports by default); a route that has nothing to do in a plan gets
no row. The ONNX Runtime row is an ``onnxruntime`` bundle. A step is what the app runs: the training method plus the
optimizer (plain SGD) through the runner's sessions; eager is forward + backward + ``torch.optim.SGD``. Rows of
one model+plan are timed round-robin, step by step, so that load from other jobs hits them alike; a row whose
step exceeds ``--slow`` seconds stops after its first timed step. Beside each ExecuTorch row: the planned arena,
the manifest's predicted peak and, for the routed rows (and baselines faster than ``--slow``), the peak measured
by ``memwall measure`` (a child process, random data, no evaluation), so a route's memory cost shows next to its
speed. Loss and gradients of every ExecuTorch row are checked against eager on the first batch.

    python benchmarks/speed.py                                 # MLP, SmallCNN 1x28x28; MobileNetV2 x1.0 3x96x96
    python benchmarks/speed.py --models mobilenet_v2 --plans full bias

ExecuTorch's thread pool is sized to ``--threads`` before the first program loads (it cannot be resized later);
torch gets the same; ONNX Runtime keeps its default intra-op pool (one thread per physical core).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch's idle OpenMP workers must not spin against the others

import torch
import torch.nn.functional as F
from torch import nn

from exporters import Bundle, ModelSpec, OptimizerConfig, export_bundle
from exporters.techniques.freeze import FreezeConfig, apply_freeze
from exporters.techniques.im2col_matmul import rewrite_im2col_convs
from exporters.techniques.pointwise_linear import rewrite_pointwise_convs
from exporters.techniques.speed_routes import ROUTES, SpeedConfig
from exporters.training_graph import prepare_for_training_export, strip_prefix
from sdk_tools.measure import measure_training
from sdk_tools.models import build_model
from sdk_tools.runner.train import TrainConfig, open_session

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "RESULTS-speed.md"
LR = 0.01
MODELS: dict[str, tuple[dict, tuple[int, ...]]] = {
    "mlp": ({"input_shape": (1, 28, 28)}, (1, 28, 28)),
    "small_cnn": ({}, (1, 28, 28)),
    "mobilenet_v2": ({"width_mult": 1.0}, (3, 96, 96)),
}
PLANS = ("full", "last2", "bias", "classifier")
GOALS = {"full": 2.0, "bias": 1.5, "last2": 1.0, "classifier": 1.0}  # issue 6: ExecuTorch / eager at most
VARIANTS: dict[str, SpeedConfig | None] = {
    "et": None,
    "et+pointwise": SpeedConfig(im2col_matmul=None, xnnpack_frozen=None),
    "et+im2col": SpeedConfig(pointwise_linear=None, xnnpack_frozen=None),
    "et+xnnpack": SpeedConfig(pointwise_linear=None, im2col_matmul=None),
    "et+routes": SpeedConfig(),
}


def plan_patterns(model: nn.Module, plan: str) -> tuple[str, ...]:
    """fnmatch patterns of the plan; last-2 = the last two parameterized children of ``features`` + the head."""
    if plan == "full":
        return ()
    if plan == "bias":
        return ("*.bias", "classifier.*")
    if plan == "classifier":
        return ("classifier.*",)
    blocks = [name for name, child in model.features.named_children() if any(True for _ in child.parameters())]
    return (*(f"features.{name}.*" for name in blocks[-2:]), "classifier.*")


@dataclass
class Row:
    name: str
    step: Callable[[], float]
    bundle: Bundle | None = None
    grad_error: float | None = None
    measured_peak: int | None = None
    times: list[float] = field(default_factory=list)
    done: bool = False


def eager_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], float]:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def routes_applied(bundle: Bundle) -> set[str]:
    return {t["name"] for t in bundle.manifest.techniques} & set(ROUTES)


def rows_for(name: str, plan: str, batch: int, threads: int, root: Path, wanted: set[str], slow: float) -> list[Row]:
    kwargs, shape = MODELS[name]
    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    apply_freeze(model, FreezeConfig(plan_patterns(model, plan)))
    if plan != "full" and all(p.requires_grad for p in model.parameters()):
        return []  # the plan trains everything: the full row is its row
    prepared = prepare_for_training_export(model)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand((batch, *shape), generator=gen), torch.randint(0, 10, (batch,), generator=gen)
    reference = copy.deepcopy(prepared)
    reference_loss = F.cross_entropy(reference(x), y)
    reference_loss.backward()
    eager_grads = {n: p.grad for n, p in reference.named_parameters() if p.requires_grad}
    has = {  # which routes have something to do in this plan
        "pointwise_linear": bool(rewrite_pointwise_convs(copy.deepcopy(prepared), sample=x)),
        "im2col_matmul": bool(rewrite_im2col_convs(copy.deepcopy(prepared), sample=x)),
        "xnnpack_frozen": any(not p.requires_grad for p in prepared.parameters()),
    }
    rows: list[Row] = []
    seen: set[frozenset[str]] = set()
    spec = ModelSpec(name, kwargs)
    for variant, speed in VARIANTS.items():
        if variant not in wanted:
            continue
        if speed is not None and not any(getattr(speed, route) and has[route] for route in ROUTES):
            continue  # no route of this row applies: the same program as "et"
        _log(f"{name} {plan}: exporting {variant}")
        started = time.perf_counter()
        bundle = export_bundle(
            model,
            root / f"{name}-{plan}-{variant}",
            sample_shape=shape,
            batch_size=batch,
            optimizer=OptimizerConfig(kind="sgd", lr=LR),
            model_spec=spec,
            speed=speed,
        )
        _log(f"{name} {plan}: {variant} exported in {time.perf_counter() - started:.0f} s")
        applied = frozenset(routes_applied(bundle))
        if applied in seen:
            continue  # a route with nothing to do here: the same program as an earlier row
        seen.add(applied)
        session = open_session(bundle, threads)
        loss, _, grads = session.forward_backward(x, y)
        error = max(
            [abs(loss - reference_loss.item())]
            + [float((g - eager_grads[strip_prefix(n)]).abs().max()) for n, g in grads.items()]
        )
        rows.append(Row(variant, lambda s=session: s.train_step([(x, y)])[0], bundle, error))
    if "onnxruntime" in wanted:
        try:
            bundle = export_bundle(
                model,
                root / f"{name}-{plan}-ort",
                sample_shape=shape,
                batch_size=batch,
                backend="onnxruntime",
                optimizer=OptimizerConfig(kind="sgd", lr=LR),
                model_spec=spec,
            )
            session = open_session(bundle)
            rows.append(Row("onnxruntime", lambda s=session: s.train_step([(x, y)])[0], bundle))
        except Exception as exc:  # the ExecuTorch rows still stand
            _log(f"{name} {plan}: no ONNX Runtime row: {type(exc).__name__}: {exc}")
    rows.append(Row("eager", eager_step(copy.deepcopy(prepared), x, y)))
    return rows


def time_round_robin(rows: list[Row], steps: int, slow: float) -> None:
    for step in range(steps + 1):  # round 0 warms up
        for row in rows:
            if row.done:
                continue
            started = time.perf_counter()
            row.step()
            elapsed = time.perf_counter() - started
            if step:
                row.times.append(elapsed)
                row.done = elapsed > slow
            elif elapsed > 2 * slow:
                row.times.append(elapsed)  # so slow that the warm-up step is its measurement
                row.done = True


def measure_rows(rows: list[Row], threads: int, slow: float) -> None:
    for row in rows:
        if row.bundle is None or row.bundle.manifest.backend != "executorch":
            continue
        if row.name != "et" or statistics.median(row.times) < slow:
            config = TrainConfig(steps=3, data="random", eval_split=None, progress=False, checkpoint_every=0)
            row.measured_peak = measure_training(row.bundle.directory, config, threads=threads).peak_delta_bytes


def _mib(n: int | None) -> str:
    return "" if n is None else f"{n / 2**20:.1f}"


HEADER = (
    "| model | plan | variant | step ms (median) | vs eager | goal | routes applied | planned arena MiB | "
    ".pte MiB | predicted peak MiB | measured peak MiB | max abs diff vs eager |"
)


def format_rows(name: str, plan: str, rows: list[Row]) -> list[str]:
    eager = statistics.median(rows[-1].times)
    ets = [r for r in rows if r.name.startswith("et")]
    best = min(ets, key=lambda r: statistics.median(r.times)) if ets else None
    lines = []
    for row in rows:
        median = statistics.median(row.times)
        goal = ""
        if row is best:
            goal = f"best ET; <= {GOALS[plan]}x: {'met' if median / eager <= GOALS[plan] else 'missed'}"
        memory = row.bundle.manifest.memory if row.bundle and row.bundle.manifest.backend == "executorch" else None
        routes = "+".join(sorted(routes_applied(row.bundle))) if memory else ""
        lines.append(
            f"| {name} | {plan} | {row.name} | {median * 1e3:.1f}{f' (n={len(row.times)})' if row.done else ''} | "
            f"{median / eager:.2f}x | {goal} | {routes or ('none' if memory else '')} | "
            f"{_mib(memory.planned_arena_bytes) if memory else ''} | {_mib(memory.program_bytes) if memory else ''} | "
            f"{_mib(memory.predicted_peak_bytes - memory.evaluation_arena_bytes) if memory else ''} | "
            f"{_mib(row.measured_peak)} | {'' if row.grad_error is None else f'{row.grad_error:.1e}'} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--plans", nargs="+", default=list(PLANS), choices=list(PLANS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row (after one warm-up)")
    parser.add_argument("--slow", type=float, default=2.0, help="seconds: a row this slow is timed once")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--variants", nargs="+", default=[*VARIANTS, "onnxruntime"], choices=[*VARIANTS, "onnxruntime"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = [HEADER, "|" + "---|" * 12]
    started = time.time()
    command = "python benchmarks/speed.py " + shlex.join(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="memwall-speed-") as tmp:
        for name in args.models:
            for plan in args.plans:
                rows = rows_for(name, plan, args.batch, args.threads, Path(tmp), set(args.variants), args.slow)
                if not rows:
                    continue
                _log(f"{name} {plan}: timing {len(rows)} rows")
                time_round_robin(rows, args.steps, args.slow)
                measure_rows(rows, args.threads, args.slow)
                new = format_rows(name, plan, rows)
                print("\n".join(new), flush=True)
                lines += new
                write_results(args, command, started, lines)
    print(f"wrote {args.out}")


def write_results(args: argparse.Namespace, command: str, started: float, lines: list[str]) -> None:
    load = os.getloadavg()
    args.out.write_text(
        "# Training step speed: ExecuTorch speed routes vs ONNX Runtime vs eager PyTorch\n\n"
        f"Command: `{command.strip()}`  \n"
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {time.time() - started:.0f} s so far  \n"
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f} (1/5/15 min) when written, shared with other jobs; threads: {args.threads} (ExecuTorch pool, "
        "torch), ONNX Runtime default  \n"
        f"Batch {args.batch}; a step is the training call + plain SGD; median of up to {args.steps} round-robin steps "
        f"after a warm-up (n=1 marks a row slower than {args.slow} s, timed once). Predicted peak: the manifest's, "
        "without the evaluation arena; measured: `memwall measure` (3 steps, random data, no evaluation), "
        "VmHWM delta over the idle child.\n\n" + "\n".join(lines) + "\n"
    )


def _log(message: str) -> None:
    print(f"[speed] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
