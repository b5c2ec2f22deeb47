"""Training rewrites for ONNX Runtime: torch.onnx symbolics that export an op as ops ORT can differentiate.

Each rewrite is an ``OnnxSymbolicRewrite`` (in its own file): the ATen op, the symbolic that writes it as
differentiable ONNX ops, and torch.onnx's own symbolic to fall back to where the rewrite does not apply (the
symbolic returns ``None`` then). ``onnx_training_symbolics(opset)`` registers them for one export and yields the
manifest's ``techniques`` entries of the rewrites that fired: ``{"name", "config": {"nodes", "why"}}``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class OnnxSymbolicRewrite:
    name: str
    op: str  # "aten::group_norm"
    why: str  # what ORT lacks, as measured
    symbolic: Callable[..., Any]  # (g, *args) -> the ONNX value, or None where the rewrite does not apply
    fallback: Callable[..., Any] | None = None  # torch.onnx's own symbolic for the op (where symbolic can say None)


def all_rewrites() -> tuple[OnnxSymbolicRewrite, ...]:
    from exporters.techniques.onnx_activations import ACTIVATIONS
    from exporters.techniques.onnx_avgpool import ADAPTIVE_AVGPOOL_CONV, AVGPOOL_CONV
    from exporters.techniques.onnx_batchnorm import BATCH_NORM_EVAL
    from exporters.techniques.onnx_normalization import GROUP_NORM, INSTANCE_NORM
    from exporters.techniques.onnx_upsample import UPSAMPLE_NEAREST

    return (
        GROUP_NORM,
        INSTANCE_NORM,
        BATCH_NORM_EVAL,
        AVGPOOL_CONV,
        ADAPTIVE_AVGPOOL_CONV,
        UPSAMPLE_NEAREST,
        *ACTIVATIONS,
    )


@contextlib.contextmanager
def onnx_training_symbolics(
    opset: int, rewrites: Sequence[OnnxSymbolicRewrite] | None = None
) -> Iterator[list[dict[str, Any]]]:
    """Register the rewrites' symbolics for one export; yields the techniques entries of those that fired (filled
    when the block ends)."""
    rewrites = all_rewrites() if rewrites is None else rewrites
    fired: dict[str, int] = {}

    def dispatch(rewrite: OnnxSymbolicRewrite) -> Callable[..., Any]:
        def symbolic(g: Any, *args: Any) -> Any:
            value = rewrite.symbolic(g, *args)
            if value is None:
                if rewrite.fallback is None:
                    raise ValueError(f"{rewrite.op} with these arguments has no ONNX Runtime training export")
                return rewrite.fallback(g, *args)
            fired[rewrite.name] = fired.get(rewrite.name, 0) + 1
            return value

        return symbolic

    for rewrite in rewrites:
        torch.onnx.register_custom_op_symbolic(rewrite.op, dispatch(rewrite), opset)
    applied: list[dict[str, Any]] = []
    try:
        yield applied
    finally:
        for rewrite in rewrites:
            torch.onnx.unregister_custom_op_symbolic(rewrite.op, opset)
        applied += [
            {"name": r.name, "config": {"nodes": fired[r.name], "why": r.why}} for r in rewrites if r.name in fired
        ]


def constant(g: Any, value: Any) -> Any:
    return g.op("Constant", value_t=torch.tensor(value))
