"""The frozen part of a training program lowered to XNNPACK, inside the joint forward/backward graph.

XNNPACK runs convolutions, matmuls and elementwise ops with packed, multi-threaded kernels, but it copies
every weight it sees into its delegate at export time and packs it at load: a trainable weight lowered to
XNNPACK would keep its exported value while the app updates the runtime's copy. ``FrozenXnnpackPartitioner``
therefore tags only nodes that read no trainable tensor: no parameter with a gradient output and no buffer
the program mutates (an in-graph optimizer's weights and state). Values *computed* from trainable
parameters are fine: they reach a delegate as runtime inputs on every call. Everything that touches a
trainable tensor stays on the portable/optimized kernels (``pointwise_linear`` moves trainable 1x1
convolutions onto optimized matmuls), so gradients are the same computation as without XNNPACK.

Backward: where a frozen convolution lies between the loss and a trainable parameter (bias-only training),
autograd emits ``convolution_backward`` for its input gradient, which XNNPACK cannot run. With
``backward_convolutions`` that node becomes the equivalent transposed convolution of the output gradient
with the same frozen weight (``conv_transpose2d(dy, W)`` is the input gradient of ``conv2d(x, W)``), which
XNNPACK runs. Weight gradients never go to XNNPACK: they need the trainable path's runtime tensors as
"weights", and XNNPACK convolutions take only static ones. Elementwise backward ops (ReLU6's masks
``le``/``ge``/``where``) and gradient sums (``sum``) have no XNNPACK kernel and stay portable.

Measured (MobileNetV2 x1.0, 96x96, batch 8): see ``benchmarks/RESULTS-speed.md``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from executorch.exir import EdgeCompileConfig, EdgeProgramManager, to_edge_transform_and_lower
from executorch.exir.backend.canonical_partitioners.config_partitioner import (
    DSJ,
    format_target_name,
    is_constant_data,
)
from executorch.exir.delegate import executorch_call_delegate
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind
from torch.fx import Node
from torch.fx.node import map_arg

from exporters.techniques.speed_routes import XnnpackFrozenConfig

_MUTATIONS = (OutputKind.BUFFER_MUTATION, OutputKind.PARAMETER_MUTATION)


# XNNPACK's memory per lowered op beyond the workspace (its operator objects, with the weights they pack), fitted by
# benchmarks/executorch_overhead.py over bundles with delegates (results in benchmarks/RESULTS-executorch-overhead.md).
XNNPACK_PER_DELEGATED_OP_BYTES = 4_298


def trainable_placeholders(program: ExportedProgram) -> set[str]:
    """Names of the graph inputs whose value changes between calls: trained parameters, mutated buffers."""
    signature = program.graph_signature
    changing = {
        spec.target
        for spec in signature.output_specs
        if spec.kind == OutputKind.GRADIENT_TO_PARAMETER or spec.kind in _MUTATIONS
    }
    return {
        spec.arg.name
        for spec in signature.input_specs
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER) and spec.target in changing
    }


def _reads(node: Node, names: set[str]) -> bool:
    if node.op == "placeholder":
        return node.name in names
    found = False

    def visit(arg: Node) -> Node:
        nonlocal found
        found = found or (arg.op == "placeholder" and arg.name in names)
        return arg

    map_arg((node.args, node.kwargs), visit)
    return found


class FrozenXnnpackPartitioner(XnnpackPartitioner):
    """``XnnpackPartitioner`` that leaves every node reading a trainable tensor to the portable kernels.

    A config's match is a node plus the nodes it needs with it (a convolution and its weight): the match is
    dropped whole when any of them is or reads a trainable tensor, so no XNNPACK op loses its weight.
    """

    def get_matched_nodes_from_configs(self, ep: ExportedProgram) -> list[list[Node]]:
        trainable = trainable_placeholders(ep)
        groups: list[list[Node]] = []
        for node in ep.graph_module.graph.nodes:
            if node.op != "call_function":
                continue
            config = self.target_partitioner_configs.get(format_target_name(node.target.__name__))
            if config is None or not config.check_constraints(node, ep):
                continue
            match = config.get_partition(node, ep)
            if match and not any(_reads(n, trainable) for n in match):
                groups.append(match)
        return _merge_overlapping(groups, ep)

    def ops_to_not_decompose(
        self, ep: ExportedProgram
    ) -> tuple[list[torch._ops.OpOverload], Callable[[Node], bool] | None]:
        ops, keep = super().ops_to_not_decompose(ep)
        trainable = trainable_placeholders(ep)

        def keep_frozen(node: Node) -> bool:
            # An op kept whole for XNNPACK but then not delegated would need a portable kernel it may lack.
            return (keep is None or keep(node)) and not _reads(node, trainable)

        return ops, keep_frozen


def _merge_overlapping(groups: list[list[Node]], ep: ExportedProgram) -> list[list[Node]]:
    """Union matches that share a node (as the base partitioner does); constants may be shared across them."""
    dsj = DSJ()
    for match in groups:
        nodes = [n for n in match if not (is_constant_data(ep, n) and dsj.contains(n))]
        if nodes:
            dsj.find(nodes[0])
            for n in nodes[1:]:
                dsj.union(nodes[0], n)
    return dsj.gen_groups()


def frozen_constants(program: ExportedProgram) -> set[str]:
    """Names of the graph inputs XNNPACK may bake in: parameters, buffers and constants that never change."""
    changing = trainable_placeholders(program)
    constant = (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)
    return {
        spec.arg.name
        for spec in program.graph_signature.input_specs
        if spec.kind in constant and spec.arg.name not in changing
    }


def split_convolution_biases(program: ExportedProgram) -> int:
    """Convolutions with a frozen weight and a changing bias -> bias-free convolution + add (in place).

    XNNPACK takes a convolution with its weight and bias as constants or not at all; with the add outside,
    the convolution of a bias-only plan (or of predict, whose trained bias is an input) is lowered. The
    bias gradient is unaffected: backward computes it from the output gradient. Returns how many nodes
    were split.
    """
    graph = program.graph_module.graph
    frozen = frozen_constants(program)
    split = 0
    for node in list(graph.nodes):
        if node.target is not torch.ops.aten.convolution.default:
            continue
        x, weight, bias, *rest = node.args
        if bias is None or weight.op != "placeholder" or weight.name not in frozen or bias.name in frozen:
            continue
        out = node.meta["val"]
        shape = [1, -1] + [1] * (out.dim() - 2)
        with graph.inserting_after(node):
            conv = graph.call_function(torch.ops.aten.convolution.default, (x, weight, None, *rest))
        with graph.inserting_after(conv):
            column = graph.call_function(torch.ops.aten.view.default, (bias, shape))
        with graph.inserting_after(column):
            added = graph.call_function(torch.ops.aten.add.Tensor, (conv, column))
        conv.meta = {**node.meta}
        column.meta = {**bias.meta, "val": bias.meta["val"].view(shape)}
        added.meta = {**node.meta}
        node.replace_all_uses_with(added)
        graph.erase_node(node)
        split += 1
    if split:
        graph.lint()
        program.graph_module.recompile()
    return split


def rewrite_backward_convolutions(program: ExportedProgram) -> int:
    """``convolution_backward`` of frozen weights -> transposed convolution and sum (in place).

    The input gradient becomes a transposed convolution, a bias gradient a sum of the output gradient.
    Returns how many nodes were rewritten.
    """
    graph = program.graph_module.graph
    trainable = trainable_placeholders(program)
    rewritten = 0
    for node in list(graph.nodes):
        if node.target is not torch.ops.aten.convolution_backward.default:
            continue
        grad_out, x, weight, _, stride, padding, dilation, transposed, _, groups, mask = node.args
        if transposed or mask[1] or weight.op != "placeholder" or weight.name in trainable:
            continue
        results = {user.args[1]: user for user in node.users if user.target is operator.getitem}
        in_size = x.meta["val"].shape[2:]
        out_size = grad_out.meta["val"].shape[2:]
        kernel = weight.meta["val"].shape[2:]
        # conv_transpose2d's output is (out - 1) * s - 2p + d * (k - 1) + 1 + output_padding: pick the
        # output_padding that restores the input size (rows the forward's stride skipped get zero gradient).
        output_padding = [
            i - ((o - 1) * s - 2 * p + d * (k - 1) + 1)
            for i, o, s, p, d, k in zip(in_size, out_size, stride, padding, dilation, kernel, strict=True)
        ]
        with graph.inserting_before(node):
            if 0 in results:
                grad_in = graph.call_function(
                    torch.ops.aten.convolution.default,
                    (grad_out, weight, None, stride, padding, dilation, True, output_padding, groups),
                )
                grad_in.meta = {**results[0].meta}
                results[0].replace_all_uses_with(grad_in)
            if mask[2] and 2 in results:
                dims = [0, *range(2, grad_out.meta["val"].dim())]
                grad_bias = graph.call_function(torch.ops.aten.sum.dim_IntList, (grad_out, dims))
                grad_bias.meta = {**results[2].meta}
                results[2].replace_all_uses_with(grad_bias)
        for user in results.values():
            graph.erase_node(user)
        graph.erase_node(node)
        rewritten += 1
    if rewritten:
        graph.lint()
        program.graph_module.recompile()
    return rewritten


def _delegates(edge: EdgeProgramManager, method: str) -> list[ExportedProgram]:
    """The graphs lowered into each XNNPACK region of ``method``."""
    program = edge.exported_program(method)
    return [
        getattr(program.graph_module, node.args[0].target).original_module
        for node in program.graph.nodes
        if node.op == "call_function" and node.target is executorch_call_delegate
    ]


def delegate_count(edge: EdgeProgramManager) -> dict[str, int]:
    """XNNPACK regions per method."""
    return {name: len(_delegates(edge, name)) for name in edge.methods}


def delegated_op_count(edge: EdgeProgramManager) -> int:
    """Ops lowered into XNNPACK over every method: XNNPACK builds one operator object for each at load."""
    return sum(
        sum(1 for node in delegate.graph.nodes if node.op == "call_function")
        for name in edge.methods
        for delegate in _delegates(edge, name)
    )


def _bytes(value: Any) -> int:
    return value.numel() * value.element_size() if isinstance(value, torch.Tensor) else 0


def delegate_memory_bytes(edge: EdgeProgramManager) -> int:
    """XNNPACK's memory outside the planned arena: the workspace of its largest delegate, plus
    ``XNNPACK_PER_DELEGATED_OP_BYTES`` per lowered op (calibrated by ``benchmarks/executorch_overhead.py``).

    Values computed inside a delegate that are not its outputs live in XNNPACK's workspace, not in ExecuTorch's
    arena. The measurements below fit one workspace shared by the program's delegates, sized for the largest set of
    such values alive at once over the delegate graphs of every method. The frozen weights the delegates pack are
    counted in the program file's bytes, once: measured, no second copy showed up.
    First calibration of the workspace alone (MobileNetV2 x1.0 96x96 batch 8, ``memwall measure`` 3 steps, this
    machine under load, when the runtime overhead was a 6.5 MiB constant): measured
    peak minus arena, program and runtime overhead = 13.7 / 10.6 / 22.4 MiB for classifier-only (7 delegates),
    last-2 (18) and bias-only (43, with backward convolutions); this estimate gives 13.6 for each (the peak
    prediction is then 0%, +8% and -11% off). Summing the delegates' workspaces instead gave +25% / +29%.
    """
    workspace = max((_internal_peak(d) for name in edge.methods for d in _delegates(edge, name)), default=0)
    return workspace + XNNPACK_PER_DELEGATED_OP_BYTES * delegated_op_count(edge)


def _internal_peak(program: ExportedProgram) -> int:
    """Largest sum of a graph's intermediate values (neither inputs nor outputs) alive at one node."""
    nodes = list(program.graph.nodes)
    outputs = {arg for node in nodes if node.op == "output" for arg in node.all_input_nodes}
    last_use: dict[Node, int] = {}
    for index, node in enumerate(nodes):
        for arg in node.all_input_nodes:
            last_use[arg] = index
    live = peak = 0
    dying: dict[int, int] = {}
    for index, node in enumerate(nodes):
        if node.op == "call_function" and node not in outputs:
            size = sum(_bytes(v) for v in _values(node.meta.get("val")))
            live += size
            dying[last_use.get(node, index)] = dying.get(last_use.get(node, index), 0) + size
        peak = max(peak, live)
        live -= dying.pop(index, 0)
    return peak


