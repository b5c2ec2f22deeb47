"""``memwall plan``: find the plans whose training fits a memory budget, most of the model trained first.

Every figure is a real export's prediction (the exporter's planned arena plus the calibrated terms), not a
formula: each candidate is exported into a cache directory, so asking again (another budget, the final
``memwall export --budget``) reuses the bundles. The search is ordered to keep exports few:

- trainable sets from most to least of the model: everything, the last half / quarter / 2 / 1 blocks (with
  the head), LoRA rank 4 on every Linear / 1x1 conv (with the head), biases + head (TinyTL), the head alone;
- for each set, the variants from fastest to leanest: plain, the fused update (ExecuTorch: gradients die right
  after their update), recomputation, recomputation with the fused update, then recomputation with 2, 4, ...
  micro-batches (which a fused update cannot accumulate). The fastest is exported first and taken if it fits;
  else the leanest: if even it does not fit, the set is skipped; otherwise a binary search finds the fastest
  variant that fits (memory falls, mostly, along that list);
- where no exact variant of a set fits, its leanest variant again with the frozen weights stored as int8
  (``int8_frozen``, on unless the planner is told ``lossless=True``): a smaller program file at a small,
  reported accuracy cost, so that a larger trainable set fits before a smaller one is taken. It comes last
  because it is the one lossy step and can cost arena where backward crosses a frozen layer.

A plan fits when its predicted peak is at most ``budget * (1 - margin)``: the margin covers prediction error.
A budget below ``lower_bound_bytes`` (the runtime's fixed cost plus every weight stored as int8) is refused before
anything is exported (100 KB for MobileNetV2 x0.5 at 32x32 took more than 10 minutes of exports to refuse:
benchmarks/RESULTS-export-time.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import pickle
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from torch import nn

from exporters.bundle import Bundle, BundleError, load_bundle
from exporters.config import OptimizerConfig
from exporters.edge_program import shared_traces
from exporters.export import ModelSpec
from exporters.plan import TrainingPlan, export_plan
from exporters.techniques.freeze import FreezeConfig, numbered_blocks, parameter_block
from exporters.techniques.fused_update import FusedUpdateConfig
from exporters.techniques.int8_weights import Int8WeightsConfig
from exporters.techniques.lora import LoraConfig, lora_kind
from exporters.techniques.recompute import RecomputeConfig
from exporters.techniques.speed_routes import SpeedConfig
from sdk_tools import planner_lane


class NoPlanFitsError(ValueError):
    """No plan's predicted peak fits the budget; the message names the smallest one (``smallest``)."""

    def __init__(self, message: str, smallest: Candidate | None = None) -> None:
        super().__init__(message)
        self.smallest = smallest


@dataclass(frozen=True)
class Candidate:
    plan: TrainingPlan
    bundle: Bundle

    @property
    def predicted_peak_bytes(self) -> int:
        return self.bundle.manifest.memory.predicted_peak_bytes

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel for p in self.bundle.manifest.trainable)

    def to_json(self, bundle: bool = True) -> dict:
        """``bundle``: with where the bundle is (False: only the plan and its figures, to compare searches)."""
        data = {
            "plan": self.plan.to_json(),
            "description": self.plan.describe(),
            "bundle": str(self.bundle.directory),
            "predicted_peak_bytes": self.predicted_peak_bytes,
            "planned_arena_bytes": self.bundle.manifest.memory.planned_arena_bytes,
            "trainable_parameters": self.trainable_parameters,
        }
        if not bundle:
            del data["bundle"]
        return data


