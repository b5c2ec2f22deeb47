"""The ExecuTorch export as ordered lists of named steps whose ordering constraints are checked, not commented.

Two lists live here:

- ``EDGE_PASSES``: ExecuTorch's own ``to_edge`` passes (``executorch.exir.program._program._generate_edge_program``,
  ExecuTorch 1.5.1), each with a predicate that says whether the pass could change a given graph. Most of them are
  ``ExportPass`` subclasses: each run re-traces the whole graph through fake tensors (about 1 ms per node: 0.8-1.2 s
  per pass on the MobileNetV2 x1.0 joint graph), even when no node is one it rewrites. A pass whose predicate is
  false is skipped; the predicates replay the pass's own test per node (same schema walk, same op sets), so a
  skipped pass is one that would have rebuilt the same graph. ``generate_edge_program`` refuses to skip anything if
  ExecuTorch's list is not the one these predicates were written for (``stock_edge_passes_known``).
- ``Pipeline``: memwall's steps on the edge program (recomputation, sinking temporaries, the fused optimizer update),
  each declaring which steps must run before it; a list that breaks a constraint is refused when it is built.

The programs are the stock pipeline's, byte for byte (tests/test_export_time.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from executorch.exir import EdgeCompileConfig, EdgeProgramManager
from executorch.exir.dialects.edge._ops import EdgeOpOverload
from executorch.exir.pass_base import map_args
from executorch.exir.passes import MemoryFormatOpsPass
from executorch.exir.passes.legalize_portable_dim_order_pass import LegalizePortableDimOrderPass
from executorch.exir.passes.normalize_transpose_pass import NormalizeTransposePass
from executorch.exir.passes.remove_graph_asserts_pass import RemoveNonCoreAtenOpGraphAssertsPass
from executorch.exir.passes.remove_mixed_type_operators import RemoveMixedTypeOperators
from executorch.exir.passes.replace_aten_with_edge_pass import OpReplacePass
from executorch.exir.passes.replace_broken_ops_with_function_ops_pass import ReplaceBrokenOpsWithFunctionalOpsPass
from executorch.exir.passes.scalar_to_tensor_pass import ScalarToTensorPass
from executorch.exir.passes.sym_to_tensor_pass import SymToTensorPass
from executorch.exir.program import _program
from executorch.exir.verification.verifier import EXIREdgeDialectVerifier
from torch._export.passes import ReplaceViewOpsWithViewCopyOpsPass
from torch._prims_common import ELEMENTWISE_TYPE_PROMOTION_KIND, elementwise_dtypes
from torch.export import ExportedProgram
from torch.fx import GraphModule, Node

GraphPredicate = Callable[[GraphModule], bool]


def _calls(gm: GraphModule) -> Iterable[Node]:
    return (node for node in gm.graph.nodes if node.op == "call_function")


def _plain(gm: GraphModule) -> bool:
    """Every call is an ATen or edge operator overload or a Python operator (``getitem``): no higher-order op or
    delegate, whose subgraphs an ``ExportPass`` would also walk."""
    return all(
        isinstance(node.target, (torch._ops.OpOverload, EdgeOpOverload)) or node.target.__module__ == "_operator"
        for node in _calls(gm)
    )


def _value(gm: GraphModule, arg: Any) -> Any:
    """What an ``ExportPass`` sees for ``arg``: a node's (fake) value, a constant's tensor, a literal as it is."""
    if not isinstance(arg, Node):
        return arg
    if "val" in arg.meta:
        return arg.meta["val"]
    return getattr(gm, arg.target) if arg.op == "get_attr" else None


def _has_symbols(gm: GraphModule) -> bool:
    """Any symbolic size or scalar (SymToTensorPass turns those that feed tensor arguments into tensors)."""
    symbolic = (torch.SymInt, torch.SymFloat, torch.SymBool)
    return any(
        isinstance(leaf, symbolic)
        for node in gm.graph.nodes
        for leaf in torch.utils._pytree.tree_leaves(node.meta.get("val"))
    )


def _has_scalar_for_tensor(gm: GraphModule) -> bool:
    """ScalarToTensorPass's test: a Python scalar passed where the schema takes a tensor."""
    found = False

    def check(value: Any, arg: torch.Argument) -> Any:
        nonlocal found
        found |= isinstance(value, (float, int, bool)) and isinstance(arg.type, torch.TensorType)
        return value

    for node in _calls(gm):
        if isinstance(node.target, torch._ops.OpOverload):
            map_args(node.target, check, tuple(node.args), dict(node.kwargs))
    return found


