"""LoRA adapters: module surgery in eager PyTorch, and exported bundles trained in both real runtimes."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from exporters import FreezeConfig, ModelSpec, OptimizerConfig, apply_freeze, export_bundle
from exporters.techniques.lora import LoraConfig, LoraConv2d, LoraLinear, apply_lora, merge_lora
from exporters.training_graph import prepare_for_training_export, strip_prefix
from sdk_tools.models import build_model
from sdk_tools.runner import TrainConfig, load_trained_weights, open_session, train
from sdk_tools.runner.executorch_session import ExecuTorchSession
from sdk_tools.runner.onnxruntime_session import OnnxRuntimeSession
from sdk_tools.runner.session import TrainingSession
from tests.conftest import BATCH, ExportedCase

# MobileNetV2 with three blocks: every layer kind of the reference model (stem, depthwise, 1x1 expand and
# project, residual, last 1x1 conv, classifier) at a fraction of the export time.
TINY = {"width_mult": 0.25, "in_channels": 3, "settings": ((1, 8, 1, 1), (6, 8, 2, 2)), "last_channels": 32}
SHAPE = (3, 8, 8)
POINTWISE = ["features.1.conv.1", "features.2.conv.0.0", "features.2.conv.2", "features.3.conv.0.0"]
POINTWISE += ["features.3.conv.2", "features.4.0"]
CONFIG = LoraConfig(rank=2, alpha=4.0, trainable=("classifier.bias",))
RTOL, ATOL = 1e-4, 1e-5


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", **TINY)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # non-trivial statistics, as the runtime freezes them
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


def random_b(model: nn.Module) -> nn.Module:
    # B starts at zero, where A's gradient is zero too: a random B makes every adapter gradient non-trivial.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("lora_B"):
                param.normal_(0, 0.2)
    return model


def lora_model() -> nn.Module:
    return random_b(apply_lora(tiny_model(), CONFIG))


@pytest.fixture(scope="module", params=["executorch", "onnxruntime"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ExportedCase:
    model = lora_model()
    bundle = export_bundle(
        model,
        tmp_path_factory.mktemp("lora") / request.param,
        sample_shape=SHAPE,
        batch_size=BATCH,
        backend=request.param,
        optimizer=OptimizerConfig(lr=0.05),
        model_spec=ModelSpec("mobilenet_v2", TINY),
        techniques=[{"name": "lora", "config": CONFIG.to_json()}],
    )
    return ExportedCase("lora", prepare_for_training_export(model), SHAPE, bundle)


def runtime_loss_and_grads(
    session: TrainingSession, x: torch.Tensor, y: torch.Tensor
) -> tuple[float, torch.Tensor, dict[str, torch.Tensor]]:
    """Loss, logits and gradients by runtime name of one training call in the bundle's runtime."""
    if isinstance(session, ExecuTorchSession):
        return session.forward_backward(x, y)
    assert isinstance(session, OnnxRuntimeSession)
    loss, logits = session.train_step([(x, y)])
    # The gradient buffers keep this step's gradients until the next step resets them.
    grads = {
        p.name: torch.from_numpy(session.state.parameters[p.name].grad).clone() for p in session.manifest.trainable
    }
    return loss, logits, grads


def test_loss_and_adapter_gradients_equal_eager(exported: ExportedCase) -> None:
    adapters = [f"{m}.{a}" for m in [*POINTWISE, "classifier"] for a in ("lora_A", "lora_B")]
    assert sorted(strip_prefix(p.name) for p in exported.bundle.manifest.trainable) == sorted(
        [*adapters, "classifier.bias"]
    )
    x, y = exported.batch(seed=1)
    loss, logits, grads = runtime_loss_and_grads(open_session(exported.bundle), x, y)
    eager = exported.fresh_eager()
    eager_loss = F.cross_entropy(eager(x), y)
    eager_loss.backward()
    assert loss == pytest.approx(float(eager_loss), rel=1e-5)
    torch.testing.assert_close(logits, eager(x).detach(), rtol=RTOL, atol=ATOL)
    params = dict(eager.named_parameters())
    for name, grad in grads.items():
        expected = params[strip_prefix(name)].grad
        assert expected is not None and expected.abs().max() > 0, name
        torch.testing.assert_close(grad, expected, rtol=RTOL, atol=ATOL, msg=name)
    assert all(p.grad is None for p in params.values() if not p.requires_grad)


