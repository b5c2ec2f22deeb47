"""Activation recomputation on the ExecuTorch joint graph: same loss and gradients, a smaller arena.

Programs are built as ``export_executorch`` builds its training method (same memory planning) from one joint
graph per model, and run in the real training runtime.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from executorch.exir import EdgeCompileConfig, EdgeProgramManager, ExecutorchBackendConfig, to_edge
from executorch.exir.memory_planning import MemoryPlanningAlgorithmSuite, greedy
from executorch.exir.passes import MemoryPlanningPass
from executorch.extension.training import _load_for_executorch_for_training_from_buffer
from torch import nn
from torch.export import ExportedProgram

from exporters.executorch_export import MEMORY_PLANNING, TRAIN_METHOD, export_joint_graph, export_predict_graph
from exporters.losses import resolve_loss
from exporters.techniques.recompute import RecomputeConfig, plan_recomputation, recompute_activations
from exporters.training_graph import prepare_for_training_export, strip_prefix
from tests.conftest import make_model

SHAPE = (3, 32, 32)
BATCH = 4
RTOL, ATOL = 1e-4, 1e-5
POLICIES = ("blocks", "auto")


@dataclass(frozen=True)
class Program:
    buffer: bytes  # the runtime reads the program in place: keep it referenced while it runs
    arena_bytes: int

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss, logits and gradients (by parameter name) of one forward/backward in the runtime."""
        module = _load_for_executorch_for_training_from_buffer(self.buffer)
        loss, logits = module.forward_backward(TRAIN_METHOD, (x, y))[:2]
        grads = {strip_prefix(name): g.clone() for name, g in module.named_gradients().items()}
        return {"loss": loss.clone(), "logits": logits.clone(), **grads}


def joint_graph(model: nn.Module) -> ExportedProgram:
    x, y = torch.zeros((BATCH, *SHAPE)), torch.arange(BATCH)
    return export_joint_graph(model, resolve_loss("cross_entropy"), x, y)


def edge_graph(joint: ExportedProgram) -> EdgeProgramManager:
    return to_edge({TRAIN_METHOD: joint}, compile_config=EdgeCompileConfig(_check_ir_validity=False))


def build(edge: EdgeProgramManager, config: RecomputeConfig | None) -> Program:
    """The training program, from a copy of ``edge`` (``to_edge`` takes longer than the copy)."""
    edge = copy.deepcopy(edge)
    if config is not None:
        recompute_activations(edge, config)
    planner = MemoryPlanningPass(
        memory_planning_algo=MemoryPlanningAlgorithmSuite([greedy]),
        alloc_graph_input=MEMORY_PLANNING["alloc_graph_input"],
        alloc_graph_output=MEMORY_PLANNING["alloc_graph_output"],
    )
    program = edge.to_executorch(ExecutorchBackendConfig(memory_planning_pass=planner))
    return Program(program.buffer, sum(program.executorch_program.execution_plan[0].non_const_buffer_sizes))


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((BATCH, *SHAPE), generator=gen), torch.randint(0, 10, (BATCH,), generator=gen)


def eager_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    model = copy.deepcopy(model)
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    return {"loss": loss.detach(), "logits": logits.detach(), **{n: p.grad for n, p in model.named_parameters()}}


def check_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], *, bitwise: bool) -> None:
    assert actual.keys() == expected.keys()
    for name, value in actual.items():
        if bitwise:
            # The copies run the same kernels on the same inputs: bit-identical, not merely close.
            assert torch.equal(value, expected[name]), name
        else:
            torch.testing.assert_close(value, expected[name], rtol=RTOL, atol=ATOL, msg=name)


@pytest.fixture(scope="module")
def mobilenet() -> nn.Module:
    return prepare_for_training_export(make_model("mobilenet_v2"))


@pytest.fixture(scope="module")
def mobilenet_edge(mobilenet: nn.Module) -> EdgeProgramManager:
    return edge_graph(joint_graph(mobilenet))


@pytest.fixture(scope="module")
def programs(mobilenet_edge: EdgeProgramManager) -> dict[str, Program]:
    return {
        "none": build(mobilenet_edge, None),
        **{policy: build(mobilenet_edge, RecomputeConfig(policy)) for policy in POLICIES},
    }


@pytest.mark.parametrize("policy", POLICIES)
def test_loss_and_gradients_equal_without_recomputation_and_eager(
    programs: dict[str, Program], mobilenet: nn.Module, policy: str
) -> None:
    x, y = batch(seed=1)
    without = programs["none"].step(x, y)
    recomputed = programs[policy].step(x, y)
    check_same(recomputed, without, bitwise=True)
    check_same(recomputed, eager_step(mobilenet, x, y), bitwise=False)


@pytest.mark.parametrize("policy", POLICIES)
def test_planned_arena_shrinks(programs: dict[str, Program], policy: str) -> None:
    before, after = programs["none"].arena_bytes, programs[policy].arena_bytes
    # Measured 3.84 -> 2.82 MiB: trainable weights and their gradients (1.9 MiB, both in the arena) stay.
    assert after <= 0.75 * before, (before, after)


