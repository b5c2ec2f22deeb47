"""Activation recomputation on ONNX Runtime's training graph, in the real runtime (no mocks).

Each reference model is exported once with and once without recomputation; losses and gradients must equal the
unrecomputed bundle's bit for bit (the copies run the same kernels on the same inputs) and eager PyTorch's to
float tolerance, and the recomputed MobileNetV2 must train in less memory, measured in a child process.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from onnxruntime.training.api import CheckpointState, Module

from benchmarks.onnxruntime_memory import measure
from exporters import Bundle, ModelSpec, OptimizerConfig, export_bundle
from exporters.techniques.onnx_recompute import SESSION_CONFIG, TrainingGraphRoles, plan_onnx_recomputation
from exporters.techniques.recompute import RecomputeConfig
from exporters.training_graph import MODEL_PREFIX, prepare_for_training_export, strip_prefix
from sdk_tools.runner.onnxruntime_session import OnnxRuntimeSession
from tests.conftest import REFERENCE_CASES, make_model

BATCH = 8
# ONNX Runtime exports in seconds: MobileNetV2 keeps all 17 blocks here, which the segment policies need to differ.
CASES = {**REFERENCE_CASES, "mobilenet_v2": ({"width_mult": 0.25, "in_channels": 3}, (3, 16, 16))}
ADAMW = OptimizerConfig("adamw", lr=1e-3, weight_decay=0.01)
BLOCKS = RecomputeConfig("blocks")
RTOL, ATOL = 1e-4, 1e-5
CSE_KEY = "optimization.disable_specified_optimizers"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, RecomputeConfig | None], Bundle]:
    """Export on first use, once per module: ``bundles(model, recompute)``."""
    root = tmp_path_factory.mktemp("onnx-recompute")
    cache: dict[tuple[str, RecomputeConfig | None], Bundle] = {}

    def get(model: str, recompute: RecomputeConfig | None) -> Bundle:
        if (model, recompute) not in cache:
            kwargs, shape = CASES[model]
            cache[model, recompute] = export_bundle(
                make_model(model, cases=CASES),
                root / f"{model}-{recompute.segments if recompute else 'none'}",
                sample_shape=shape,
                batch_size=BATCH,
                backend="onnxruntime",
                optimizer=ADAMW,
                model_spec=ModelSpec(model, kwargs),
                recompute=recompute,
            )
        return cache[model, recompute]

    return get


def batch(model: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = CASES[model][1]
    return torch.rand((BATCH, *shape), generator=gen), torch.randint(0, 10, (BATCH,), generator=gen)


def runtime_step(bundle: Bundle, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Loss, logits and every gradient (by parameter name) of one training step in ONNX Runtime."""
    session = OnnxRuntimeSession(bundle)
    loss, logits = session.train_step([(x, y)])
    # The optimizer step leaves the accumulated gradients in place until the next step resets them.
    grads = {
        strip_prefix(p.name): torch.from_numpy(session.state.parameters[p.name].grad.copy())
        for p in bundle.manifest.trainable
    }
    return {"loss": torch.tensor(loss), "logits": logits, **grads}


