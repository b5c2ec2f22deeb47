"""Training rewrites on ExecuTorch's joint graph: backward ops the runtime computes wrong or has no kernel for,
re-expressed with ops it runs correctly.

Each rewrite is a ``JointGraphRewrite`` (its own file) that names the ATen backward op it replaces, when it
applies to a node (from the node's static arguments) and a decomposition into ops with portable kernels.
``rewrite_joint_graph`` runs the applicable ones on the joint program right after ``_export_forward_backward``
(before ``to_edge``, which traces the same decompositions through its own table), and returns the manifest's
``techniques`` entries: ``{"name": rewrite, "config": {"nodes": n, "why": ...}}``.

Nodes a rewrite cannot express exactly (e.g. average pooling with ``ceil_mode``) stay as they are; the runtime
then fails or refuses them as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch._ops import OpOverload
from torch.export import ExportedProgram
from torch.fx import Node


@dataclass(frozen=True)
class JointGraphRewrite:
    """``op``'s nodes for which ``applies(node)`` holds become ``decompose(*node.args)``.

    ``decompose`` sees every node of ``op`` (a decomposition table cannot choose per node) and returns
    ``NotImplemented`` for those ``applies`` rejects: they keep the runtime's own kernel.
    """

    name: str
    op: OpOverload
    why: str  # the runtime's defect, with the measured figure
    applies: Callable[[Node], bool]
    decompose: Callable[..., Any]


def rewrite_joint_graph(
    joint: ExportedProgram, rewrites: Sequence[JointGraphRewrite] | None = None
) -> tuple[ExportedProgram, list[dict[str, Any]]]:
    """``joint`` with every applicable rewrite done (default: all of ExecuTorch's), and the techniques applied."""
    if rewrites is None:
        from exporters.techniques.avgpool_backward import ADAPTIVE_AVGPOOL_BACKWARD, AVGPOOL_BACKWARD
        from exporters.techniques.conv_backward import CONV_BACKWARD
        from exporters.techniques.empty_permuted import EMPTY_PERMUTED
        from exporters.techniques.maxpool_backward import (
            ADAPTIVE_MAXPOOL,
            ADAPTIVE_MAXPOOL_BACKWARD,
            MAXPOOL_BACKWARD,
        )

        rewrites = (
            MAXPOOL_BACKWARD,
            ADAPTIVE_MAXPOOL,
            ADAPTIVE_MAXPOOL_BACKWARD,
            AVGPOOL_BACKWARD,
            ADAPTIVE_AVGPOOL_BACKWARD,
            EMPTY_PERMUTED,
            CONV_BACKWARD,
        )
    counts: dict[str, int] = {}
    table: dict[OpOverload, Callable[..., Any]] = {}
    for rewrite in rewrites:
        nodes = [n for n in joint.graph.nodes if n.op == "call_function" and n.target is rewrite.op]
        applicable = sum(rewrite.applies(n) for n in nodes)
        if applicable:
            counts[rewrite.name] = applicable
            table[rewrite.op] = rewrite.decompose
    if not table:
        return joint, []
    applied = [
        {"name": r.name, "config": {"nodes": counts[r.name], "why": r.why}} for r in rewrites if r.name in counts
    ]
    return joint.run_decompositions(table), applied


def static_shape(node: Any) -> tuple[int, ...]:
    """The static shape of an fx node's value (the joint graph of a fixed batch has only static shapes)."""
    return tuple(int(d) for d in node.meta["val"].shape)