def _values(val: Any) -> list[Any]:
    return list(val) if isinstance(val, list | tuple) else [val]


def lower_frozen_to_xnnpack(
    methods: dict[str, ExportedProgram], config: XnnpackFrozenConfig | None = None
) -> EdgeProgramManager:
    """``to_edge`` of ``methods`` (joint training graph, predict graph) with their frozen parts on XNNPACK.

    ``methods`` are edited in place (``split_convolution_biases``, and ``rewrite_backward_convolutions`` when
    ``backward_convolutions`` is on). The result goes on to ``to_executorch`` as ``to_edge``'s would.
    """
    config = config or XnnpackFrozenConfig()
    for program in methods.values():
        split_convolution_biases(program)
        if config.backward_convolutions:
            rewrite_backward_convolutions(program)
    trainable = {name: trainable_placeholders(program) for name, program in methods.items()}
    edge = to_edge_transform_and_lower(
        methods,
        partitioner=[FrozenXnnpackPartitioner()],
        compile_config=EdgeCompileConfig(_check_ir_validity=False),
    )
    for name in edge.methods:
        # XNNPACK bakes what a delegate reads as a constant: a trained tensor there would never see its updates.
        graph = edge.exported_program(name).graph
        read = {
            arg.name
            for node in graph.nodes
            if node.op == "call_function" and node.target is executorch_call_delegate
            for arg in node.args[1:]
            if isinstance(arg, Node)
        }
        if read & trainable.get(name, set()):
            raise RuntimeError(
                f"XNNPACK lowering took trainable tensors {sorted(read & trainable[name])[:3]} in {name}"
            )
    return edge