def test_trained_adapters_load_onto_a_fresh_model_and_merge(exported: ExportedCase, tmp_path: Path) -> None:
    bundle = exported.bundle
    session = open_session(bundle)
    checkpoint = tmp_path / "trained.safetensors"
    train(bundle, TrainConfig(steps=5, data="random", eval_split=None, checkpoint=checkpoint, progress=False), session)

    fresh = apply_lora(tiny_model(), CONFIG)  # adapters at their (other) initial values, B zero
    adapted = load_trained_weights(fresh, bundle, checkpoint)
    initial = exported.fresh_eager()
    moved = [
        n
        for n, p in adapted.named_parameters()
        if p.requires_grad and not torch.equal(p, dict(initial.named_parameters())[n])
    ]
    assert len(moved) == len(bundle.manifest.trainable), "every trained tensor differs from the exported one"
    x, y = exported.batch(seed=2)
    unmerged = prepare_for_training_export(adapted)(x).detach()
    merged_model = merge_lora(copy.deepcopy(adapted))
    merged = prepare_for_training_export(merged_model)(x).detach()
    torch.testing.assert_close(session.predict(x), merged, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)
    # The merged model is the plain architecture again: its state dict loads into an unadapted model.
    assert not any(isinstance(m, (LoraLinear, LoraConv2d)) for m in merged_model.modules())
    tiny_model().load_state_dict(merged_model.state_dict())

    # The frozen base weights never moved: the runtime's training method computes the original weights
    # plus the trained adapters (ExecuTorch), or holds the original weights in its state (ONNX Runtime).
    base = tiny_model().state_dict()
    if isinstance(session, ExecuTorchSession):
        _, logits, _ = session.forward_backward(x, y)
        torch.testing.assert_close(logits, unmerged, rtol=RTOL, atol=ATOL)
    else:
        assert isinstance(session, OnnxRuntimeSession)
        frozen = [n for n, p in adapted.named_parameters() if not p.requires_grad]
        for name in frozen:
            stored = torch.from_numpy(session.state.parameters[f"model.{name}"].data)
            assert torch.equal(stored, base[name]), name


def test_merged_logits_equal_unmerged_for_linear_and_strided_padded_conv() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 6, 1, stride=2, padding=1), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
    adapted = random_b(apply_lora(copy.deepcopy(model), LoraConfig(rank=3)))
    x = torch.rand(2, 4, 6, 6)
    unmerged = adapted(x).detach()
    merged = merge_lora(adapted)
    assert [type(m) for m in merged] == [nn.Conv2d, nn.Flatten, nn.Linear]
    torch.testing.assert_close(merged(x), unmerged, rtol=0, atol=1e-5)
    # A bare layer is adapted and merged as the root module.
    layer = random_b(apply_lora(nn.Linear(3, 2), LoraConfig()))
    assert isinstance(layer, LoraLinear)
    torch.testing.assert_close(merge_lora(layer)(x[:, :3, 0, 0]), layer(x[:, :3, 0, 0]), rtol=0, atol=1e-6)


def test_adapters_start_at_the_model_and_only_they_train() -> None:
    model = prepare_for_training_export(tiny_model())
    adapted = apply_lora(copy.deepcopy(model), LoraConfig())
    x = torch.rand(BATCH, *SHAPE)
    assert torch.equal(adapted(x), model(x))
    wrapped = sorted(n for n, m in adapted.named_modules() if isinstance(m, (LoraLinear, LoraConv2d)))
    assert wrapped == sorted([*POINTWISE, "classifier"])
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable == {f"{m}.{a}" for m in wrapped for a in ("lora_A", "lora_B")}
    # The layers keep their own parameters under their own names: a pretrained state dict loads as it is.
    assert adapted.load_state_dict(model.state_dict(), strict=False).unexpected_keys == []


def test_lora_trainable_patterns_and_apply_freeze_compose() -> None:
    with_config = apply_lora(tiny_model(), LoraConfig(targets=("features.*",), trainable=("classifier.*",)))
    # apply_freeze replaces the whole selection: after apply_lora its patterns name the adapters too.
    with_freeze = apply_freeze(
        apply_lora(tiny_model(), LoraConfig(targets=("features.*",))),
        FreezeConfig(("*.lora_A", "*.lora_B", "classifier.*")),
    )
    selected = [{n for n, p in m.named_parameters() if p.requires_grad} for m in (with_config, with_freeze)]
    assert selected[0] == selected[1]
    assert {"classifier.weight", "classifier.bias", "features.4.0.lora_A"} <= selected[0]
    assert "features.4.0.weight" not in selected[0]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (LoraConfig(targets=("decoder.*",)), r"'decoder\.\*' matches no module"),
        (LoraConfig(targets=("features.1.conv.0.0",)), r"matches features\.1\.conv\.0\.0 \(Conv2d 3x3 groups=8\)"),
        (LoraConfig(targets=("features.0",)), r"no nn\.Linear or 1x1 nn\.Conv2d.*Sequential"),
        (LoraConfig(trainable=("head.*",)), r"trainable pattern 'head\.\*' matches no parameter"),
        (LoraConfig(trainable=("classifier.*",)), r"'classifier\.weight', the frozen weight of a LoRA-adapted"),
    ],
    ids=["no-module", "depthwise", "container-only", "no-parameter", "adapted-weight"],
)
def test_bad_targets_are_refused_with_the_fix(config: LoraConfig, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        apply_lora(tiny_model(), config)


def test_config_round_trips_and_rejects_bad_values() -> None:
    assert LoraConfig.from_json(CONFIG.to_json()) == CONFIG
    assert CONFIG.scaling == 2.0
    with pytest.raises(ValueError, match="rank must be an int >= 1"):
        LoraConfig(rank=0)
    with pytest.raises(ValueError, match="alpha must be positive"):
        LoraConfig(alpha=0.0)
    with pytest.raises(ValueError, match="at least one target"):
        LoraConfig(targets=())
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        apply_lora(apply_lora(tiny_model(), CONFIG), CONFIG)
