"""int8 frozen weights: quantization math, module surgery, and exported bundles in both real runtimes."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from exporters import Bundle, FreezeConfig, OptimizerConfig, apply_freeze, export_bundle
from exporters.techniques.int8_weights import (
    Int8Conv2d,
    Int8Linear,
    Int8WeightsConfig,
    dequantize_weights,
    quantization_report,
    quantize_frozen_weights,
    quantize_weight,
)
from exporters.techniques.lora import LoraConfig, LoraConv2d, LoraLinear, apply_lora
from exporters.training_graph import prepare_for_training_export, strip_prefix
from sdk_tools.models import build_model
from sdk_tools.runner import open_session
from sdk_tools.runner.executorch_session import ExecuTorchSession
from sdk_tools.runner.onnxruntime_session import OnnxRuntimeSession
from tests.conftest import BATCH

# MobileNetV2 with three blocks (every layer kind of the reference model), wide enough that the weights, not
# the program's per-op metadata, dominate the file sizes.
TINY = {"width_mult": 1.0, "in_channels": 3, "settings": ((1, 16, 1, 1), (6, 24, 2, 2)), "last_channels": 128}
SHAPE = (3, 8, 8)
BIAS_ONLY = FreezeConfig(("*.bias",))  # backward runs through every quantized layer
RTOL, ATOL = 1e-4, 1e-5
FILE_ROLE = {"executorch": "program", "onnxruntime": "checkpoint"}  # where the frozen weights are stored


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", **TINY)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # non-trivial statistics, as the runtime freezes them
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


def inputs(seed: int) -> torch.Tensor:
    return torch.rand((BATCH, *SHAPE), generator=torch.Generator().manual_seed(seed))


@dataclass
class Pair:
    """The same bias-only model exported with float and with int8 frozen weights."""

    float_model: nn.Module  # prepared as on device (BatchNorm frozen)
    int8_model: nn.Module
    float_bundle: Bundle
    int8_bundle: Bundle


@pytest.fixture(scope="module", params=[pytest.param("executorch", marks=pytest.mark.slow), "onnxruntime"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Pair:
    root = tmp_path_factory.mktemp("int8")
    model = apply_freeze(tiny_model(), BIAS_ONLY)
    quantized = quantize_frozen_weights(copy.deepcopy(model), Int8WeightsConfig())
    bundles = [
        export_bundle(
            m,
            root / f"{request.param}-{tag}",
            sample_shape=SHAPE,
            batch_size=BATCH,
            backend=request.param,
            optimizer=OptimizerConfig(lr=0.05),
            techniques=techniques,
        )
        for m, tag, techniques in [
            (model, "float", []),
            (quantized, "int8", [{"name": "int8_weights", "config": Int8WeightsConfig().to_json()}]),
        ]
    ]
    return Pair(prepare_for_training_export(model), prepare_for_training_export(quantized), *bundles)


def test_frozen_weights_shrink_the_bundle(pair: Pair) -> None:
    stored = sum(b.numel() for n, b in pair.int8_model.named_buffers() if n.endswith("weight_int8"))
    assert stored == sum(
        p.numel() for n, p in pair.float_model.named_parameters() if n.endswith(".weight") and p.dim() > 1
    )
    float_files, int8_files = pair.float_bundle.manifest.files, pair.int8_bundle.manifest.files
    role = FILE_ROLE[pair.int8_bundle.manifest.backend]
    # 4 -> 1 byte per weight, less the scales and the dequantizing ops' metadata: at least 2 bytes saved.
    assert int8_files[role].bytes < float_files[role].bytes - 2 * stored
    assert sum(f.bytes for f in int8_files.values()) < sum(f.bytes for f in float_files.values()) - 2 * stored
    float_memory, int8_memory = pair.float_bundle.manifest.memory, pair.int8_bundle.manifest.memory
    assert int8_memory.parameter_bytes < float_memory.parameter_bytes - 2 * stored
    assert [p.name for p in pair.int8_bundle.manifest.trainable] == [
        p.name for p in pair.float_bundle.manifest.trainable
    ]


def test_gradients_equal_eager_on_the_quantized_model(pair: Pair) -> None:
    session = open_session(pair.int8_bundle)
    x, y = inputs(1), torch.arange(BATCH) % 10
    if isinstance(session, ExecuTorchSession):
        loss, logits, grads = session.forward_backward(x, y)
    else:
        assert isinstance(session, OnnxRuntimeSession)
        loss, logits = session.train_step([(x, y)])
        # The gradient buffers keep this step's gradients until the next step resets them.
        grads = {
            n: torch.from_numpy(session.state.parameters[n].grad) for n in (p.name for p in session.manifest.trainable)
        }
    eager = copy.deepcopy(pair.int8_model)
    eager_loss = F.cross_entropy(eager(x), y)
    eager_loss.backward()
    assert loss == pytest.approx(float(eager_loss), rel=1e-5)
    torch.testing.assert_close(logits, eager(x).detach(), rtol=RTOL, atol=ATOL)
    params = dict(eager.named_parameters())
    trainable = [n for n, p in params.items() if p.requires_grad]
    assert sorted(strip_prefix(n) for n in grads) == sorted(trainable)
    assert all(n.endswith(".bias") for n in trainable) and all(
        p.grad is None for p in params.values() if not p.requires_grad
    )
    for name, grad in grads.items():
        torch.testing.assert_close(grad, params[strip_prefix(name)].grad, rtol=RTOL, atol=ATOL, msg=name)


def test_quantization_error_is_small_and_reported(pair: Pair) -> None:
    batches = [inputs(seed) for seed in range(10, 14)]
    report = quantization_report(pair.float_model, pair.int8_model, batches)
    assert report.samples == 4 * BATCH
    assert report.relative_error < 0.02
    assert report.top1_agreement >= 0.9
    assert report.state_bytes_after < report.state_bytes_before / 2
    # The report describes what the device computes: the runtime's predictions are the quantized model's.
    session = open_session(pair.int8_bundle)
    runtime_error = max(float((session.predict(x) - pair.float_model(x)).abs().max()) for x in batches)
    assert runtime_error == pytest.approx(report.max_abs_error, abs=ATOL)
    assert set(report.to_json()) >= {"max_abs_error", "mean_abs_error", "top1_agreement", "relative_error"}


def test_per_channel_quantization_is_within_half_a_step() -> None:
    torch.manual_seed(0)
    weight = torch.randn(6, 4, 3, 3) * torch.logspace(-3, 1, 6).view(-1, 1, 1, 1)
    weight[2] = 0  # a dead channel
    q, scale = quantize_weight(weight)
    assert q.dtype == torch.int8 and scale.shape == (6, 1, 1, 1)
    assert torch.equal(q.flatten(1).abs().amax(1), torch.tensor([127, 127, 0, 127, 127, 127], dtype=torch.int8))
    assert ((q * scale - weight).abs() <= scale / 2 + 1e-12).all()
    q_tensor, scale_tensor = quantize_weight(weight, per_channel=False)
    assert scale_tensor.shape == (1, 1, 1, 1)
    # One scale for all channels wipes out the small ones: the reason per-channel is the default.
    assert (q_tensor[0] == 0).all() and not (q[0] == 0).all()


def test_only_frozen_layers_are_quantized_and_dequantizing_reproduces_them() -> None:
    model = apply_freeze(tiny_model(), FreezeConfig(("classifier.*",)))
    classifier = model.classifier
    quantized = quantize_frozen_weights(copy.deepcopy(model), Int8WeightsConfig())
    assert type(quantized.classifier) is nn.Linear, "a trainable layer is left as it is"
    kinds = [type(m) for m in quantized.modules()]
    assert Int8Conv2d in kinds and nn.Conv2d not in kinds and Int8Linear not in kinds
    assert quantized.classifier.weight.requires_grad
    assert torch.equal(quantized.classifier.weight, classifier.weight)
    x = inputs(3)
    restored = dequantize_weights(copy.deepcopy(quantized))
    assert not any(isinstance(m, (Int8Conv2d, Int8Linear)) for m in restored.modules())
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(x), quantized.eval()(x), rtol=0, atol=1e-6)
    tiny_model().load_state_dict(restored.state_dict())
    # Under LoRA, the adapted layers stay as they are and the other frozen layers are quantized.
    adapted = quantize_frozen_weights(apply_lora(tiny_model(), LoraConfig()), Int8WeightsConfig())
    kinds = {name: type(m) for name, m in adapted.named_modules()}
    assert kinds["features.2.conv.0.0"] is LoraConv2d and kinds["features.2.conv.1.0"] is Int8Conv2d
    assert kinds["classifier"] is LoraLinear and kinds["features.0.0"] is Int8Conv2d
    # A bare frozen layer is quantized as the root module, its trainable bias kept as it is.
    layer = nn.Linear(5, 3).requires_grad_(False)
    layer.bias.requires_grad_(True)
    root = quantize_frozen_weights(layer, Int8WeightsConfig())
    assert isinstance(root, Int8Linear) and root.bias is layer.bias


def test_report_restores_modes_and_needs_inputs() -> None:
    model = apply_freeze(tiny_model(), BIAS_ONLY).train()
    quantized = quantize_frozen_weights(copy.deepcopy(model), Int8WeightsConfig())
    running_mean = model.features[0][1].running_mean.clone()
    report = quantization_report(model, quantized, [(inputs(0), torch.zeros(BATCH))])
    assert model.training and quantized.training
    assert torch.equal(model.features[0][1].running_mean, running_mean), "evaluated in eval mode"
    assert report.max_abs_error > 0 and 0 < report.mean_abs_error <= report.max_abs_error
    with pytest.raises(ValueError, match="at least one batch"):
        quantization_report(model, quantized, [])


@pytest.mark.parametrize(
    ("freeze", "targets", "message"),
    [
        (BIAS_ONLY, ("decoder.*",), r"'decoder\.\*' matches no module"),
        (FreezeConfig(("classifier.*",)), ("classifier",), r"classifier \(Linear, weight trainable\).*freeze"),
        (BIAS_ONLY, ("features.0",), r"selects no frozen nn\.Linear or nn\.Conv2d \(it matches features\.0 \(Seq"),
    ],
    ids=["no-module", "trainable", "container-only"],
)
def test_bad_targets_are_refused_with_the_fix(freeze: FreezeConfig, targets: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        quantize_frozen_weights(apply_freeze(tiny_model(), freeze), Int8WeightsConfig(targets=targets))


def test_config_round_trips() -> None:
    config = Int8WeightsConfig(targets=("features.*",), per_channel=False)
    assert Int8WeightsConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="at least one target"):
        Int8WeightsConfig(targets=())
