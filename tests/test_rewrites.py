"""Training rewrites: layers whose backward a runtime computes wrong or lacks train like eager PyTorch after
memwall's rewrite. Each case exports a tiny model (a trainable stem, the layer, a classifier), runs one step in the
real runtime and compares loss, logits and every gradient with eager (``sdk_tools.coverage.check_cell``); the
manifest names the rewrite. These are cells of the coverage table: after test_coverage.py they are not measured
again (``coverage_cells``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from exporters import OptimizerConfig, export_bundle
from exporters.training_graph import prepare_for_training_export, strip_prefix
from sdk_tools.coverage import Cell
from sdk_tools.runner.train import open_session
from tests.conftest import CoverageCells

CASES = [
    # ExecuTorch 1.5.1's max-pool backward does not zero its output: conv gradients were 4x-220x off.
    ("MaxPool2d 2x2", "executorch", "maxpool_backward_scatter"),
    ("MaxPool2d 3x3 stride 2 pad 1", "executorch", "maxpool_backward_scatter"),  # overlapping windows, padding
    # No avg_pool2d_backward / _adaptive_avg_pool2d_backward kernels: the step failed with "Missing operator".
    ("AvgPool2d 2x2", "executorch", "avgpool_backward_conv"),
    ("AvgPool2d 3x3 stride 1 pad 1", "executorch", "avgpool_backward_conv"),
    ("AdaptiveAvgPool2d 2x2", "executorch", "adaptive_avgpool_backward_conv"),
    # ONNX Runtime 1.19.2 has no gradient for InstanceNormalization, which both export as: the export was refused.
    ("GroupNorm (2 groups)", "onnxruntime", "groupnorm_primitives"),
    ("InstanceNorm2d (affine)", "onnxruntime", "instancenorm_primitives"),
    # ONNX Runtime 1.19.2's AveragePoolGrad killed the process (SIGFPE) at the first step.
    ("AvgPool2d 3x3 stride 1 pad 1", "onnxruntime", "avgpool_conv"),
    ("AdaptiveAvgPool2d 2x2", "onnxruntime", "adaptive_avgpool_conv"),
    # ExecuTorch's convolution_backward takes only 2-D non-transposed convolutions: the step failed.
    ("Conv1d", "executorch", "conv1d_transposed_backward"),
    ("ConvTranspose2d 3x3 s2 p1 out-pad 1, groups 2", "executorch", "conv1d_transposed_backward"),
    # No adaptive_max_pool2d kernels: as max_pool2d_with_indices, backward as the scatter-add.
    ("AdaptiveMaxPool2d 1x1", "executorch", "adaptive_maxpool_as_maxpool+adaptive_maxpool_backward_scatter"),
    # No out variant of the flash attention's backward: the export failed.
    ("MultiheadAttention", "executorch", "attention_backward_as_matmuls"),
    # SiLU's backward decomposes through empty_permuted, which ExecuTorch has no kernel for.
    ("SiLU", "executorch", "empty_permuted_as_empty"),
    # ORT differentiated eval-mode BatchNormalization as in training mode: weight gradient 9.4x off.
    ("BatchNorm1d", "onnxruntime", "batchnorm_eval_affine"),
    # No ORT gradient for these activations: the export was refused.
    ("Hardswish", "onnxruntime", "hardswish_primitives"),
    ("Hardsigmoid", "onnxruntime", "hardsigmoid_primitives"),
    ("ELU", "onnxruntime", "elu_primitives"),
    ("Softplus", "onnxruntime", "softplus_primitives"),
    ("Mish", "onnxruntime", "mish_primitives"),
    ("PReLU", "onnxruntime", "prelu_primitives"),
    # No CPU kernel for ResizeGrad in ORT's training build: the bundle failed to load.
    ("Upsample nearest x2", "onnxruntime", "upsample_nearest_expand"),
]


@pytest.mark.parametrize(("row", "backend", "rewrite"), CASES, ids=[f"{r}-{b}" for r, b, _ in CASES])
def test_rewritten_layer_trains_like_eager(
    coverage_cells: CoverageCells, tmp_path: Path, row: str, backend: str, rewrite: str
) -> None:
    assert coverage_cells.cell(row, backend, tmp_path) == Cell("trains", rewrite)


# The model zoo: real architectures beyond memwall's reference models, trained 5 SGD steps in the runtime.
class CifarCNN(nn.Module):
    """ExecuTorch's CIFAR training example's shape: (conv -> ReLU -> max-pool) x 2 -> linear, at 3x16x16."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class GroupNormCNN(nn.Module):
    """The small-batch CNN: conv -> GroupNorm -> SiLU, twice (stride 2), average pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.GroupNorm(2, 8),
            nn.SiLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.GroupNorm(4, 16),
            nn.SiLU(),
            nn.AvgPool2d(2),
        )
        self.classifier = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class BasicBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    """ResNet-18's shape in small: 7x7/2 stem, BatchNorm, 3x3/2 max-pool, two residual blocks, global average pool."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        self.blocks = nn.Sequential(BasicBlock(8), BasicBlock(8))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


class GRUClassifier(nn.Module):
    """A small sequence classifier: a GRU over 8 steps of 6 features, the last hidden state to 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(6, 16, batch_first=True)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.rnn(x)[0][:, -1])


IMAGE, SEQUENCE = (3, 16, 16), (8, 6)
ZOO = {
    "cifar_cnn": (CifarCNN, IMAGE),
    "groupnorm_cnn": (GroupNormCNN, IMAGE),
    "resnet_tiny": (TinyResNet, IMAGE),
    "gru_classifier": (GRUClassifier, SEQUENCE),
}
ZOO_BATCH, ZOO_LR, ZOO_STEPS = 4, 0.1, 5
# Five float32 steps of a small network: the runtimes' summation order differs from eager by ~1e-7 relative.
RTOL, ATOL = 1e-4, 1e-5


@pytest.mark.parametrize("backend", ["executorch", "onnxruntime"])
@pytest.mark.parametrize("name", list(ZOO))
def test_model_zoo_trains_like_eager(tmp_path: Path, name: str, backend: str) -> None:
    torch.manual_seed(0)
    factory, shape = ZOO[name]
    model = factory()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # non-trivial statistics, so freezing them is exercised
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    bundle = export_bundle(
        model,
        tmp_path / name,
        sample_shape=shape,
        batch_size=ZOO_BATCH,
        backend=backend,
        optimizer=OptimizerConfig(kind="sgd", lr=ZOO_LR),
    )
    eager = prepare_for_training_export(model)
    optimizer = torch.optim.SGD(eager.parameters(), lr=ZOO_LR)
    session = open_session(bundle)
    for step in range(ZOO_STEPS):
        gen = torch.Generator().manual_seed(step)
        x, y = torch.randn((ZOO_BATCH, *shape), generator=gen), torch.randint(0, 10, (ZOO_BATCH,), generator=gen)
        loss, _ = session.train_step([(x, y)])
        optimizer.zero_grad()
        expected = F.cross_entropy(eager(x), y)
        expected.backward()
        optimizer.step()
        torch.testing.assert_close(torch.tensor(loss), expected.detach(), rtol=RTOL, atol=ATOL, msg=f"step {step}")
        # SGD's update is lr x gradient: equal weights after each step mean equal gradients.
        params = dict(eager.named_parameters())
        for runtime_name, value in session.trained_parameters().items():
            torch.testing.assert_close(
                value,
                params[strip_prefix(runtime_name)].detach(),
                rtol=RTOL,
                atol=ATOL,
                msg=f"{runtime_name} step {step}",
            )