# RemoveMixedTypeOperators' allow-list, as in its source.
_PROMOTION = {
    torch.ops.aten.add.Tensor: ELEMENTWISE_TYPE_PROMOTION_KIND.DEFAULT,
    torch.ops.aten.mul.Tensor: ELEMENTWISE_TYPE_PROMOTION_KIND.DEFAULT,
    torch.ops.aten.sub.Tensor: ELEMENTWISE_TYPE_PROMOTION_KIND.DEFAULT,
    torch.ops.aten.div.Tensor: ELEMENTWISE_TYPE_PROMOTION_KIND.INT_TO_FLOAT,
    torch.ops.aten.div.Tensor_mode: ELEMENTWISE_TYPE_PROMOTION_KIND.DEFAULT,
    torch.ops.aten.minimum.default: ELEMENTWISE_TYPE_PROMOTION_KIND.DEFAULT,
}


def _has_mixed_types(gm: GraphModule) -> bool:
    """RemoveMixedTypeOperators' test: a tensor argument of an allow-listed op not in the promoted dtype. Anything it
    cannot read (a value without metadata, a symbolic scalar) counts as mixed."""
    for node in _calls(gm):
        kind = _PROMOTION.get(node.target)
        if kind is None or len(node.args) <= 1:
            continue
        if node.target == torch.ops.aten.div.Tensor_mode and node.kwargs.get("rounding_mode") is None:
            kind = ELEMENTWISE_TYPE_PROMOTION_KIND.INT_TO_FLOAT
        values = [_value(gm, arg) for arg in node.args]
        if not all(isinstance(v, (torch.Tensor, float, int, bool)) for v in values):
            return True
        promoted = elementwise_dtypes(*values, type_promotion_kind=kind)[1]
        mixed = False

        def check(value: Any, arg: torch.Argument, promoted: torch.dtype = promoted) -> Any:
            nonlocal mixed
            if isinstance(arg.type, torch.TensorType):
                seen = _value(gm, value)
                mixed |= not (isinstance(seen, torch.Tensor) and seen.dtype == promoted)
            return value

        map_args(node.target, check, tuple(node.args), dict(node.kwargs))
        if mixed:
            return True
    return False


def _non_contiguous_input(targets: set[Any]) -> GraphPredicate:
    """LegalizePortableDimOrderPass's test: one of ``targets`` whose first input is not in the default dim order."""

    def check(gm: GraphModule) -> bool:
        for node in _calls(gm):
            if node.target in targets and node.args:
                value = _value(gm, node.args[0])
                if isinstance(value, torch.Tensor) and tuple(value.dim_order()) != tuple(range(value.dim())):
                    return True
        return False

    return check


def _calls_any(test: Callable[[Any], bool]) -> GraphPredicate:
    return lambda gm: any(test(node.target) for node in _calls(gm))


def _always(gm: GraphModule) -> bool:
    return True


