"""Activations ONNX Runtime cannot differentiate, as primitive ops it can.

ONNX Runtime 1.19.2 has no gradient builder for ``HardSigmoid``, ``HardSwish``, ``Elu``, ``Softplus`` (so neither
for Mish, which torch.onnx writes with it) or ``PRelu``: each export with a trainable layer before them was refused
(python -m sdk_tools.coverage). Each is written with ``Relu``/``Clip``/``Exp``/``Log``/``Abs``/``Tanh``/``Mul``/
``Add``/``Neg``, whose gradients ORT has:

- hardsigmoid(x) = clip(relu(x + 3), 0, 6) / 6 (``Relu`` first, as for ReLU6: ORT's ``Clip`` gradient passes at
  the lower bound, PyTorch's does not); hardswish(x) = x * hardsigmoid(x);
- elu(x) = scale * (relu(x) + alpha * (exp(-relu(-x) * input_scale) - 1)) (``alpha`` > 0);
- softplus(x) = (relu(b x) + log(1 + exp(-|b x|))) / b, the overflow-free form (PyTorch returns x itself past
  ``threshold``: the two differ by at most log(1 + e^-threshold), 2e-9 at the default 20); its gradient is
  sigmoid(b x) on both sides; mish(x) = x * tanh(softplus(x));
- prelu(x, w) = relu(x) - w * relu(-x), ``w`` per channel (dimension 1) or one value.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.onnx import symbolic_helper

from exporters.techniques.onnx_symbolics import OnnxSymbolicRewrite

WHY = "ONNX Runtime 1.19.2 has no gradient for {} (the export was refused)"


def scalar(g: Any, value: float) -> Any:
    return g.op("Constant", value_t=torch.tensor(value, dtype=torch.float32))


def negative_part(g: Any, x: Any) -> Any:
    """relu(-x), i.e. -min(x, 0)."""
    return g.op("Relu", g.op("Neg", x))


def _hardsigmoid(g: Any, x: Any) -> Any:
    relu6 = g.op("Clip", g.op("Relu", g.op("Add", x, scalar(g, 3.0))), scalar(g, 0.0), scalar(g, 6.0))
    return g.op("Mul", relu6, scalar(g, 1.0 / 6.0))


def hardsigmoid(g: Any, x: Any) -> Any:
    return _hardsigmoid(g, x)


def hardswish(g: Any, x: Any) -> Any:
    return g.op("Mul", x, _hardsigmoid(g, x))


@symbolic_helper.parse_args("v", "f", "f", "f")
def elu(g: Any, x: Any, alpha: float, scale: float, input_scale: float) -> Any:
    if alpha <= 0:
        return None
    shrunk = g.op("Mul", g.op("Neg", negative_part(g, x)), scalar(g, input_scale))
    negative = g.op("Mul", g.op("Sub", g.op("Exp", shrunk), scalar(g, 1.0)), scalar(g, alpha))
    return g.op("Mul", g.op("Add", g.op("Relu", x), negative), scalar(g, scale))


def _softplus(g: Any, x: Any, beta: float) -> Any:
    bx = g.op("Mul", x, scalar(g, beta)) if beta != 1 else x
    tail = g.op("Log", g.op("Add", scalar(g, 1.0), g.op("Exp", g.op("Neg", g.op("Abs", bx)))))
    value = g.op("Add", g.op("Relu", bx), tail)
    return g.op("Div", value, scalar(g, beta)) if beta != 1 else value


@symbolic_helper.parse_args("v", "f", "f")
def softplus(g: Any, x: Any, beta: float, _threshold: float) -> Any:
    return _softplus(g, x, beta)


def mish(g: Any, x: Any) -> Any:
    return g.op("Mul", x, g.op("Tanh", _softplus(g, x, 1.0)))


def prelu(g: Any, x: Any, weight: Any) -> Any:
    rank = symbolic_helper._get_tensor_rank(x)
    sizes = symbolic_helper._get_tensor_sizes(weight)
    if rank is None or sizes is None or None in sizes:
        return None
    if rank >= 2 and sizes != [1]:  # one slope per channel (dimension 1)
        shape = torch.tensor([sizes[0]] + [1] * (rank - 2))
        weight = g.op("Reshape", weight, g.op("Constant", value_t=shape))
    return g.op("Sub", g.op("Relu", x), g.op("Mul", weight, negative_part(g, x)))


def _rewrite(name: str, op: str, onnx_op: str, symbolic: Any) -> OnnxSymbolicRewrite:
    return OnnxSymbolicRewrite(name, op, WHY.format(onnx_op), symbolic)


HARDSIGMOID = _rewrite("hardsigmoid_primitives", "aten::hardsigmoid", "HardSigmoid", hardsigmoid)
HARDSWISH = _rewrite("hardswish_primitives", "aten::hardswish", "HardSwish", hardswish)
ELU = _rewrite("elu_primitives", "aten::elu", "Elu", elu)
SOFTPLUS = _rewrite("softplus_primitives", "aten::softplus", "Softplus", softplus)
MISH = _rewrite("mish_primitives", "aten::mish", "Softplus", mish)
PRELU = _rewrite("prelu_primitives", "aten::prelu", "PRelu", prelu)
ACTIVATIONS = (HARDSIGMOID, HARDSWISH, ELU, SOFTPLUS, MISH, PRELU)
