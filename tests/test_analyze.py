"""The analyzer: the exporter's memory profile (ExecuTorch's own memory plan read back) and `memwall analyze`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from exporters import OptimizerConfig
from exporters.bundle import Bundle
from exporters.memory_profile import MemoryProfile
from exporters.plan import TrainingPlan, export_plan
from exporters.techniques import FreezeConfig, FusedUpdateConfig
from sdk_tools.analyze import analyze_bundle, format_analysis, load_profile, plot_analysis
from sdk_tools.models import build_model
from tests.conftest import MOBILENET_BLOCKS

SHAPE = (3, 16, 16)


def _export(root: Path, name: str, plan: TrainingPlan, backend: str = "executorch") -> Bundle:
    model = build_model("mobilenet_v2", width_mult=0.25, settings=MOBILENET_BLOCKS, last_channels=128)
    return export_plan(model, root / name, plan, sample_shape=SHAPE, batch_size=4, backend=backend)


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return _export(tmp_path_factory.mktemp("analyze"), "full", TrainingPlan(optimizer=OptimizerConfig("adamw")))


def test_profile_reads_the_plan_back_exactly(full: Bundle) -> None:
    profile = load_profile(full)
    assert profile is not None
    memory = full.manifest.memory
    assert profile.arena_bytes == memory.planned_arena_bytes
    # Live tensors never exceed the arena they are placed in (greedy placement can only add fragmentation).
    assert 0.9 * profile.arena_bytes <= profile.peak_live_bytes <= profile.arena_bytes * 1.001
    assert 0 < profile.backward_start < len(profile.ops)
    assert "convolution_backward" in profile.ops[profile.backward_start :]
    # Every trainable parameter is in the arena for the whole step, and every gradient exists at the end.
    trainable = memory.trainable_parameter_bytes
    assert profile.timeline["trainable_weights"][0] == pytest.approx(trainable, rel=0.01)
    assert profile.timeline["gradients"][-1] == pytest.approx(trainable, rel=0.01)
    assert profile.timeline["saved_activations"][profile.backward_start - 1] > 0
    assert profile.timeline["saved_activations"][-1] == 0
    assert sum(layer.trainable_weight_bytes for layer in profile.layers) == pytest.approx(trainable, rel=0.01)
    assert [layer.name for layer in profile.layers][:2] == ["features.0", "features.1"]


def test_a_version_1_profile_still_reads_and_an_unknown_version_is_refused(full: Bundle) -> None:
    profile = load_profile(full)
    assert profile is not None
    old = profile.to_json() | {"version": 1}
    del old["timeline"]["optimizer_state"]  # version 1 had no optimizer state
    old["layers"] = [{k: v for k, v in layer.items() if k != "optimizer_state_bytes"} for layer in old["layers"]]
    read = MemoryProfile.from_json(old)
    assert read.layers[0].optimizer_state_bytes == 0 and "optimizer_state" not in read.peak_components()
    assert read.peak_live_bytes == profile.peak_live_bytes
    with pytest.raises(ValueError, match="re-export the bundle"):
        MemoryProfile.from_json(profile.to_json() | {"version": 99})


def test_components_add_up_to_the_prediction(full: Bundle) -> None:
    analysis = analyze_bundle(full)
    assert analysis.predicted_peak_bytes == full.manifest.memory.predicted_peak_bytes
    assert analysis.components["optimizer_state"] == 2 * full.manifest.memory.trainable_parameter_bytes
    # AdamW's denominator is computed into one scratch tensor of the largest parameter.
    largest = max(p.numel for p in full.manifest.trainable) * 4
    assert analysis.components["optimizer_workspace"] == largest
    assert analysis.components["saved_activations"] > 0 and analysis.components["runtime_overhead"] > 0
    text = format_analysis(analysis)
    assert "saved activations" in text and "features.6" in text and "predicted peak" in text  # the last block


def test_freezing_shows_where_memory_went(full: Bundle, tmp_path: Path) -> None:
    head = _export(tmp_path, "head", TrainingPlan(FreezeConfig(last_blocks=0), OptimizerConfig("adamw")))
    before, after = analyze_bundle(full), analyze_bundle(head)
    assert after.components["gradients"] < before.components["gradients"] / 10
    assert after.components["saved_activations"] < before.components["saved_activations"] / 10
    assert after.components["frozen_weights"] > 0 == before.components["frozen_weights"]
    frozen_layers = {layer.name for layer in load_profile(head).layers if layer.frozen_weight_bytes}  # type: ignore[union-attr]
    assert "features.3" in frozen_layers and "classifier" not in frozen_layers


def test_fused_update_profile_shows_state_in_the_arena_and_short_lived_gradients(full: Bundle, tmp_path: Path) -> None:
    plan = TrainingPlan(optimizer=OptimizerConfig("adamw"), fused_update=FusedUpdateConfig())
    fused = _export(tmp_path, "fused", plan)
    profile = load_profile(fused)
    assert profile is not None and profile.arena_bytes == fused.manifest.memory.planned_arena_bytes
    trainable = fused.manifest.memory.trainable_parameter_bytes
    # The parameters (now mutable buffers) and AdamW's two state tensors each are planned for the whole step.
    assert profile.timeline["trainable_weights"][0] == pytest.approx(trainable, rel=0.01)
    assert profile.timeline["optimizer_state"][0] == pytest.approx(2 * trainable, rel=0.01)
    # Each gradient dies at its update: never all of them at once, as the app-side update needs them.
    gradients = profile.timeline["gradients"]
    assert 0 < max(gradients) < 0.5 * trainable <= load_profile(full).timeline["gradients"][-1]  # type: ignore[union-attr]
    assert gradients[-1] < 0.5 * trainable
    assert sum(layer.optimizer_state_bytes for layer in profile.layers) == pytest.approx(2 * trainable, rel=0.01)
    analysis = analyze_bundle(fused)
    assert analysis.predicted_peak_bytes == fused.manifest.memory.predicted_peak_bytes
    assert analysis.components["optimizer_state"] == analysis.arena["optimizer_state"] > 0
    text = format_analysis(analysis)
    assert "opt. state" in text and "features.6" in text
    image = Image.open(plot_analysis(analysis, tmp_path / "fused.png"))
    assert image.size[0] > 500


def test_onnxruntime_profile_follows_the_predicted_allocation_plan(tmp_path: Path) -> None:
    bundle = _export(tmp_path, "ort", TrainingPlan(optimizer=OptimizerConfig("adamw")), backend="onnxruntime")
    analysis = analyze_bundle(bundle)
    profile = analysis.profile
    assert profile is not None and profile.arena_bytes == bundle.manifest.memory.planned_arena_bytes
    # Live buffers never exceed the memory-pattern block plus the separately allocated tensors they sit in.
    assert 0.5 * profile.arena_bytes < profile.peak_live_bytes <= profile.arena_bytes
    trainable = bundle.manifest.memory.trainable_parameter_bytes
    # ORT's gradient accumulation buffers live for the whole step; the weights are session state, not arena.
    assert min(profile.timeline["gradients"]) == pytest.approx(trainable, rel=0.01)
    assert max(profile.timeline["trainable_weights"]) == 0
    assert profile.timeline["saved_activations"][profile.backward_start - 1] > 0
    assert profile.timeline["saved_activations"][-1] == 0
    assert 0 < profile.backward_start < len(profile.ops) and "ConvGrad" in profile.ops[profile.backward_start :]
    assert [layer.name for layer in profile.layers][:2] == ["features.0", "features.1"]
    assert sum(layer.gradient_bytes for layer in profile.layers) == pytest.approx(trainable, rel=0.01)
    assert analysis.predicted_peak_bytes == bundle.manifest.memory.predicted_peak_bytes
    assert "features.6" in format_analysis(analysis)
    # Freezing the features: their activations are no longer saved for a weight gradient.
    head = _export(
        tmp_path, "ort-head", TrainingPlan(FreezeConfig(last_blocks=0), OptimizerConfig("adamw")), "onnxruntime"
    )
    saved = [sum(layer.saved_activation_bytes for layer in load_profile(b).layers) for b in (bundle, head)]  # type: ignore[union-attr]
    assert saved[1] < saved[0] / 10


def test_cli_analyzes_a_model_and_plots(tmp_path: Path) -> None:
    png = tmp_path / "analysis.png"
    args = ["analyze", "--model", "small_cnn", "--input-shape", "1,8,8", "--batch", "4", "--bias-only"]
    args += ["--plot", str(png), "--json"]
    proc = subprocess.run([sys.executable, "-m", "sdk_tools.cli", *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert data["predicted_peak_bytes"] == sum(data["components"].values())
    assert [layer["name"] for layer in data["layers"]][:1] == ["features.0"]
    with Image.open(png) as image:
        assert image.size[0] > 600 and image.size[1] > 400
