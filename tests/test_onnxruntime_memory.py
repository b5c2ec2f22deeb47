"""ONNX Runtime's memory, measured in fresh processes against the exporter's model of it.

``measure`` (benchmarks/onnxruntime_memory.py, which also makes the tables of docs/onnxruntime.md) runs a child that
loads a bundle, resets the high-water mark and trains. The tests check the model's parts (ORT's execution order
against its profiler, the step's workspace against a measured step) and the whole prediction against
``memwall measure``.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import onnx
import onnxruntime
import pytest
import torch
from onnxruntime.training.api import CheckpointState, Module

from benchmarks.onnxruntime_memory import SMALL, export, measure
from exporters import Bundle, load_bundle
from exporters.techniques import RecomputeConfig
from exporters.techniques.onnx_recompute import Op, as_ort_runs, execution_order
from sdk_tools.measure import measure_training
from sdk_tools.runner.session import TORCH_DTYPES
from sdk_tools.runner.train import TrainConfig


@pytest.fixture(scope="module")
def small_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Bundle]:
    """MobileNetV2 x0.25, 32x32, batch 8, AdamW: as exported and with recomputation."""
    root = tmp_path_factory.mktemp("ort-memory")
    return {
        "plain": load_bundle(export(SMALL, root / "plain")),
        "recomputed": load_bundle(export(SMALL, root / "recomputed", recompute=RecomputeConfig("blocks"))),
    }


def test_arena_on_and_off_are_measured(small_bundles: dict[str, Bundle]) -> None:
    bundle_dir = small_bundles["plain"].directory
    assert load_bundle(bundle_dir).manifest.backend_options["cpu_mem_arena"] is False
    on, off = measure(bundle_dir, arena=True, steps=3), measure(bundle_dir, arena=False, steps=3)
    for result in (on, off):
        assert 0 < result["peak_delta_bytes"] < 1 << 30
        assert result["step_s"] > 0


def profiled_order(bundle: Bundle, directory: Path) -> list[str]:
    """The names of the nodes ORT ran in one training step, in order, from its profiler."""
    options = onnxruntime.SessionOptions()
    options.enable_cpu_mem_arena = False
    options.enable_profiling = True
    options.profile_file_prefix = str(directory / "profile")
    for key, value in bundle.manifest.backend_options.get("session_config", {}).items():
        options.add_session_config_entry(key, value)
    state = CheckpointState.load_checkpoint(str(bundle.path("checkpoint")))
    module = Module(str(bundle.path("training_model")), state, None, session_options=options)
    manifest = bundle.manifest
    labels = torch.zeros(manifest.labels.shape, dtype=TORCH_DTYPES[manifest.labels.dtype])
    module.train()
    module(torch.rand(manifest.inputs[0].shape).numpy(), labels.numpy(), torch.tensor(1.0).numpy())
    del module
    (trace,) = directory.glob("profile*.json")
    events = json.loads(trace.read_text())
    suffix = "_kernel_time"
    return [e["name"].removesuffix(suffix) for e in events if e.get("cat") == "Node" and e["name"].endswith(suffix)]


@pytest.mark.parametrize("variant", ["plain", "recomputed"])
def test_execution_order_is_orts(small_bundles: dict[str, Bundle], variant: str, tmp_path: Path) -> None:
    bundle = small_bundles[variant]
    training = onnx.load(bundle.path("training_model"))
    ops = as_ort_runs([Op.of(node) for node in training.graph.node], {v.name for v in training.graph.output})
    assert [ops[i].name for i in execution_order(ops)] == profiled_order(bundle, tmp_path)


@pytest.mark.parametrize("variant", ["plain", "recomputed"])
def test_step_workspace_matches_a_measured_step(small_bundles: dict[str, Bundle], variant: str) -> None:
    bundle = small_bundles[variant]
    predicted = bundle.manifest.backend_options["memory"]["step_workspace_bytes"]
    # One child's peak varies by a few hundred KiB (ORT's worker threads allocate from their own malloc arenas):
    # 8 runs of the recomputed bundle measured 2.39-2.70 MiB against 2.61 modelled, and one CI run 2.95. The
    # median of three children is what the model must match.
    runs = [measure(bundle.directory, arena=False, steps=3, warmup=1)["peak_delta_bytes"] for _ in range(3)]
    measured = statistics.median(runs)
    assert abs(measured - predicted) < 0.1 * predicted, (runs, predicted)


def test_predicted_peak_is_within_10_percent_of_measure(small_bundles: dict[str, Bundle]) -> None:
    result = measure_training(
        small_bundles["plain"].directory, TrainConfig(steps=5, checkpoint_every=0, progress=False)
    )
    assert abs(result.prediction_error) < 0.10, result.to_json()
