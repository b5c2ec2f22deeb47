"""The memory-wall engine around the exporters: planner, hard memory cap, sizes, streamed checkpoints.

Real exports, a real runtime in a real child process, a real cgroup where the machine allows one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from exporters import OptimizerConfig, load_bundle
from exporters.plan import TrainingPlan, apply_model_techniques, export_plan
from exporters.techniques import FreezeConfig, Int8WeightsConfig, RecomputeConfig
from sdk_tools.measure import OutOfMemoryError, measure_training
from sdk_tools.memory_cap import create_cgroup_cap, parse_size
from sdk_tools.models import build_model
from sdk_tools.planner import Candidate, NoPlanFitsError, Planner, trainable_sets, variants
from sdk_tools.runner import TrainConfig
from sdk_tools.runner.checkpoint import write_safetensors

MLP_SHAPE = (1, 8, 8)


def test_sizes_parse_and_refuse_nonsense() -> None:
    assert parse_size("48MB") == parse_size("48MiB") == 48 * 2**20
    assert parse_size("0.5 GB") == 2**29
    assert parse_size("512KiB") == 512 * 1024
    assert parse_size("1000") == 1000
    for bad in ("48 parsecs", "", "-3MB", "0"):
        with pytest.raises(ValueError, match="memory size"):
            parse_size(bad)


def test_streamed_checkpoint_reads_back_with_safetensors(tmp_path: Path) -> None:
    tensors = {
        "b": torch.randn(3, 4),
        "a": torch.arange(5),
        "empty": torch.zeros(0),
        "transposed": torch.randn(4, 3).t(),
        "bytes": torch.tensor([1, 2, 3], dtype=torch.uint8),
    }
    path = tmp_path / "x.safetensors"
    with path.open("wb") as fh:
        write_safetensors(fh, tensors, {"steps": "3"})
    loaded = load_file(path)
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    with safe_open(str(path), framework="pt") as fh:
        assert fh.metadata() == {"steps": "3"}


def test_plan_serializes_and_applies_to_a_copy() -> None:
    plan = TrainingPlan(
        FreezeConfig(last_blocks=1), OptimizerConfig("adamw", lr=1e-3), micro_batches=2, recompute=RecomputeConfig(3)
    )
    assert TrainingPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    model = build_model("mlp")
    frozen = apply_model_techniques(model, plan)
    assert all(p.requires_grad for p in model.parameters())  # the original is untouched
    assert next(n for n, p in frozen.named_parameters() if p.requires_grad) == "features.3.weight"
    assert "last 1 blocks" in plan.describe() and "2 micro-batches" in plan.describe()


def test_search_space_goes_from_most_trained_to_least() -> None:
    sets = trainable_sets(build_model("mobilenet_v2", width_mult=0.25), OptimizerConfig())
    assert sets[0].freeze.trains_everything
    assert [s.freeze.last_blocks for s in sets[1:5]] == [9, 4, 2, 1]  # 19 numbered blocks
    assert sets[5].lora is not None and sets[5].freeze == FreezeConfig(last_blocks=0)
    assert sets[-2].freeze.bias_only and sets[-1].freeze == FreezeConfig(last_blocks=0) and sets[-1].lora is None
    plans = variants(TrainingPlan(), batch_size=8, backend="onnxruntime")
    assert [p.micro_batches for p in plans] == [1, 1, 2, 4, 8]
    assert plans[0].recompute is None and all(p.recompute for p in plans[1:])
    assert not any(p.fused_update for p in plans)
    plans = variants(TrainingPlan(), batch_size=8, backend="executorch")
    assert [(p.fused_update is not None, p.recompute is not None, p.micro_batches) for p in plans] == [
        (False, False, 1),
        (True, False, 1),
        (False, True, 1),
        (True, True, 1),
        (False, True, 2),
        (False, True, 4),
        (False, True, 8),
    ]


@pytest.fixture(scope="module")
def planner(tmp_path_factory: pytest.TempPathFactory) -> Planner:
    torch.manual_seed(0)
    # Wide enough (0.6M parameters) that weights, gradients and momentum, not the runtime's fixed cost, decide.
    model = build_model("mlp", hidden=(768, 768))
    optimizer = OptimizerConfig("sgd", lr=0.05, momentum=0.9)
    return Planner(model, MLP_SHAPE, 16, "executorch", optimizer, tmp_path_factory.mktemp("plans"))


def _just_under_full(planner: Planner) -> tuple[Candidate, int]:
    """The full fine-tune and a budget just under what it needs with the 10% margin."""
    full = planner.candidate(TrainingPlan(optimizer=planner.optimizer))
    assert full is not None
    return full, int(full.predicted_peak_bytes / 0.9) - 1


@pytest.mark.slow  # the planner's exports or measured runs
def test_planner_ranks_by_what_trains_and_keeps_only_fitting_plans(planner: Planner) -> None:
    full, budget = _just_under_full(planner)
    report = planner.search(budget, margin=0.1, top=2)
    assert len(report.fitting) == 2
    assert all(c.predicted_peak_bytes <= report.limit_bytes for c in report.fitting)
    # The plain full fine-tune does not fit: a leaner variant of it, or a smaller trainable set, comes first.
    assert report.fitting[0].plan != full.plan
    assert report.fitting[0].trainable_parameters >= report.fitting[1].trainable_parameters
    # Asking again exports nothing new: the candidates are cached.
    before = len(list(planner.work_dir.iterdir()))
    again = planner.search(budget, margin=0.1, top=2)
    assert [c.plan for c in again.fitting] == [c.plan for c in report.fitting]
    assert len(list(planner.work_dir.iterdir())) == before


def test_impossible_budget_names_the_smallest_plan(planner: Planner) -> None:
    with pytest.raises(NoPlanFitsError, match=r"no plan fits 1\.0 MiB.*smallest predicted peak is [\d.]+ MiB"):
        planner.search(2**20)


@pytest.mark.slow  # the planner's exports or measured runs
def test_int8_frozen_weights_are_the_last_resort_and_lossless_refuses_them(tmp_path: Path) -> None:
    # Many small layers: int8 storage saves 3 bytes per frozen weight, dequantizing costs one layer's floats.
    torch.manual_seed(0)
    planner = Planner(build_model("mlp", hidden=(128,) * 6), MLP_SHAPE, 4, "executorch", OptimizerConfig(), tmp_path)
    lossless = replace(planner, lossless=True)
    head = variants(TrainingPlan(FreezeConfig(last_blocks=0), planner.optimizer), 4, "executorch")
    exact = lossless.candidate(head[-1])  # the smallest exact plan: the head's leanest variant
    assert exact is not None
    smallest_exact = exact.predicted_peak_bytes
    int8 = planner.candidate(replace(head[-1], int8_frozen=Int8WeightsConfig()))
    assert int8 is not None and int8.predicted_peak_bytes < smallest_exact
    # A budget that no exact plan meets and the head's leanest variant meets with int8 frozen weights.
    budget = int((smallest_exact + int8.predicted_peak_bytes) / 2 / 0.9)
    best = planner.search(budget, margin=0.1, top=1).fitting[0]
    assert best.plan.int8_frozen is not None and best.predicted_peak_bytes <= budget * 0.9
    with pytest.raises(NoPlanFitsError):
        lossless.search(budget, margin=0.1)


@pytest.mark.slow  # the planner's exports or measured runs
def test_emitted_plan_measures_under_its_budget(planner: Planner) -> None:
    _, budget = _just_under_full(planner)
    best = planner.search(budget, margin=0.1, top=1).fitting[0]
    measured = measure_training(best.bundle.directory, TrainConfig(steps=5, progress=False), cap_bytes=budget)
    assert measured.peak_delta_bytes <= budget


@pytest.fixture(scope="module")
def wide_mlp_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # ~40 MiB of weights + gradients + momentum: clearly over a 16 MiB cap.
    model = build_model("mlp", hidden=(2048, 2048))
    plan = TrainingPlan(optimizer=OptimizerConfig("sgd", lr=0.01, momentum=0.9))
    out = tmp_path_factory.mktemp("wide") / "bundle"
    export_plan(model, out, plan, sample_shape=MLP_SHAPE, batch_size=8)
    return out


@pytest.mark.slow  # the planner's exports or measured runs
def test_hard_cap_kills_a_bundle_that_does_not_fit(wide_mlp_bundle: Path) -> None:
    bundle = load_bundle(wide_mlp_bundle)
    assert bundle.manifest.memory.predicted_peak_bytes > 32 * 2**20
    config = TrainConfig(steps=3, eval_split=None, progress=False)
    with pytest.raises(OutOfMemoryError, match=r"killed at the 16\.0 MiB cap"):
        measure_training(wide_mlp_bundle, config, cap_bytes=16 * 2**20)
    fits = measure_training(wide_mlp_bundle, config, cap_bytes=bundle.manifest.memory.predicted_peak_bytes * 2)
    assert fits.train["steps_run"] == 3
    assert fits.cap_enforced_by in ("cgroup-v1", "cgroup-v2", "rss-watchdog")


def test_cgroup_cap_is_used_where_the_machine_allows_it() -> None:
    cap = create_cgroup_cap(64 * 2**20)
    if cap is None:
        pytest.skip("no writable memory cgroup here: measure falls back to the RSS watchdog")
    try:
        assert cap.enforced_by in ("cgroup-v1", "cgroup-v2") and cap.path.is_dir()
    finally:
        cap.remove()
    assert not cap.path.exists()


@pytest.mark.slow  # the planner's exports or measured runs
def test_cli_plan_and_export_with_budget(planner: Planner, tmp_path: Path) -> None:
    _, budget = _just_under_full(planner)
    best = planner.search(budget, margin=0.1, top=1).fitting[0]
    common = ["--model", "mlp", "--model-kwargs", '{"hidden": [768, 768]}', "--input-shape", "1,8,8"]
    common += ["--batch", "16", "--lr", "0.05", "--momentum", "0.9", "--work-dir", str(planner.work_dir)]
    common += ["--no-speed-routes"]  # the API planner's candidates have none
    proc = _memwall("plan", *common, "--budget", str(budget), "--json")
    fitting = json.loads(proc.stdout)["fitting"]
    assert fitting[0]["plan"] == best.plan.to_json()  # the CLI is the same search, over the same cache
    out = tmp_path / "best"
    _memwall("export", *common, "--budget", str(budget), "--out", str(out))
    exported = load_bundle(out).manifest
    assert exported.techniques == best.bundle.manifest.techniques
    assert exported.memory.predicted_peak_bytes <= budget
    proc = _memwall("plan", *common, "--budget", "1MB", ok=False)
    assert proc.returncode == 2 and "no plan fits" in proc.stderr and "Traceback" not in proc.stderr


def _memwall(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "sdk_tools.cli", *args], capture_output=True, text=True, timeout=900)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