def test_policies_trade_checkpoints_for_recomputation(mobilenet_edge: EdgeProgramManager) -> None:
    edge = mobilenet_edge.exported_program(TRAIN_METHOD)
    nodes_before = [node.format_node() for node in edge.graph.nodes]
    blocks = plan_recomputation(edge, RecomputeConfig("blocks"))
    sqrt = plan_recomputation(edge, RecomputeConfig("sqrt"))
    two = plan_recomputation(edge, RecomputeConfig(2))
    auto = plan_recomputation(edge, RecomputeConfig("auto"))
    assert blocks.segmentation == "blocks"
    assert len(two.checkpoints) < len(sqrt.checkpoints) < len(blocks.checkpoints)
    for plan in (blocks, sqrt, two, auto):
        before, after = plan.estimated_peak_bytes
        assert plan.recomputed and after < before
    # auto stops recomputing the segments that do not set the peak: less work for the same estimate.
    assert set(auto.recomputed) < set(blocks.recomputed)
    assert auto.estimated_peak_bytes == blocks.estimated_peak_bytes
    assert [node.format_node() for node in edge.graph.nodes] == nodes_before, "planning changed the graph"


class Unnamed(nn.Module):
    """Layers named, not numbered: segments fall back to sqrt(n) over the forward ops."""

    def __init__(self, depth: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.layer_names = [f"conv{chr(ord('a') + i)}" for i in range(depth)]
        for name in self.layer_names:
            self.add_module(name, nn.Conv2d(16, 16, 3, padding=1))
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        for name in self.layer_names:
            # tanh's output is saved through an alias, which edge turns into a copy in the forward.
            x = x + torch.tanh(getattr(self, name)(x))
        return self.head(x.mean(dim=(2, 3)))


def test_model_without_blocks_falls_back_to_op_segments() -> None:
    torch.manual_seed(0)
    model = prepare_for_training_export(Unnamed())
    edge = edge_graph(joint_graph(model))
    plan = plan_recomputation(edge.exported_program(TRAIN_METHOD), RecomputeConfig("blocks"))
    assert plan.segmentation == "ops" and plan.recomputed
    without, recomputed = build(edge, None), build(edge, RecomputeConfig("blocks"))
    assert recomputed.arena_bytes <= 0.8 * without.arena_bytes, (without.arena_bytes, recomputed.arena_bytes)
    x, y = batch(seed=2)
    result = recomputed.step(x, y)
    check_same(result, without.step(x, y), bitwise=True)
    check_same(result, eager_step(model, x, y), bitwise=False)


def test_nothing_to_recompute_is_a_no_op_that_says_so(caplog: pytest.LogCaptureFixture) -> None:
    # Only the classifier trains: backward reads its input, the last block's output, and nothing else.
    model = prepare_for_training_export(make_model("mlp"))
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("classifier."))
    x, y = torch.zeros((BATCH, 1, 8, 8)), torch.arange(BATCH)
    edge = to_edge(
        {
            TRAIN_METHOD: export_joint_graph(model, resolve_loss("cross_entropy"), x, y),
            "predict": export_predict_graph(model, x, ["classifier.weight", "classifier.bias"]),
        },
        compile_config=EdgeCompileConfig(_check_ir_validity=False),
    )
    before = {m: [n.format_node() for n in edge.exported_program(m).graph.nodes] for m in edge.methods}
    with caplog.at_level(logging.WARNING, logger="exporters.techniques.recompute"):
        assert recompute_activations(edge, RecomputeConfig("blocks")) is edge
    assert {m: [n.format_node() for n in edge.exported_program(m).graph.nodes] for m in edge.methods} == before
    assert f"{TRAIN_METHOD}: nothing to recompute" in caplog.text
    assert not plan_recomputation(edge.exported_program(TRAIN_METHOD), RecomputeConfig("sqrt")).recomputed


@pytest.mark.parametrize("segments", ["blocks", "sqrt", "auto", 2, 7])
def test_config_round_trips_through_json(segments: str | int) -> None:
    config = RecomputeConfig(segments)
    assert RecomputeConfig.from_json(json.loads(json.dumps(config.to_json()))) == config


@pytest.mark.parametrize("segments", ["layers", 1, 0, True, 2.5])
def test_config_rejects_unknown_segments(segments: object) -> None:
    with pytest.raises(ValueError, match="segments"):
        RecomputeConfig(segments)  # type: ignore[arg-type]


def test_export_bundle_bakes_recomputation_in(tmp_path) -> None:
    from exporters import ModelSpec, OptimizerConfig, export_bundle
    from sdk_tools.runner.executorch_session import ExecuTorchSession

    kwargs = {"sample_shape": (1, 16, 16), "batch_size": 4, "optimizer": OptimizerConfig(lr=0.01)}
    plain = export_bundle(make_model("small_cnn"), tmp_path / "plain", model_spec=ModelSpec("small_cnn"), **kwargs)
    recomputed = export_bundle(
        make_model("small_cnn"), tmp_path / "recomputed", recompute=RecomputeConfig("sqrt"), **kwargs
    )
    assert recomputed.manifest.techniques == [{"name": "recompute", "config": RecomputeConfig("sqrt").to_json()}]
    assert recomputed.manifest.memory.planned_arena_bytes < plain.manifest.memory.planned_arena_bytes
    x, y = torch.rand(4, 1, 16, 16), torch.arange(4)
    _, _, expected = ExecuTorchSession(plain).forward_backward(x, y)
    _, _, actual = ExecuTorchSession(recomputed).forward_backward(x, y)
    for name, grad in expected.items():
        torch.testing.assert_close(actual[name], grad, rtol=0, atol=0, msg=name)