@dataclass
class PlanReport:
    budget_bytes: int
    margin: float
    fitting: list[Candidate] = field(default_factory=list)  # best first
    tried: list[Candidate] = field(default_factory=list)

    @property
    def limit_bytes(self) -> int:
        return int(self.budget_bytes * (1 - self.margin))

    def smallest(self) -> Candidate:
        return min(self.tried, key=lambda c: c.predicted_peak_bytes)

    def to_json(self, bundles: bool = True) -> dict:
        return {
            "budget_bytes": self.budget_bytes,
            "margin": self.margin,
            "limit_bytes": self.limit_bytes,
            "fitting": [c.to_json(bundles) for c in self.fitting],
            "tried": [c.to_json(bundles) for c in self.tried],
        }


def trainable_sets(model: nn.Module, optimizer: OptimizerConfig) -> list[TrainingPlan]:
    """What the planner may train, from most of the model to least (as plans without memory techniques)."""
    names = [name for name, _ in model.named_parameters()]
    blocks = numbered_blocks(names)
    sets = [FreezeConfig()]
    lora: list[TrainingPlan] = []
    if len(blocks) >= 2:
        counts = sorted({k for k in (len(blocks) // 2, len(blocks) // 4, 2, 1) if 0 < k < len(blocks)}, reverse=True)
        sets += [FreezeConfig(last_blocks=k) for k in counts]
        head = FreezeConfig(last_blocks=0)
        if _selects(head, names):
            # LoRA adapts every block with few parameters: above biases + head, below training whole blocks.
            lora = [TrainingPlan(head, optimizer, lora=LoraConfig(rank=4))] if _has_lora_targets(model) else []
            sets += [FreezeConfig(last_blocks=0, bias_only=True), head]
    else:
        last = parameter_block(names[-1])
        if last is not None:
            sets += [FreezeConfig((f"{last[0]}.*",), bias_only=True), FreezeConfig((f"{last[0]}.*",))]
    plans = [TrainingPlan(freeze, optimizer) for freeze in sets]
    at = next((i for i, plan in enumerate(plans) if plan.freeze.bias_only), len(plans))
    return plans[:at] + lora + plans[at:]


def _selects(config: FreezeConfig, names: list[str]) -> bool:
    try:
        return bool(config.select(names))
    except ValueError:
        return False


def _has_lora_targets(model: nn.Module) -> bool:
    return any(lora_kind(module) is not None for module in model.modules())


def variants(base: TrainingPlan, batch_size: int, backend: str) -> list[TrainingPlan]:
    """The plans for one trainable set, from fastest to leanest."""
    auto = RecomputeConfig("auto")
    plans = [base, replace(base, recompute=auto)]
    if backend == "executorch":  # the only backend whose training graph can update parameters
        fused = FusedUpdateConfig()
        plans = [base, replace(base, fused_update=fused), plans[1], replace(base, recompute=auto, fused_update=fused)]
    micro = 2
    while micro <= batch_size:
        if batch_size % micro == 0:
            plans.append(replace(base, micro_batches=micro, recompute=auto))
        micro *= 2
    return plans


@dataclass
class Planner:
    model: nn.Module
    sample_shape: tuple[int, ...]
    batch_size: int
    backend: str
    optimizer: OptimizerConfig
    work_dir: Path
    model_spec: ModelSpec | None = None
    loss: str = "cross_entropy"
    speed: SpeedConfig | None = None  # speed routes every candidate is exported with
    lossless: bool = False  # True: never store frozen weights as int8
    # Processes searching trainable sets side by side: this one plus ``workers - 1`` spawned lanes, each lane
    # taking the next set nobody works on (speculatively: a lane's set may not be needed once enough plans fit;
    # its export is then stopped). The CLI uses 2 on a machine with 2 cores.
    workers: int = 1
    log: Callable[[str], None] = field(default=lambda message: print(f"[memwall plan] {message}", file=sys.stderr))

    def __post_init__(self) -> None:
        self._cache: dict[str, Candidate | None] = {}
        weights = hashlib.sha256()
        for name, tensor in self.model.state_dict().items():
            weights.update(name.encode())
            weights.update(tensor.detach().contiguous().numpy().tobytes())
        self._weights = weights.hexdigest()[:16]

    def bundle_dir(self, plan: TrainingPlan) -> Path:
        """Where ``plan``'s bundle is cached: named by everything the export depends on."""
        key = hashlib.sha256(
            json.dumps(
                [plan.to_json(), self._weights, list(self.sample_shape), self.batch_size, self.backend, self.loss]
            ).encode()
        ).hexdigest()[:16]
        return self.work_dir / key

    def candidate(self, plan: TrainingPlan) -> Candidate | None:
        """The plan exported (or found in the cache); None where the backend cannot apply it."""
        if plan.speed is None and self.speed is not None:
            plan = replace(plan, speed=self.speed)
        directory = self.bundle_dir(plan)
        key = directory.name
        if key in self._cache:
            return self._cache[key]
        try:
            bundle = load_bundle(directory)
        except BundleError:
            self.log(f"exporting: {plan.describe()}")
            error = _export_candidate(self._job(plan, directory))
            if error is not None:  # a technique this backend lacks, or a set that trains nothing
                self.log(f"skipped ({error})")
                self._cache[key] = None
                return None
            bundle = load_bundle(directory)
        found = Candidate(plan, bundle)
        self.log(f"{plan.describe()}: predicted {found.predicted_peak_bytes / 2**20:.1f} MiB")
        self._cache[key] = found
        return found

    def lower_bound_bytes(self) -> tuple[int, str]:
        """No plan predicts a smaller peak: the runtime's calibrated fixed cost (every bundle pays it) plus every
        parameter stored in the bundle's files at one byte (int8, the leanest storage a plan has; a parameter the
        forward never uses would be dropped, which no reference model has). With how it adds up."""
        runtime = runtime_floor_bytes(self.backend)
        weights = sum(p.numel() for p in self.model.parameters())
        return runtime + weights, f"runtime {runtime / 2**20:.1f} MiB + the weights as int8 {weights / 2**20:.1f} MiB"

    def _job(self, plan: TrainingPlan, directory: Path) -> tuple[Any, ...]:
        shape = (self.sample_shape, self.batch_size, self.backend, self.loss, self.model_spec)
        return (self.model, directory, plan, *shape)

    def search(self, budget_bytes: int, margin: float = 0.1, top: int = 3) -> PlanReport:
        if not 0 <= margin < 1:
            raise ValueError(f"margin must be in [0, 1), got {margin}")
        report = PlanReport(budget_bytes, margin)
        bound, parts = self.lower_bound_bytes()
        if bound > report.limit_bytes:
            raise NoPlanFitsError(
                f"no plan fits {budget_bytes / 2**20:.1f} MiB (with a {margin:.0%} margin: "
                f"{report.limit_bytes / 2**20:.1f} MiB); the smallest predicted peak is {bound / 2**20:.1f} MiB or "
                f"more ({parts}), so nothing was exported. Raise the budget, or use a smaller model"
            )
        # A set's variants share one trace, joint graph and edge program per batch shape.
        sets = trainable_sets(self.model, self.optimizer)
        with shared_traces(), contextlib.closing(self._set_results(sets, report.limit_bytes)) as results:
            for result in results:
                for plan in result.tried:
                    candidate = self.candidate(plan)  # from this process's cache, or read back from a lane's bundle
                    if candidate is not None and candidate not in report.tried:
                        report.tried.append(candidate)
                if result.found is not None:
                    report.fitting.append(self._found(result.found))
                    if len(report.fitting) >= top:
                        break
        if not report.fitting:
            if not report.tried:
                raise NoPlanFitsError("no plan could be exported for this model and backend")
            smallest = report.smallest()
            raise NoPlanFitsError(
                f"no plan fits {budget_bytes / 2**20:.1f} MiB (with a {margin:.0%} margin: "
                f"{report.limit_bytes / 2**20:.1f} MiB); the smallest predicted peak is "
                f"{smallest.predicted_peak_bytes / 2**20:.1f} MiB ({smallest.plan.describe()}). "
                "Raise the budget, lower the batch size or the input size",
                smallest,
            )
        return report

    def _found(self, plan: TrainingPlan) -> Candidate:
        found = self.candidate(plan)
        assert found is not None, "a set's fitting plan was exported"
        return found

    def _set_results(self, sets: list[TrainingPlan], limit: int) -> Iterator[SetResult]:
        """Each set's search result, in the order of ``sets``, until the caller stops asking. This process searches
        the set it needs next, or, while a lane has that one, the next set nobody has taken; idle lanes take the
        sets after it (ahead of need), except one whose fastest variant is cached (quick here; no lane started)."""
        lanes = [_Lane(self, limit) for _ in range(self.workers - 1)]
        try:
            results: dict[int, SetResult] = {}
            taken: dict[int, Any] = {}  # set index -> a lane's pending result
            ahead = 0  # sets before it are done or taken
            for i in range(len(sets)):
                while i not in results:
                    if i in taken and (taken[i].ready() or ahead >= len(sets)):
                        results[i] = taken.pop(i).get()
                        continue
                    mine, ahead = ahead, ahead + 1
                    for lane in lanes:
                        if ahead < len(sets) and lane.idle() and not self._cached(sets[ahead]):
                            taken[ahead] = lane.submit(sets[ahead])
                            ahead += 1
                    results[mine] = self.search_set(sets[mine], limit)
                yield results.pop(i)
        finally:
            for lane in lanes:
                lane.stop()

    def _cached(self, base: TrainingPlan) -> bool:
        """Whether the set's fastest variant is exported already (in this cache directory)."""
        plan = base if base.speed is not None or self.speed is None else replace(base, speed=self.speed)
        return (self.bundle_dir(plan) / "manifest.json").exists()

    def search_set(self, base: TrainingPlan, limit: int) -> SetResult:
        """One trainable set's plan that fits ``limit`` (None: none does) and every plan exported on the way."""
        plans = variants(base, self.batch_size, self.backend)
        tried: list[TrainingPlan] = []
        found = self._fastest_fitting(plans, limit, tried) or self._int8_fallback(plans, limit, tried)
        return SetResult(found.plan if found is not None else None, tried)

    def _fits(self, plan: TrainingPlan, limit: int, tried: list[TrainingPlan]) -> Candidate | None:
        found = self.candidate(plan)
        if found is None:
            return None
        if found.plan not in tried:
            tried.append(found.plan)
        return found if found.predicted_peak_bytes <= limit else None

    def _int8_fallback(self, plans: list[TrainingPlan], limit: int, tried: list[TrainingPlan]) -> Candidate | None:
        """The set's leanest variant with int8 frozen weights, if the set has frozen weights and it fits."""
        if self.lossless or (plans[0].freeze.trains_everything and plans[0].lora is None):
            return None
        leanest = next((found for p in reversed(plans) if (found := self.candidate(p)) is not None), None)
        if leanest is None:
            return None
        # int8 saves at most 3 of every 4 bytes of frozen weights: where even that cannot fit, skip the export.
        saving = leanest.bundle.manifest.memory.frozen_parameter_bytes * 3 // 4
        if leanest.predicted_peak_bytes - saving > limit:
            return None
        return self._fits(replace(leanest.plan, int8_frozen=Int8WeightsConfig()), limit, tried)

    def _fastest_fitting(self, plans: list[TrainingPlan], limit: int, tried: list[TrainingPlan]) -> Candidate | None:
        def fits(index: int) -> Candidate | None:
            return self._fits(plans[index], limit, tried)

        if (fastest := fits(0)) is not None:
            return fastest
        # The leanest variant the backend can export decides whether the set fits at all.
        leanest = next((i for i in reversed(range(len(plans))) if self.candidate(plans[i]) is not None), None)
        if leanest is None or (best := fits(leanest)) is None:
            return None
        lo, hi = 1, leanest
        while lo < hi:  # the fastest variant that fits: memory falls along ``plans``
            mid = (lo + hi) // 2
            found = fits(mid)
            if found is not None:
                best, hi = found, mid
            else:
                lo = mid + 1
        return best


@dataclass(frozen=True)
class SetResult:
    found: TrainingPlan | None  # the set's plan that fits, if any
    tried: list[TrainingPlan]  # every plan of the set exported (or reused) on the way, in order


class _Lane:
    """A spawned process that searches trainable sets for a planner at one limit, started on its first set."""

    def __init__(self, planner: Planner, limit: int) -> None:
        config = {f.name: getattr(planner, f.name) for f in fields(planner) if f.name not in ("log", "workers")}
        self._config = pickle.dumps(config)  # unpickled in the lane after it quiets library chatter
        self._limit = limit
        self._pool: Any = None
        self._last: Any = None  # the result of the set it was given last

    def idle(self) -> bool:
        return self._last is None or self._last.ready()

    def submit(self, base: TrainingPlan) -> Any:
        if self._pool is None:
            # Spawned, not forked: a forked child of a process that ran torch's OpenMP kernels can hang in its
            # first parallel region. Starting one costs its imports (about 8 s CPU), beside this process's work.
            spawn = multiprocessing.get_context("spawn")
            self._pool = spawn.Pool(1, initializer=planner_lane.start, initargs=(self._config, self._limit))
        self._last = self._pool.apply_async(planner_lane.search_set, (base,))
        return self._last

    def stop(self) -> None:
        """Stop it, with any set it is still searching (an export stopped midway leaves a staging directory,
        never a bundle without its manifest)."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()  # its process reaped and its queues' semaphores released before this process exits


def _export_candidate(job: tuple[Any, ...]) -> str | None:
    """Export one candidate (in a lane's process, or inline); the reason where the backend cannot apply it."""
    model, directory, plan, sample_shape, batch_size, backend, loss, model_spec = job
    try:
        export_plan(
            model,
            directory,
            plan,
            sample_shape=sample_shape,
            batch_size=batch_size,
            backend=backend,
            loss=loss,
            model_spec=model_spec,
            overwrite=True,
        )
    except ValueError as exc:
        return str(exc)
    return None


def runtime_floor_bytes(backend: str) -> int:
    """The memory a backend's runtime takes for any bundle, before its arenas and files (calibrated constants)."""
    if backend == "executorch":
        from exporters.executorch_export import RUNTIME_OVERHEAD_BASE_BYTES

        return RUNTIME_OVERHEAD_BASE_BYTES
    if backend == "onnxruntime":
        from exporters.onnxruntime_export import _FIRST_CALL_BYTES, _SESSION_BYTES

        return _SESSION_BYTES + _FIRST_CALL_BYTES
    raise ValueError(f"unknown backend {backend!r}: use 'executorch' or 'onnxruntime'")


def format_report(report: PlanReport) -> str:
    lines = [
        f"budget {report.budget_bytes / 2**20:.1f} MiB (plans must predict <= {report.limit_bytes / 2**20:.1f} MiB: "
        f"{report.margin:.0%} margin)",
        f"{'#':<3} {'predicted':>10} {'arena':>9} {'trainable':>11}  plan",
    ]
    for i, c in enumerate(report.fitting, 1):
        arena = c.bundle.manifest.memory.planned_arena_bytes
        lines.append(
            f"{i:<3} {c.predicted_peak_bytes / 2**20:6.1f} MiB {arena / 2**20:5.1f} MiB"
            f" {c.trainable_parameters:>11,}  {c.plan.describe()}"
        )
    lines.append(
        f"({len(report.tried)} candidate(s) exported or reused; bundles in {report.fitting[0].bundle.directory.parent})"
    )
    return "\n".join(lines)
