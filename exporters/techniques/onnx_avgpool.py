"""Average pooling for ONNX Runtime training, as a depthwise convolution with constant weights.

ONNX Runtime 1.19.2's ``AveragePoolGrad`` kills the process with SIGFPE at the first training step (measured:
``nn.AvgPool2d(2)`` and ``AvgPool2d(3, 1, 1)`` after a trainable convolution, python -m sdk_tools.coverage), so a
bundle with average pooling before a trainable layer could not train at all. Average pooling over a zero-padded
input (``count_include_pad``, PyTorch's default) is a depthwise ``Conv`` whose C x 1 x kh x kw weight is a constant
``1 / (kh * kw)`` (or ``1 / divisor_override``); ORT differentiates ``Conv`` (``ConvGrad``, as for depthwise
layers). Adaptive average pooling whose output divides its input is the same with kernel = stride = input /
output (a 1x1 output exports as ``GlobalAveragePool``, which trains: left alone). Not rewritten: ``ceil_mode``,
padding with ``count_include_pad=False``, uneven adaptive pooling.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.onnx import symbolic_helper
from torch.onnx import symbolic_opset9 as opset9
from torch.onnx import symbolic_opset10 as opset10

from exporters.techniques.onnx_symbolics import OnnxSymbolicRewrite

WHY = "ONNX Runtime 1.19.2's AveragePoolGrad crashes the process (SIGFPE) at the first step"


def depthwise_mean(g: Any, x: Any, kernel: list[int], stride: list[int], padding: list[int], scale: float) -> Any:
    channels = symbolic_helper._get_tensor_dim_size(x, 1)
    if channels is None or symbolic_helper._get_tensor_rank(x) != 4:
        return None
    weight = g.op("Constant", value_t=torch.full((channels, 1, *kernel), scale, dtype=torch.float32))
    return g.op("Conv", x, weight, group_i=channels, kernel_shape_i=kernel, strides_i=stride, pads_i=padding * 2)


def _pair(values: list[int] | int) -> list[int]:
    values = [values] if isinstance(values, int) else list(values)
    return values * (2 // len(values))


@symbolic_helper.parse_args("v", "is", "is", "is", "i", "i", "none")
def avg_pool2d(
    g: Any,
    x: Any,
    kernel: list[int],
    stride: list[int],
    padding: list[int],
    ceil_mode: int,
    count_pad: int,
    divisor: Any,
) -> Any:
    kernel, padding = _pair(kernel), _pair(padding)
    divisor = None if symbolic_helper._is_none(divisor) else symbolic_helper._maybe_get_const(divisor, "i")
    if ceil_mode or (not count_pad and any(padding)) or not isinstance(divisor, int | type(None)):
        return None
    scale = 1.0 / (divisor or kernel[0] * kernel[1])
    return depthwise_mean(g, x, kernel, _pair(stride or kernel), padding, scale)


@symbolic_helper.parse_args("v", "is")
def adaptive_avg_pool2d(g: Any, x: Any, output_size: list[int]) -> Any:
    sizes = symbolic_helper._get_tensor_sizes(x)
    output_size = _pair(output_size)
    if output_size == [1, 1] or sizes is None or len(sizes) != 4 or None in sizes[2:]:
        return None  # GlobalAveragePool (trains in ORT), or unknown spatial size
    if sizes[2] % output_size[0] or sizes[3] % output_size[1]:
        return None
    kernel = [sizes[2] // output_size[0], sizes[3] // output_size[1]]
    return depthwise_mean(g, x, kernel, kernel, [0, 0], 1.0 / (kernel[0] * kernel[1]))


AVGPOOL_CONV = OnnxSymbolicRewrite(
    "avgpool_conv", "aten::avg_pool2d", WHY, avg_pool2d, opset10._avg_pool("avg_pool2d", 2)
)
ADAPTIVE_AVGPOOL_CONV = OnnxSymbolicRewrite(
    "adaptive_avgpool_conv", "aten::adaptive_avg_pool2d", WHY, adaptive_avg_pool2d, opset9.adaptive_avg_pool2d
)
