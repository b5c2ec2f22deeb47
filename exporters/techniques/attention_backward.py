"""Scaled dot-product attention's backward as matmuls and a softmax, for ExecuTorch.

``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` export through
``_scaled_dot_product_flash_attention_for_cpu``, whose backward has no out variant in ExecuTorch 1.5.1: the export
failed ("Missing out variants: aten::_scaled_dot_product_flash_attention_for_cpu_backward"). Without dropout, mask
or causal masking (memwall exports in eval mode), attention is out = p v with p = softmax(q k^T * scale),
and its backward, with p recomputed from q and k (the joint graph hands the backward the forward's values in the
flash kernel's own layout, which the rewrite does not rely on):

    dv = p^T dout,   dp = dout v^T,   ds = p * (dp - rowsum(dp * p)),   dq = ds k * scale,   dk = ds^T q * scale

all ``bmm``, ``amax``, ``exp``, ``log``, ``sum`` and elementwise ops, which have portable kernels.
"""

from __future__ import annotations

import math

import torch
from torch.fx import Node

from exporters.techniques.joint_graph_rewrites import JointGraphRewrite

aten = torch.ops.aten


def _plain_backward(node: Node) -> bool:
    return _plain_args(tuple(node.args[6:]), dict(node.kwargs))


def _plain_args(args: tuple[object, ...], kwargs: dict[str, object]) -> bool:
    dropout = args[0] if args else kwargs.get("dropout_p", 0.0)
    causal = args[1] if len(args) > 1 else kwargs.get("is_causal", False)
    return not dropout and not causal and kwargs.get("attn_mask") is None


def _bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [..., n, k] @ b [..., k, m] as one bmm over the leading dimensions."""
    lead = a.shape[:-2]
    out = torch.bmm(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]))
    return out.reshape(*lead, *out.shape[-2:])


def _probabilities(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    s = _bmm(q, k.transpose(-2, -1)) * scale
    top = s.amax(-1, keepdim=True)
    return torch.exp(s - (torch.log(torch.exp(s - top).sum(-1, keepdim=True)) + top))


def attention_backward(
    grad: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    _out: torch.Tensor,
    _lse: torch.Tensor,
    *args: object,
    **kwargs: object,
) -> object:
    if not _plain_args(args, kwargs):
        return NotImplemented
    scale = float(kwargs.get("scale") or 1.0 / math.sqrt(q.shape[-1]))  # type: ignore[arg-type]
    p = _probabilities(q, k, scale)
    grad_v = _bmm(p.transpose(-2, -1), grad)
    grad_p = _bmm(grad, v.transpose(-2, -1))
    grad_s = p * (grad_p - (grad_p * p).sum(-1, keepdim=True))
    return _bmm(grad_s, k) * scale, _bmm(grad_s.transpose(-2, -1), q) * scale, grad_v


ATTENTION_BACKWARD = JointGraphRewrite(
    "attention_backward_as_matmuls",
    aten._scaled_dot_product_flash_attention_for_cpu_backward.default,
    "ExecuTorch 1.5.1 has no out variant of the flash attention's backward (the export failed)",
    _plain_backward,
    attention_backward,
)