# ``to_edge``'s passes (ExecuTorch 1.5.1) that re-trace the graph, by class: could the pass change this graph?
# Measured no-ops on every memwall reference graph (MLP, SmallCNN, MobileNetV2, train and predict):
# NormalizeTransposePass, ReplaceBrokenOpsWithFunctionalOpsPass, SymToTensorPass, RemoveMixedTypeOperators.
# ScalarToTensorPass changes MobileNetV2 (frozen BatchNorm's ``add(var, 1e-05)``), MemoryFormatOpsPass the loss's
# ``_to_copy`` (it runs fused with OpReplacePass). Passes not listed here are cheap graph walks and always run.
MAY_CHANGE: dict[type, GraphPredicate] = {
    ReplaceViewOpsWithViewCopyOpsPass: _always,
    NormalizeTransposePass: _calls_any(lambda target: target == torch.ops.aten.t.default),
    ReplaceBrokenOpsWithFunctionalOpsPass: _calls_any(
        lambda target: isinstance(target, torch._ops.OpOverload) and target.is_view
    ),
    ScalarToTensorPass: _has_scalar_for_tensor,
    SymToTensorPass: _has_symbols,
    RemoveMixedTypeOperators: _has_mixed_types,
    OpReplacePass: _always,
}
LEGALIZE_DIM_ORDER = _non_contiguous_input(LegalizePortableDimOrderPass._target_ops)

# ``_generate_edge_program``'s pass classes in ExecuTorch 1.5.1, in order; the predicates above are written for them.
STOCK_EDGE_PASSES = (
    "RemoveNonCoreAtenOpGraphAssertsPass",
    "ReplaceViewOpsWithViewCopyOpsPass",
    "ReplaceSymSizeOpPass",
    "NormalizeTransposePass",
    "ReplaceBrokenOpsWithFunctionalOpsPass",
    "ScalarToTensorPass",
    "SymToTensorPass",
    "RemoveNoopPass",
    "PruneEmptyTensorsPass",
    "RemoveToCopyPass",
    "FoldRedundantDequantizeQuantizePass",
    "RemoveMixedTypeOperators",
    "OpReplacePass",
    "MemoryFormatOpsPass",
)


def edge_passes(config: EdgeCompileConfig) -> list[Callable[[GraphModule], Any]]:
    """The passes ``_generate_edge_program`` runs on the graph, in its order."""
    pre, _ = _program._get_aten_to_edge_passes(config)
    passes = [RemoveNonCoreAtenOpGraphAssertsPass(), ReplaceViewOpsWithViewCopyOpsPass(), *pre, OpReplacePass()]
    return passes + ([] if config._skip_dim_order else [MemoryFormatOpsPass()])


def _unwrapped(edge_pass: Callable[[GraphModule], Any]) -> Any:
    """The pass object inside ExecuTorch's pass-manager wrapper (``pass_result_wrapper`` keeps it as
    ``__wrapped__``)."""
    return getattr(edge_pass, "__wrapped__", edge_pass)


def stock_edge_passes_known(config: EdgeCompileConfig) -> bool:
    """Whether ExecuTorch's pass list is the one ``MAY_CHANGE`` was written for (else nothing is skipped)."""
    names = tuple(type(_unwrapped(p)).__name__ for p in edge_passes(config))
    return names == (STOCK_EDGE_PASSES[:-1] if config._skip_dim_order else STOCK_EDGE_PASSES)


class OpReplaceThenMemoryFormat(OpReplacePass, MemoryFormatOpsPass):
    """OpReplacePass and MemoryFormatOpsPass, ``to_edge``'s last two passes, in one re-trace: both rewrite one
    operator at a time from its own arguments, so chaining their ``call_operator`` (the class order: ATen op to
    edge op, then memory-format op to dim-order op) makes the graph the two passes make one after the other.
    Saves MemoryFormatOpsPass's re-trace: 1.4 s on the MobileNetV2 x1.0 joint graph."""


