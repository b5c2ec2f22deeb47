"""ExecuTorch speed routes keep the training step exact: bundles exported with ``SpeedConfig`` train in the real
runtime with the loss, logits, every gradient and the updated weights of eager PyTorch (and of the bundle without
routes), and the manifest says which routes applied and what the runtime needs.

Kept small (a 3-block MobileNetV2 and a SmallCNN at 16x16): lowering to XNNPACK costs seconds per delegated
region, so graph length, not tensor size, sets this file's time. Each bundle is exported once per module.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from exporters import Bundle, ModelSpec, OptimizerConfig, export_bundle
from exporters.executorch_export import export_joint_graph
from exporters.losses import resolve_loss
from exporters.plan import TrainingPlan
from exporters.techniques.freeze import FreezeConfig, apply_freeze
from exporters.techniques.fused_update import FusedUpdateConfig
from exporters.techniques.im2col_matmul import Im2colConv, Im2colMatmulConfig, columns_bytes, rewrite_im2col_convs
from exporters.techniques.pointwise_linear import (
    PointwiseLinear,
    PointwiseLinearConfig,
    is_pointwise,
    rewrite_pointwise_convs,
)
from exporters.techniques.recompute import RecomputeConfig
from exporters.techniques.speed_routes import SpeedConfig, XnnpackFrozenConfig
from exporters.techniques.xnnpack_frozen import rewrite_backward_convolutions
from exporters.training_graph import prepare_for_training_export, strip_prefix
from sdk_tools.models import build_model
from sdk_tools.runner.train import open_session

RTOL, ATOL = 1e-4, 1e-5
BATCH = 4
LR = 0.5
SHAPE = (3, 16, 16)
# Every kind of MobileNetV2 block (expansion 1, stride 2, residual) in 3 blocks instead of 17.
SMALL_MOBILENET = {"width_mult": 0.25, "settings": ((1, 16, 1, 1), (6, 24, 2, 2)), "last_channels": 64}
MODELS = {"mobilenet_v2": SMALL_MOBILENET, "small_cnn": {"in_channels": 3}}
# Plan: (model, trainable patterns; none: everything trains). MobileNetV2's features.0 is the stem, features.1-3
# the blocks, features.4 the last 1x1 convolution; SmallCNN is three 3x3 convolutions (one of stride 2).
PLANS: dict[str, tuple[str, tuple[str, ...]]] = {
    "bias": ("mobilenet_v2", ("*.bias", "classifier.*")),
    "last2": ("mobilenet_v2", ("features.3.*", "features.4.*", "classifier.*")),
    "cnn-full": ("small_cnn", ()),
}


def make_model(plan: str) -> nn.Module:
    torch.manual_seed(0)
    name, patterns = PLANS[plan]
    model = build_model(name, **MODELS[name])
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # non-trivial statistics, so freezing them is exercised
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    apply_freeze(model, FreezeConfig(patterns))
    return model


@dataclass
class Case:
    eager: nn.Module  # as trained on device (BatchNorm frozen), before any route rewrote it
    bundle: Bundle

    def fresh_eager(self) -> nn.Module:
        return copy.deepcopy(self.eager)


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((BATCH, *SHAPE), generator=gen), torch.randint(0, 10, (BATCH,), generator=gen)


# (plan, speed routes, fused update + recompute): bias-only sends the backward through frozen convolutions
# (transposed convolutions on XNNPACK), with and without routes; last-2 takes both routes (its trainable 1x1
# convolutions become matmuls, its frozen blocks go to XNNPACK) together with the fused optimizer update and
# recomputation: its weights after each SGD step (lr 0.5) check every gradient. SmallCNN's full fine-tune takes
# im2col_matmul (all its convolutions are 3x3), alone and with the fused update and recomputation. Exports set this
# file's time.
CASES: dict[str, tuple[str, SpeedConfig | None, bool]] = {
    "bias-routes": ("bias", SpeedConfig(), False),
    "bias-plain": ("bias", None, False),
    "last2-routes-fused-recompute": ("last2", SpeedConfig(), True),
    "cnn-routes": ("cnn-full", SpeedConfig(), False),  # only im2col_matmul applies: KxK convolutions, all trained
    "cnn-routes-fused-recompute": ("cnn-full", SpeedConfig(), True),
}


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Case]:
    root = tmp_path_factory.mktemp("speed_routes")
    cache: dict[str, Case] = {}

    def get(name: str) -> Case:
        if name not in cache:
            plan, speed, fused = CASES[name]
            model = make_model(plan)
            bundle = export_bundle(
                model,
                root / name,
                sample_shape=SHAPE,
                batch_size=BATCH,
                optimizer=OptimizerConfig(kind="sgd", lr=LR),
                model_spec=ModelSpec(PLANS[plan][0], MODELS[PLANS[plan][0]]),
                speed=speed,
                fused_update=FusedUpdateConfig("constant") if fused else None,
                recompute=RecomputeConfig("blocks") if fused else None,
            )
            cache[name] = Case(prepare_for_training_export(model), bundle)
        return cache[name]

    return get


def eager_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    return loss.detach(), {
        "logits": logits.detach(),
        **{n: p.grad for n, p in model.named_parameters() if p.grad is not None},
    }


def run_steps(case: Case, steps: int = 3) -> list[dict[str, torch.Tensor]]:
    """Train ``steps`` SGD steps in the runtime and in eager, asserting each step equal; returns the runtime's
    loss, logits and gradients of every step."""
    session = open_session(case.bundle)
    eager = case.fresh_eager()
    optimizer = torch.optim.SGD([p for p in eager.parameters() if p.requires_grad], lr=LR)
    seen = []
    for step in range(steps):
        x, y = batch(10 + step)
        loss, logits, grads = session.forward_backward(x, y)
        eager_loss, expected = eager_step(eager, x, y)
        values = {"logits": logits, **{strip_prefix(n): g for n, g in grads.items()}}
        torch.testing.assert_close(torch.tensor(loss), eager_loss, rtol=RTOL, atol=ATOL)
        assert values.keys() == expected.keys()
        for name, value in values.items():
            torch.testing.assert_close(value, expected[name], rtol=RTOL, atol=ATOL, msg=f"step {step}: {name}")
        assert session.optimizer is not None
        session.optimizer.step(grads)
        optimizer.step()
        seen.append({"loss": torch.tensor(loss), **values})
    x, _ = batch(99)
    torch.testing.assert_close(session.predict(x), eager(x).detach(), rtol=RTOL, atol=ATOL)
    return seen


def test_xnnpack_route_keeps_loss_and_every_gradient_over_steps(cases: Callable[[str], Case]) -> None:
    case = cases("bias-routes")
    assert [t["name"] for t in case.bundle.manifest.techniques] == ["xnnpack_frozen"]  # no trainable 1x1 conv weight
    run_steps(case)


def test_routed_bundle_equals_the_plain_bundle(cases: Callable[[str], Case]) -> None:
    routed, plain = run_steps(cases("bias-routes"), steps=2), run_steps(cases("bias-plain"), steps=2)
    for step, (a, b) in enumerate(zip(routed, plain, strict=True)):
        for name in b:
            torch.testing.assert_close(a[name], b[name], rtol=RTOL, atol=ATOL, msg=f"step {step}: {name}")


def test_manifest_records_routes_runtime_and_memory(cases: Callable[[str], Case]) -> None:
    routed, plain = cases("bias-routes").bundle.manifest, cases("bias-plain").bundle.manifest
    routed_runtime, plain_runtime = routed.backend_options["runtime"], plain.backend_options["runtime"]
    assert {k: routed_runtime[k] for k in ("backends", "kernels", "threads")} == {
        "backends": ["XnnpackBackend"],
        "kernels": "portable",  # no trainable 1x1 convolution: no matmul rewrite
        "threads": "performance_cores",
    }
    assert {k: plain_runtime[k] for k in ("backends", "kernels", "threads")} == {
        "backends": [],
        "kernels": "portable",
        "threads": 1,
    }
    # The kernels a selective runtime build needs, as ExecuTorch names them.
    assert "aten::convolution.out" in plain_runtime["operators"]
    assert plain_runtime["operators"] == sorted(plain_runtime["operators"])
    assert all("::" in op and "." in op for op in routed_runtime["operators"])
    [xnnpack] = [t for t in routed.techniques if t["name"] == "xnnpack_frozen"]
    assert xnnpack["config"]["delegates"]["forward"] > 0 and xnnpack["config"]["backward_convolutions"]
    # XNNPACK's packed weights and workspace are predicted beside the arena and add up to the peak.
    memory = routed.memory
    assert memory.delegate_bytes > 0 == plain.memory.delegate_bytes
    assert memory.predicted_peak_bytes == (
        memory.planned_arena_bytes
        + memory.evaluation_arena_bytes
        + memory.program_bytes
        + memory.optimizer_state_bytes
        + memory.gradient_accumulation_bytes
        + memory.runtime_overhead_bytes
        + memory.delegate_bytes
    )
    # The delegates hold their own copies of the frozen weights: a larger program file.
    assert memory.program_bytes > plain.memory.program_bytes
    last2 = cases("last2-routes-fused-recompute").bundle.manifest
    assert last2.backend_options["runtime"]["kernels"] == "optimized"
    [pointwise] = [t for t in last2.techniques if t["name"] == "pointwise_linear"]
    assert pointwise["config"]["layers"] == 3  # block 5's expand and project, the last 1x1 convolution


@pytest.mark.parametrize(
    ("name", "techniques"),
    [
        ("last2-routes-fused-recompute", ["recompute", "fused_update", "pointwise_linear", "xnnpack_frozen"]),
        ("cnn-routes-fused-recompute", ["recompute", "fused_update", "im2col_matmul"]),
    ],
)
def test_routes_with_fused_update_and_recompute_train_like_eager(
    cases: Callable[[str], Case], name: str, techniques: list[str]
) -> None:
    case = cases(name)
    assert [t["name"] for t in case.bundle.manifest.techniques] == techniques
    session = open_session(case.bundle)
    eager = case.fresh_eager()
    optimizer = torch.optim.SGD([p for p in eager.parameters() if p.requires_grad], lr=LR)
    for step in range(3):
        x, y = batch(20 + step)
        loss, _ = session.train_step([(x, y)])
        eager_loss, _ = eager_step(eager, x, y)
        optimizer.step()
        torch.testing.assert_close(torch.tensor(loss), eager_loss, rtol=RTOL, atol=ATOL, msg=f"step {step}")
        # The step's update is lr x gradient: equal weights after each step mean equal gradients.
        params = dict(eager.named_parameters())
        for name, value in session.parameters().items():
            expected = params[strip_prefix(name)].detach()
            torch.testing.assert_close(value, expected, rtol=RTOL, atol=ATOL, msg=f"step {step}: {name}")


def test_onnxruntime_refuses_speed_routes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="speed routes are ExecuTorch"):
        export_bundle(
            nn.Linear(4, 2), tmp_path / "b", sample_shape=(4,), batch_size=2, backend="onnxruntime", speed=SpeedConfig()
        )


def test_backward_convolutions_become_transposed_convolutions() -> None:
    torch.manual_seed(0)
    model = build_model("small_cnn")
    apply_freeze(model, FreezeConfig(PLANS["bias"][1]))
    x, y = torch.zeros((BATCH, 1, 8, 8)), torch.arange(BATCH) % 10
    joint = export_joint_graph(prepare_for_training_export(model), resolve_loss("cross_entropy"), x, y)
    # The first convolution's input needs no gradient: its backward becomes only the bias gradient's sum.
    assert rewrite_backward_convolutions(joint) == 3
    targets = [n.target for n in joint.graph.nodes if n.op == "call_function"]
    assert torch.ops.aten.convolution_backward.default not in targets
    transposed = [n for n in joint.graph.nodes if n.target is torch.ops.aten.convolution.default and n.args[6] is True]
    assert [list(n.args[7]) for n in transposed] == [[0, 0], [1, 1]]  # 4x4 -> 8x8 through stride 2


def test_pointwise_module_equals_the_convolution() -> None:
    torch.manual_seed(0)
    for stride, bias, layout in (((1, 1), True, "bmm"), ((2, 2), False, "linear"), ((1, 2), True, "bmm")):
        conv = nn.Conv2d(5, 7, 1, stride=stride, bias=bias)
        pointwise = PointwiseLinear(conv, layout)
        assert pointwise.weight is conv.weight and pointwise.bias is conv.bias
        x = torch.rand(3, 5, 9, 6, requires_grad=True)
        torch.testing.assert_close(pointwise(x), conv(x), rtol=1e-5, atol=1e-6)
        (gx,) = torch.autograd.grad(pointwise(x).square().sum(), x)
        (gx_ref,) = torch.autograd.grad(conv(x).square().sum(), x)
        torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-5)


def test_rewrite_keeps_names_and_touches_only_trainable_pointwise() -> None:
    model = make_model("last2")
    before = {n: p.shape for n, p in model.state_dict().items()}
    sample = torch.zeros((BATCH, *SHAPE))
    replaced = rewrite_pointwise_convs(model, sample=sample)
    assert replaced == ["features.3.conv.0.0", "features.3.conv.2", "features.4.0"]
    assert {n: p.shape for n, p in model.state_dict().items()} == before
    assert all(not is_pointwise(m) or not m.weight.requires_grad for m in model.modules())
    frozen = rewrite_pointwise_convs(model, PointwiseLinearConfig(frozen=True), sample=sample)
    assert len(frozen) == 3
    # "auto": bmm on the 8x8 map of the first block, linear where the 4x4 maps are smaller than the weights.
    layouts = {name: model.get_submodule(name).layout for name in replaced + frozen}
    assert layouts["features.1.conv.1"] == "bmm" and layouts["features.4.0"] == "linear"
    assert not rewrite_pointwise_convs(nn.Sequential(nn.Conv2d(4, 4, 1, padding=1), nn.Conv2d(4, 4, 1, groups=2)))
    with pytest.raises(ValueError, match="not a 1x1 convolution"):
        PointwiseLinear(nn.Conv2d(4, 4, 3))
    with pytest.raises(ValueError, match="needs a sample input"):
        rewrite_pointwise_convs(make_model("last2"))


def test_im2col_route_trains_like_eager(cases: Callable[[str], Case]) -> None:
    case = cases("cnn-routes")
    manifest = case.bundle.manifest
    [im2col] = manifest.techniques
    assert im2col["name"] == "im2col_matmul" and im2col["config"]["layers"] == 3
    assert im2col["config"]["moved_nodes"] > 0  # backward's temporaries were rescheduled
    runtime = manifest.backend_options["runtime"]
    assert runtime["kernels"] == "optimized" and runtime["backends"] == []
    # Every convolution became a matmul, forward and backward.
    assert not [op for op in runtime["operators"] if "convolution" in op]
    assert "aten::bmm.out" in runtime["operators"]
    run_steps(case)


def test_im2col_module_equals_the_convolution() -> None:
    torch.manual_seed(0)
    for kwargs in (
        {"kernel_size": 3, "padding": 1},
        {"kernel_size": 3, "stride": 2, "padding": 1, "bias": False},
        {"kernel_size": (3, 2), "stride": (2, 1), "padding": (2, 0), "dilation": (2, 1)},
        {"kernel_size": 4, "padding": "same"},  # even kernel: one more zero on the right and bottom
        {"kernel_size": 5, "stride": 3},
    ):
        for layout in ("bmm", "linear"):
            conv = nn.Conv2d(5, 7, **kwargs)
            im2col = Im2colConv(conv, layout)
            assert im2col.weight is conv.weight and im2col.bias is conv.bias
            x = torch.rand(3, 5, 11, 9, requires_grad=True)
            torch.testing.assert_close(im2col(x), conv(x), rtol=1e-5, atol=1e-6, msg=f"{kwargs} {layout}")
            params = [x, *conv.parameters()]
            grads = torch.autograd.grad(im2col(x).square().sum(), params)
            expected = torch.autograd.grad(conv(x).square().sum(), params)
            for grad, grad_ref in zip(grads, expected, strict=True):
                torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-4, msg=f"{kwargs} {layout}")


def test_im2col_rewrite_touches_only_trainable_kxk_convs_within_the_limit() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # rewritten
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise: stays
        nn.Conv2d(8, 8, 1),  # 1x1: pointwise_linear's
        nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"),  # not zero padding: stays
        nn.Conv2d(8, 4, 3, stride=2),  # frozen: stays (XNNPACK's)
        nn.Conv2d(4, 4, 3, padding=1),  # columns over the limit: stays
    )
    model[4].requires_grad_(False)
    sample = torch.zeros((2, 3, 12, 12))
    before = {n: p.shape for n, p in model.state_dict().items()}
    big = columns_bytes(model[5], torch.Size((2, 4, 5, 5)), 4)
    small = columns_bytes(model[0], torch.Size((2, 8, 12, 12)), 4)
    assert big < small  # the limit is per layer
    replaced = rewrite_im2col_convs(copy.deepcopy(model), Im2colMatmulConfig(max_columns_bytes=small), sample=sample)
    assert replaced == ["0", "5"]
    replaced = rewrite_im2col_convs(model, Im2colMatmulConfig(max_columns_bytes=small - 1), sample=sample)
    assert replaced == ["5"] and isinstance(model[5], Im2colConv) and isinstance(model[0], nn.Conv2d)
    assert {n: p.shape for n, p in model.state_dict().items()} == before
    # "auto": bmm on the 5x5 map (4 outputs <= 25 pixels), linear where the outputs outnumber the pixels.
    assert model[5].layout == "bmm"
    wide = nn.Sequential(nn.Conv2d(3, 32, 3))
    rewrite_im2col_convs(wide, sample=torch.zeros((2, 3, 6, 6)))
    assert wide[0].layout == "linear"
    # The MobileNetV2 plans: the stem is the only groups-1 KxK convolution, and it is frozen in both.
    assert not rewrite_im2col_convs(make_model("last2"), sample=torch.zeros((BATCH, *SHAPE)))
    with pytest.raises(ValueError, match="not a KxK convolution"):
        Im2colConv(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="needs a sample input"):
        rewrite_im2col_convs(nn.Sequential(nn.Conv2d(4, 4, 3)))


def test_configs_round_trip_through_json() -> None:
    for config in (
        PointwiseLinearConfig(frozen=True, layout="linear"),
        Im2colMatmulConfig(layout="bmm", max_columns_bytes=1024),
        XnnpackFrozenConfig(backward_convolutions=False),
        SpeedConfig(),
        SpeedConfig.off(),
        SpeedConfig(pointwise_linear=None),
        SpeedConfig(im2col_matmul=None, xnnpack_frozen=None),
    ):
        assert type(config).from_json(config.to_json()) == config
    plan = TrainingPlan(speed=SpeedConfig(xnnpack_frozen=None))
    assert TrainingPlan.from_json(plan.to_json()) == plan
    assert "speed routes pointwise_linear+im2col_matmul" in plan.describe()
    # JSON from before the route existed has no key for it: the route is off, the others as written.
    old = {"pointwise_linear": PointwiseLinearConfig().to_json(), "xnnpack_frozen": None}
    assert SpeedConfig.from_json(old) == SpeedConfig(im2col_matmul=None, xnnpack_frozen=None)
    assert TrainingPlan.from_json({**TrainingPlan().to_json(), "speed": old}).speed == SpeedConfig.from_json(old)
    with pytest.raises(ValueError, match="layout must be one of"):
        Im2colMatmulConfig(layout="nchw")  # type: ignore[arg-type]