def eager_step(model: str, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    eager = prepare_for_training_export(make_model(model, cases=CASES))
    logits = eager(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    grads = {n: p.grad for n, p in eager.named_parameters() if p.requires_grad}
    return {"loss": loss.detach(), "logits": logits.detach(), **grads}


@pytest.mark.parametrize("model", list(CASES))
def test_loss_and_gradients_equal_unrecomputed_bundle_and_eager(bundles, model: str) -> None:
    plain, recomputed = bundles(model, None), bundles(model, BLOCKS)
    assert recomputed.manifest.techniques[-1] == {"name": "recompute", "config": {"segments": "blocks"}}
    x, y = batch(model, seed=1)
    without, with_copies = runtime_step(plain, x, y), runtime_step(recomputed, x, y)
    assert with_copies.keys() == without.keys()
    for name, value in with_copies.items():
        assert torch.equal(value, without[name]), name
    expected = eager_step(model, x, y)
    assert with_copies.keys() == expected.keys()
    for name, value in with_copies.items():
        torch.testing.assert_close(value, expected[name], rtol=RTOL, atol=ATOL, msg=name)


def test_mlp_and_small_cnn_have_nothing_to_recompute(bundles) -> None:
    # Each block is one layer and its activation: the values backward reads are the checkpoints themselves.
    for model in ("mlp", "small_cnn"):
        plain, recomputed = bundles(model, None), bundles(model, BLOCKS)
        assert recomputed.manifest.files["training_model"].sha256 == plain.manifest.files["training_model"].sha256
        assert "session_config" not in recomputed.manifest.backend_options


def test_recomputed_mobilenet_disables_cse_in_the_session(bundles) -> None:
    recomputed = bundles("mobilenet_v2", BLOCKS)
    assert recomputed.manifest.backend_options["session_config"] == SESSION_CONFIG
    options = OnnxRuntimeSession(recomputed).session_options
    assert options.get_session_config_entry(CSE_KEY) == SESSION_CONFIG[CSE_KEY]
    plain_options = OnnxRuntimeSession(bundles("mobilenet_v2", None)).session_options
    with pytest.raises(RuntimeError, match="does not have configuration"):
        plain_options.get_session_config_entry(CSE_KEY)


def optimized_node_count(bundle: Bundle, config: dict[str, str], path: Path) -> int:
    options = onnxruntime.SessionOptions()
    options.enable_cpu_mem_arena = False
    options.optimized_model_filepath = str(path)
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    state = CheckpointState.load_checkpoint(str(bundle.path("checkpoint")))
    Module(str(bundle.path("training_model")), state, None, session_options=options)
    return len(onnx.load(path).graph.node)


def test_without_the_entry_ort_merges_the_copies_back(bundles, tmp_path: Path) -> None:
    plain, recomputed = bundles("mobilenet_v2", None), bundles("mobilenet_v2", BLOCKS)
    runs_plain = optimized_node_count(plain, {}, tmp_path / "plain.onnx")
    runs_recomputed = optimized_node_count(recomputed, SESSION_CONFIG, tmp_path / "recomputed.onnx")
    runs_merged = optimized_node_count(recomputed, {}, tmp_path / "merged.onnx")
    assert runs_recomputed > runs_plain + 300  # the copies run
    assert runs_merged < runs_recomputed - 300  # CommonSubexpressionElimination folded them into the originals


def test_recomputation_lowers_the_measured_step_peak(bundles) -> None:
    plain, recomputed = bundles("mobilenet_v2", None), bundles("mobilenet_v2", BLOCKS)
    # Warmed up, so the figure is a step's own peak, not the first call's one-time allocations.
    before = measure(plain.directory, arena=False, steps=3, warmup=1)["peak_delta_bytes"]
    after = measure(recomputed.directory, arena=False, steps=3, warmup=1)["peak_delta_bytes"]
    # Modelled workspace 1.76 -> 1.03 MiB at this size; measured step peak 2.20 -> 1.23 MiB.
    assert after < 0.75 * before, (before, after)


def test_policies_trade_checkpoints_for_recomputation(bundles) -> None:
    bundle = bundles("mobilenet_v2", None)
    training = onnx.load(bundle.path("training_model"))
    nodes_before = [node.SerializeToString() for node in training.graph.node]
    roles = TrainingGraphRoles(
        parameters=frozenset(i.name for i in training.graph.input if i.name.startswith(MODEL_PREFIX)),
        user_inputs=frozenset({"input", "label"}),
        forward_outputs=frozenset({"loss", "logits"}),
    )

    def plan(segments: str | int):
        return plan_onnx_recomputation(training, RecomputeConfig(segments), roles, batch=BATCH, batch_dim="batch")

    blocks, sqrt, three, auto = plan("blocks"), plan("sqrt"), plan(3), plan("auto")
    assert blocks.segmentation == "blocks"
    assert len(three.checkpoints) < len(sqrt.checkpoints) < len(blocks.checkpoints)
    for result in (blocks, sqrt, three, auto):
        before, after = result.estimated_peak_bytes
        assert result.recomputed and after < before
    assert blocks.estimated_peak_bytes[1] < sqrt.estimated_peak_bytes[1] < three.estimated_peak_bytes[1]
    assert auto.estimated_peak_bytes[1] <= blocks.estimated_peak_bytes[1]
    assert set(auto.recomputed) <= set(blocks.recomputed)
    assert [node.SerializeToString() for node in training.graph.node] == nodes_before, "planning changed the graph"
