"""Trainable KxK convolutions as im2col + matmul, so the training step runs optimized kernels.

ExecuTorch's stock runtime has only the portable (naive, single-threaded) ``convolution`` and
``convolution_backward`` kernels; ``mm``/``bmm``/``addmm`` have optimized ones. A convolution with groups 1 is a
matmul of the weight ``[out, in * kh * kw]`` with the input's columns: for each kernel offset ``(i, j)`` the
strided slice of the (zero-padded) input that the offset reads, stacked in the weight's order to
``[n, in * kh * kw, ho * wo]``. Everything is plain slicing, ``cat`` and ``stack`` (portable kernels that only
copy) and one matmul forward, its transposes backward; the arithmetic is the convolution's.

- Padding is concatenation with zero tensors, not ``F.pad``: its backward is a negative pad, which the ExecuTorch
  runtime rejects.
- The matmul is ``pointwise_linear``'s, in the same two layouts: ``bmm`` (NCHW columns, the weight expanded over
  the batch: a copy backward keeps) or ``linear`` (the input moved to channels-last once, columns built
  channels-last, one ``mm``; the output is copied back to NCHW). ``"auto"`` uses pointwise_linear's rule per layer
  (bmm when ``out_channels <= ho * wo``: the weight copy is no larger than the columns). Measured, SmallCNN 1x28x28
  batch 8 full fine-tune: portable convolutions 414 ms per step, bmm 33 ms, linear everywhere 75 ms.
- Memory: backward keeps the columns (``kh * kw / stride^2`` times the layer's input) in place of the input a
  convolution keeps. ``max_columns_bytes`` (at the export batch size) bounds that per layer: a layer whose
  columns would exceed it stays a convolution. ``sink_temporaries`` then reorders the edge program's training
  method so that backward's big temporaries are computed just before their use (SmallCNN's planned arena:
  2.0 MiB with convolutions, 7.2 MiB rewritten, 5.8 MiB rescheduled).

Only convolutions whose weight trains are rewritten: a frozen convolution stays a convolution so that
``xnnpack_frozen`` can lower it to XNNPACK. Parameters keep their names and shapes (weight ``[out, in, kh, kw]``,
reshaped in ``forward``), so checkpoints, the manifest's trainable list and eager comparisons do not change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from exporters.techniques.pointwise_linear import (
    Layout,
    MatmulConv,
    bmm_matmul,
    check_layout,
    linear_matmul,
    output_shapes,
    pick_layout,
    replace_modules,
)
from exporters.techniques.recompute import node_nbytes

DEFAULT_MAX_COLUMNS_BYTES = 16 * 2**20


@dataclass(frozen=True)
class Im2colMatmulConfig:
    """Rewrite trainable KxK ``nn.Conv2d`` layers (groups 1, zero padding) into ``Im2colConv``.

    ``layout``: ``"bmm"``, ``"linear"`` or ``"auto"`` (per layer, as ``pointwise_linear``). ``max_columns_bytes``:
    a layer whose columns tensor (batch x in x kh x kw x ho x wo elements, at the export batch size) would be
    larger stays a convolution.
    """

    layout: Literal["auto", "bmm", "linear"] = "auto"
    max_columns_bytes: int = DEFAULT_MAX_COLUMNS_BYTES

    def __post_init__(self) -> None:
        check_layout(self.layout)
        if self.max_columns_bytes < 0:
            raise ValueError(f"max_columns_bytes must be >= 0, got {self.max_columns_bytes}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Im2colMatmulConfig:
        return cls(**data)


class Im2colConv(MatmulConv):
    """A KxK ``nn.Conv2d`` (groups 1, zero padding) computed as im2col + one matmul (``bmm`` or ``linear``)."""

    def __init__(self, conv: nn.Conv2d, layout: Layout = "bmm") -> None:
        if not is_im2col_conv(conv):
            raise ValueError(f"{conv} is not a KxK convolution with groups 1 and zero padding")
        super().__init__(conv, layout)
        self.kernel_size: tuple[int, int] = conv.kernel_size  # type: ignore[assignment]
        self.dilation: tuple[int, int] = conv.dilation  # type: ignore[assignment]
        # (left, right, top, bottom), also for padding="same" with an even kernel (more on the right/bottom).
        left, right, top, bottom = conv._reversed_padding_repeated_twice
        self.padding = ((top, bottom), (left, right))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_last = self.layout == "linear"
        if channels_last:
            x = x.permute(0, 2, 3, 1)  # one copy of the input instead of one of the columns
        dims = (1, 2) if channels_last else (2, 3)
        for dim, (before, after) in zip(dims, self.padding, strict=True):
            x = _zero_pad(x, dim, before, after)
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        ho = (x.shape[dims[0]] - dh * (kh - 1) - 1) // sh + 1
        wo = (x.shape[dims[1]] - dw * (kw - 1) - 1) // sw + 1
        windows = []
        for i in range(kh):
            for j in range(kw):
                index = [slice(None)] * x.dim()
                index[dims[0]] = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
                index[dims[1]] = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
                windows.append(x[tuple(index)])
        # Channel-major, offset-minor: the order of weight.reshape(out, in * kh * kw).
        channel = 3 if channels_last else 1
        columns = torch.stack(windows, dim=channel + 1).flatten(channel, channel + 1)
        weight = self.weight.reshape(self.out_channels, -1)
        if channels_last:
            return linear_matmul(columns, weight, self.bias)
        return bmm_matmul(columns, weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}, layout={self.layout}"
        )


def _zero_pad(x: torch.Tensor, dim: int, before: int, after: int) -> torch.Tensor:
    """``x`` with ``before``/``after`` zeros along ``dim``, by concatenation (``F.pad``'s backward fails in the
    ExecuTorch runtime)."""
    if not before and not after:
        return x
    parts = []
    for size in (before, after):
        shape = list(x.shape)
        shape[dim] = size
        parts.append(x.new_zeros(shape) if size else None)
    return torch.cat([p for p in (parts[0], x, parts[1]) if p is not None], dim=dim)


def is_im2col_conv(module: nn.Module) -> bool:
    """A plain ``nn.Conv2d`` with a kernel larger than 1x1 that ``Im2colConv`` computes exactly."""
    return (
        isinstance(module, nn.Conv2d)
        and type(module).forward is nn.Conv2d.forward  # a subclass may compute something else
        and module.kernel_size != (1, 1)
        and module.groups == 1
        and module.padding_mode == "zeros"
    )


def columns_bytes(conv: nn.Conv2d, out_shape: torch.Size, element_size: int) -> int:
    """Bytes of the columns tensor ``Im2colConv`` builds for ``conv`` with output ``out_shape`` (NCHW)."""
    kh, kw = conv.kernel_size
    n, _, ho, wo = out_shape
    return n * conv.in_channels * kh * kw * ho * wo * element_size


def rewrite_im2col_convs(
    model: nn.Module, config: Im2colMatmulConfig | None = None, sample: torch.Tensor | None = None
) -> list[str]:
    """Replace the trainable KxK convolutions of ``model`` whose columns fit ``config.max_columns_bytes``, in place;
    return the names of the replaced modules.

    ``sample``: an input batch as the model trains on it (at the export batch size); run once to size each layer.
    """
    config = config or Im2colMatmulConfig()
    candidates = {
        name: module for name, module in model.named_modules() if is_im2col_conv(module) and module.weight.requires_grad
    }
    if candidates and sample is None:
        raise ValueError("im2col_matmul needs a sample input batch to size each layer's columns; pass sample=")
    shapes = output_shapes(model, candidates, sample)
    chosen = {
        name: conv
        for name, conv in candidates.items()
        if columns_bytes(conv, shapes[name], conv.weight.element_size()) <= config.max_columns_bytes
    }
    replace_modules(
        model, {name: Im2colConv(conv, pick_layout(config.layout, conv, shapes[name])) for name, conv in chosen.items()}
    )
    return list(chosen)


def sink_temporaries(graph_module: torch.fx.GraphModule) -> int:
    """Move each node whose output is larger than its inputs to just before its first user; return how many moved.

    ExecuTorch plans a value's memory from its producer to its last user in node order, and autograd emits a
    matmul's two gradients in an order that keeps both big results alive at once (the columns' gradient is
    computed, then the columns are copied transposed for the weight's gradient). Computing such a temporary
    only when it is needed shortens its life; its smaller inputs live a little longer instead.
    """
    graph = graph_module.graph
    moved = 0
    for node in reversed(list(graph.nodes)):
        schema = getattr(node.target, "_schema", None)
        if node.op != "call_function" or schema is None or schema.is_mutable or not node.users:
            continue
        if node_nbytes(node) <= sum(node_nbytes(arg) for arg in node.all_input_nodes):
            continue
        first = node.next
        while first not in node.users:
            first = first.next
        if first is not node.next:
            first.prepend(node)
            moved += 1
    graph.lint()
    graph_module.recompile()
    return moved