def run_edge_passes(gm: GraphModule, config: EdgeCompileConfig, skipped: list[str] | None = None) -> GraphModule:
    """``edge_passes(config)`` on ``gm``, skipping each re-tracing pass that cannot change the graph it gets, and
    the last two as ``OpReplaceThenMemoryFormat``. ``skipped``: the names of the passes left out are added."""
    passes = edge_passes(config)
    known = stock_edge_passes_known(config) and _plain(gm)
    if known and not config._skip_dim_order:
        passes[-2:] = [OpReplaceThenMemoryFormat()]
    for edge_pass in passes:
        if known and not MAY_CHANGE.get(type(_unwrapped(edge_pass)), _always)(gm):
            if skipped is not None:
                skipped.append(type(_unwrapped(edge_pass)).__name__)
            continue
        result = edge_pass(gm)
        assert result is not None
        gm = result.graph_module
    return gm


def generate_edge_program(
    config: EdgeCompileConfig, program: ExportedProgram, preserve_ops: Sequence[torch._ops.OpOverload] = ()
) -> ExportedProgram:
    """``executorch.exir.program._program._generate_edge_program`` (ExecuTorch 1.5.1, without the core-ATen
    exception list memwall does not use), its passes run by ``run_edge_passes``."""
    program = _program.remove_unused_parameters_pass(program)
    gm = run_edge_passes(program.graph_module, config)
    edge_program = ExportedProgram(
        root=gm,
        graph=gm.graph,
        graph_signature=_program._get_updated_graph_signature(program.graph_signature, gm),
        state_dict=program.state_dict,
        range_constraints=program.range_constraints,
        module_call_graph=program.module_call_graph,
        example_inputs=program.example_inputs,
        constants=program.constants,
        verifiers=[EXIREdgeDialectVerifier(edge_compile_config=config, class_only=True, preserve_ops=preserve_ops)],
    )
    edge_program = _program.lift_constant_tensor_pass(edge_program)
    edge_program = _program.convert_constant_dim_order_pass.convert_constant_dim_order_pass(edge_program)
    _, post = _program._get_aten_to_edge_passes(config)
    return _program._transform(edge_program, *post)


def skip_dim_order_legalization(edge: EdgeProgramManager) -> EdgeProgramManager:
    """``edge`` set to skip ``to_executorch``'s LegalizePortableDimOrderPass (a re-trace, 1.2 s per MobileNetV2 x1.0
    joint graph) when no method holds an op it would legalize: the compile config's ``_skip_dim_order`` only decides
    whether that pass is in ``to_executorch``'s list (``edge_to_executorch_passes``); the dim-order ops were made by
    ``to_edge`` already. Call it after the last edit of the edge graphs."""
    graphs = [edge.exported_program(name).graph_module for name in edge.methods]
    if edge.compile_config._skip_dim_order or any(not _plain(gm) or LEGALIZE_DIM_ORDER(gm) for gm in graphs):
        return edge
    config = EdgeCompileConfig(**{**vars(edge.compile_config), "_skip_dim_order": True})
    edge.compile_config = config
    return edge


# --- memwall's steps on the edge program ------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One named step on the edge program. ``after``: steps that must come before this one when both are in a
    pipeline, each with the reason (shown when a pipeline breaks it)."""

    name: str
    run: Callable[[EdgeProgramManager], EdgeProgramManager]
    after: dict[str, str] = field(default_factory=dict)


class Pipeline:
    """Steps run in order; built only if every step comes after the steps it declares (``Step.after``)."""

    def __init__(self, steps: Sequence[Step]) -> None:
        position = {step.name: i for i, step in enumerate(steps)}
        if len(position) != len(steps):
            raise ValueError(f"pipeline steps must have distinct names: {[s.name for s in steps]}")
        for i, step in enumerate(steps):
            for before, why in step.after.items():
                if position.get(before, -1) > i:
                    raise ValueError(f"pipeline step {step.name!r} must run after {before!r}: {why}")
        self.steps = tuple(steps)

    @property
    def names(self) -> list[str]:
        return [step.name for step in self.steps]

    def __call__(self, edge: EdgeProgramManager) -> EdgeProgramManager:
        for step in self.steps:
            edge = step.run(edge)
        return edge
