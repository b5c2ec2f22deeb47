"""BatchNorm with running statistics (eval mode) for ONNX Runtime training, as a per-channel affine map.

memwall exports models in eval mode, so BatchNorm normalizes with its running statistics (``nn.BatchNorm2d`` is
frozen into ``FrozenBatchNorm2d`` before export; ``nn.BatchNorm1d`` and others reach torch.onnx as they are).
torch.onnx writes ``BatchNormalization``, whose ORT 1.19.2 gradient is that of training mode (batch statistics):
the bundle trained, with wrong gradients (measured: ``nn.BatchNorm1d`` after a linear layer, its weight's gradient
9.4x off, python -m sdk_tools.coverage). Here it is ``(x - mean) / sqrt(var + eps) * weight + bias`` with the
statistics as constants of the graph's initializers, per channel (dimension 1): ``Sub``/``Div``/``Sqrt``/``Mul``/
``Add``, as ``FrozenBatchNorm2d`` computes. Training-mode BatchNorm (batch statistics) keeps torch.onnx's export.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.onnx import symbolic_helper
from torch.onnx import symbolic_opset14 as opset14

from exporters.techniques.onnx_symbolics import OnnxSymbolicRewrite


@symbolic_helper.parse_args("v", "v", "v", "v", "v", "b", "f", "f", "b")
def batch_norm(
    g: Any,
    x: Any,
    weight: Any,
    bias: Any,
    mean: Any,
    var: Any,
    training: bool,
    momentum: float,
    eps: float,
    cudnn: bool,
) -> Any:
    rank = symbolic_helper._get_tensor_rank(x)
    channels = symbolic_helper._get_tensor_dim_size(x, 1)
    if training or rank is None or channels is None or symbolic_helper._is_none(mean):
        return None
    per_channel = g.op("Constant", value_t=torch.tensor([channels] + [1] * (rank - 2)))
    eps_value = g.op("Constant", value_t=torch.tensor(eps, dtype=torch.float32))
    std = g.op("Sqrt", g.op("Add", g.op("Reshape", var, per_channel), eps_value))
    y = g.op("Div", g.op("Sub", x, g.op("Reshape", mean, per_channel)), std)
    if not symbolic_helper._is_none(weight):
        y = g.op("Mul", y, g.op("Reshape", weight, per_channel))
    if not symbolic_helper._is_none(bias):
        y = g.op("Add", y, g.op("Reshape", bias, per_channel))
    return y


BATCH_NORM_EVAL = OnnxSymbolicRewrite(
    "batchnorm_eval_affine",
    "aten::batch_norm",
    "ONNX Runtime 1.19.2 differentiates BatchNormalization as in training mode (eval-mode gradients 9.4x off)",
    batch_norm,
    opset14.batch_norm,
)
