"""Activation recomputation as a pass on ONNX Runtime's training graph, and the model of ORT's memory it plans with.

``generate_artifacts`` writes one graph: the forward, the loss, and the gradient graph that reads forward values.
ORT frees each intermediate tensor after its last reader, so every forward value that backward reads lives
from the forward to its gradient. This pass keeps only checkpoints (segment boundaries, e.g. block outputs)
and gives backward its own copies of the other forward nodes, recomputed from the nearest checkpoint; where
to cut and which segments to recompute is ``exporters.techniques.recompute``'s choice, made on this graph.

ORT decides when a node runs, not the file: its execution order (``GraphViewer``) is a reverse depth-first
walk from the nodes whose outputs nothing reads, producers with the highest node index first. The copies go
after the last forward node and before the first backward node, so when ORT reaches a backward node it
first computes the incoming gradient and only then the copies, right before their reader. ORT's
CommonSubexpressionElimination would merge each copy back into its original (same op, same inputs): the
sessions must disable it (``SESSION_CONFIG``). Gradients are bit-identical: the copies run the same kernels on
the same inputs.

``execution_order`` and ``workspace_bytes`` model ORT 1.19's CPU training sessions (checked against ORT's
profiler and measured peaks in tests/test_onnx_recompute.py and tests/test_onnxruntime_memory.py); the
exporter predicts the training step's memory with them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import onnx
from onnx import helper, shape_inference

from exporters.modules import parameter_block
from exporters.techniques.recompute import RecomputeConfig, RecomputePlan, Segmentation, choose_segmentation

logger = logging.getLogger(__name__)

# Session config entries a recomputed graph needs, applied by the runner and by the apps (from the manifest):
# without them ORT merges the copies back into the originals and the peak is the unrecomputed one.
SESSION_CONFIG = {"optimization.disable_specified_optimizers": "CommonSubexpressionElimination"}

# Kernels whose output is a view of their first input: ORT allocates nothing for it.
_ALIASING_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
# Kernels that may write their output over input 0 when this is that input's last read (KernelDef MayInplace):
# the activations. Binary element-wise ops do not: assuming they did, the predict method's measured peak would
# be a third lower than it is (MobileNetV2 x1.0 64x64: 6.5 MiB measured, 6.6 modelled without, 4.3 with).
_INPLACE_OPS = frozenset({"Relu"})
# ORT runs these right after the node that produces their input, wherever their readers are.
_SHAPE_OPS = frozenset({"Shape", "Size"})
# Ops that draw random numbers: run again they draw new ones, so their values are kept, not recomputed.
_RANDOM_OPS = frozenset(
    {"Dropout", "BitmaskDropout", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike"}
    | {"Multinomial", "Bernoulli"}
)
_ALIGNMENT = 64  # kAllocAlignment: every planned tensor is rounded up to it
_RECOMPUTED = "_recomputed"  # suffix of the copies' node and value names


@dataclass(frozen=True)
class Op:
    """One node of an ONNX graph as the memory model and the planner see it; ``node`` is the proto it stands for."""

    name: str
    op_type: str
    inputs: tuple[str, ...]  # "" for an omitted optional input
    outputs: tuple[str, ...]
    node: onnx.NodeProto | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, node: onnx.NodeProto) -> Op:
        return cls(node.name, node.op_type, tuple(node.input), tuple(node.output), node)

    def to_proto(self) -> onnx.NodeProto:
        proto = onnx.NodeProto()
        if self.node is not None:
            proto.CopyFrom(self.node)
        proto.name, proto.op_type = self.name, self.op_type
        proto.input[:], proto.output[:] = self.inputs, self.outputs
        return proto


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    elem_type: int  # onnx.TensorProto.DataType

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * helper.tensor_dtype_to_np_dtype(self.elem_type).itemsize


def tensor_infos(model: onnx.ModelProto, batch: int, batch_dim: str) -> dict[str, TensorInfo]:
    """Shape and element type of every value of ``model`` whose shape is known at batch size ``batch``.

    ONNX shape inference does not know ORT's gradient ops (``ConvGrad``, ``ReluGrad``, ...); their outputs have
    the shapes of forward values or parameters, known after a first pass, and a second pass carries them
    through the standard ops of the backward.
    """
    work = onnx.ModelProto()
    work.CopyFrom(model)
    for value in work.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == batch_dim:
                dim.dim_value = batch
    declared = {value.name for value in work.graph.input} | {init.name for init in work.graph.initializer}
    infos: dict[str, TensorInfo] = {}
    for _ in range(4):
        graph = shape_inference.infer_shapes(work, strict_mode=False, data_prop=True).graph
        for value in [*graph.input, *graph.value_info, *graph.output]:
            tensor = value.type.tensor_type
            if tensor.elem_type and tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim):
                infos[value.name] = TensorInfo(tuple(d.dim_value for d in tensor.shape.dim), tensor.elem_type)
        for init in graph.initializer:
            infos[init.name] = TensorInfo(tuple(init.dims), init.data_type)
        added = _gradient_op_infos(graph.node, infos)
        if not added:
            break
        infos |= added
        del work.graph.value_info[:]
        work.graph.value_info.extend(
            helper.make_tensor_value_info(name, info.elem_type, info.shape)
            for name, info in infos.items()
            if name not in declared
        )
    return infos


def _gradient_op_infos(nodes: Iterable[onnx.NodeProto], infos: Mapping[str, TensorInfo]) -> dict[str, TensorInfo]:
    """Output shapes of ORT's gradient ops that ``infos`` lacks, from the values they differentiate."""
    added: dict[str, TensorInfo] = {}
    for node in nodes:
        if node.op_type == "ConvGrad":  # (dY, X, W) -> (dX, dW, dB)
            weight = infos.get(node.input[2])
            like = [infos.get(node.input[1]), weight, weight and TensorInfo(weight.shape[:1], weight.elem_type)]
        elif node.op_type in ("ReluGrad", "SigmoidGrad", "TanhGrad", "GeluGrad", "FastGeluGrad"):  # (dY, X) -> dX
            like = [infos.get(node.input[0])]
        elif node.op_type == "SoftmaxCrossEntropyLossGrad":  # (dY, log_prob, label) -> d logits
            like = [infos.get(node.input[1])]
        else:
            continue
        for output, info in zip(node.output, like, strict=False):
            if output and output not in infos and info is not None:
                added[output] = info
    return added


def as_ort_runs(ops: Sequence[Op], graph_outputs: Collection[str], *, fold_relu: bool = True) -> list[Op]:
    """``ops`` after the graph rewrites of ORT's session that change what runs: Identity nodes that produce no
    graph output are removed (EliminateIdentity) and, with ``fold_relu``, a Relu read only by a Clip is folded
    into it (ReluClipFusion; for the memory model only: ORT also raises the Clip's lower bound to 0, which this
    does not write). The readers are rewired; node indices keep the file's order.
    """
    readers: dict[str, int] = {}
    for op in ops:
        for name in set(op.inputs):
            readers[name] = readers.get(name, 0) + 1
    clip_inputs = {name for op in ops if op.op_type == "Clip" for name in op.inputs[:1]}
    alias: dict[str, str] = {}
    kept: list[Op] = []
    for op in ops:
        output = op.outputs[0] if op.outputs else ""
        removable = output not in graph_outputs and op.inputs
        if removable and (
            op.op_type == "Identity"
            or (fold_relu and op.op_type == "Relu" and readers.get(output) == 1 and output in clip_inputs)
        ):
            alias[output] = alias.get(op.inputs[0], op.inputs[0])
        else:
            kept.append(op)
    return [Op(op.name, op.op_type, tuple(alias.get(i, i) for i in op.inputs), op.outputs, op.node) for op in kept]


def execution_order(ops: Sequence[Op]) -> list[int]:
    """Indices of ``ops`` (as ORT runs them, see ``as_ort_runs``) in the order ORT 1.19 runs them.

    ``GraphViewer`` (ExecutionOrder::DEFAULT): a reverse depth-first walk from the nodes none of whose outputs
    another node reads, the last such node first, each node's producers visited highest index first, a node
    emitted once all its producers are; Shape and Size run right after the producer of their input.
    """
    producer = {name: index for index, op in enumerate(ops) for name in op.outputs if name}
    sources = [sorted({producer[name] for name in op.inputs if name in producer}) for op in ops]
    read = {index for indices in sources for index in indices}
    stack: list[tuple[int, bool]] = [(index, False) for index in range(len(ops)) if index not in read]
    visited = [False] * len(ops)
    walk: list[int] = []
    while stack:
        index, leave = stack.pop()
        if leave:
            walk.append(index)
        elif not visited[index]:
            visited[index] = True
            stack.append((index, True))
            stack.extend((source, False) for source in sources[index] if not visited[source])
    hoisted: dict[int, list[int]] = {}
    for index, op in enumerate(ops):
        if op.op_type in _SHAPE_OPS:
            hoisted.setdefault(sources[index][0] if sources[index] else -1, []).append(index)
    moved = {index for indices in hoisted.values() for index in indices}
    order = list(hoisted.get(-1, []))
    for index in walk:
        if index not in moved:
            order.append(index)
            order.extend(hoisted.get(index, []))
    return order


@dataclass(frozen=True)
class Allocation:
    """ORT's allocation plan for one run of a graph (``allocate``): which values get a buffer of their own, and
    from which step (position in the execution order) to which. Values that reuse another's buffer (aliases,
    in-place outputs, freed buffers of the same shape) are folded into the owner's lifetime."""

    order: list[int]  # op indices in execution order
    planned: list[tuple[int, str]]  # (step, value) of each buffer of the memory-pattern block, in allocation order
    separate: list[tuple[int, str]]  # (step, value) of tensors allocated on their own (graph outputs, unknown shape)
    last_read: dict[str, int]  # buffer owner -> step of its last read
    graph_outputs: frozenset[str]

    def planned_buffers(self, infos: Mapping[str, TensorInfo]) -> list[tuple[str, int, int, int]]:
        """``(owner, bytes, first step, last step)`` of the block's buffers in allocation order; a buffer nothing
        reads stays to the end of the run (``steps``, one past the last op), as ORT's memory pattern keeps it."""
        return [
            (name, infos[name].nbytes, step, self.last_read.get(name, len(self.order))) for step, name in self.planned
        ]

    def separate_buffers(self, infos: Mapping[str, TensorInfo]) -> list[tuple[str, int, int, int]]:
        """``(value, bytes, first step, last step)`` of the tensors allocated on their own."""
        out = []
        for step, name in self.separate:
            last = len(self.order) - 1 if name in self.graph_outputs else self.last_read.get(name, step)
            out.append((name, infos[name].nbytes if name in infos else 0, step, last))
        return out


def allocate(
    ops: Sequence[Op], infos: Mapping[str, TensorInfo], graph_outputs: Collection[str], shaped: Collection[str]
) -> Allocation:
    """ORT 1.19's allocation plan for one run of ``ops`` (as ORT runs them; see ``workspace_bytes``)."""
    order = execution_order(ops)
    produced = {name for op in ops for name in op.outputs if name}
    uses: dict[str, int] = {}
    for index in order:
        for name in (*ops[index].inputs, *ops[index].outputs):
            if name:
                uses[name] = uses.get(name, 0) + 1
    for name in [*graph_outputs, *(name for name in uses if name not in produced)]:
        uses[name] = uses.get(name, 0) + 1  # the caller's: never freed, never overwritten
    buffer: dict[str, str] = {}  # value -> the value whose buffer it uses
    planned: list[tuple[int, str]] = []
    separate: list[tuple[int, str]] = []
    freelist: list[str] = []

    def owner(name: str) -> str:
        return buffer.get(name, name)

    def same_shape(a: str, b: str) -> bool:
        return a in shaped and b in shaped and a in infos and infos[a] == infos.get(b) and len(infos[a].shape) > 0

    for step, index in enumerate(order):
        op = ops[index]
        for slot, name in enumerate(op.outputs):
            if not name:
                continue
            if name in graph_outputs:
                separate.append((step, name))
                continue
            source = _reused_input(op, slot, lambda value: uses[owner(value)], same_shape)
            if source is None and (source := next((f for f in freelist if same_shape(f, name)), None)):
                freelist.remove(source)
            if source is not None:
                buffer[name] = owner(source)
                uses[owner(source)] += uses[name]
            elif name in shaped and name in infos:
                planned.append((step, name))
            else:
                separate.append((step, name))
        for name in (*op.inputs, *op.outputs):
            if name in produced:
                uses[owner(name)] -= 1
                if uses[owner(name)] == 0:
                    freelist.insert(0, owner(name))
    last_read: dict[str, int] = {}
    for step, index in enumerate(order):
        for name in ops[index].inputs:
            if name in produced:
                last_read[owner(name)] = step
    return Allocation(order, planned, separate, last_read, frozenset(graph_outputs))


def workspace_bytes(
    ops: Sequence[Op], infos: Mapping[str, TensorInfo], graph_outputs: Collection[str], shaped: Collection[str]
) -> int:
    """Bytes ORT allocates for the intermediate tensors of one run of ``ops`` (as ORT runs them).

    ``infos`` gives every value's size; ``shaped`` names the values whose shape ORT knows before the run: the
    graph's declared ones (``declared_shapes``: ORT infers nothing beyond what ``generate_artifacts`` wrote,
    measured). ORT 1.19's training build with the memory pattern on (the default, which the runner and the
    apps keep) plans every tensor of known shape into one block allocated per run. The allocation planner
    gives a node output the buffer of its input where the kernel aliases it (Reshape, ...) or may overwrite it
    on its last read, else a freed buffer of the same shape, else a new buffer, which lives from its node to
    the last reader of every value sharing it; the memory-pattern planner places each new buffer best-fit
    among those alive at the same time. Graph outputs and tensors of unknown shape are allocated on their own.
    Returns the block plus the largest sum of those others alive at once.
    """
    return allocated_bytes(allocate(ops, infos, graph_outputs, shaped), infos)


def allocated_bytes(plan: Allocation, infos: Mapping[str, TensorInfo]) -> int:
    """``workspace_bytes`` of an allocation plan: the memory-pattern block plus the peak of the separate tensors."""
    block = _memory_pattern_bytes([(nbytes, first, last) for _, nbytes, first, last in plan.planned_buffers(infos)])
    live = [0] * (len(plan.order) + 2)
    for _, nbytes, first, last in plan.separate_buffers(infos):
        live[first] += nbytes
        live[last + 1] -= nbytes
    peak = running = 0
    for change in live:
        running += change
        peak = max(peak, running)
    return block + peak


def _reused_input(
    op: Op, slot: int, remaining_uses: Callable[[str], int], same_shape: Callable[[str, str], bool]
) -> str | None:
    if slot != 0 or not op.inputs or not op.inputs[0]:
        return None
    if op.op_type in _ALIASING_OPS:
        return op.inputs[0]
    if op.op_type in _INPLACE_OPS and remaining_uses(op.inputs[0]) == 1 and same_shape(op.inputs[0], op.outputs[0]):
        return op.inputs[0]
    return None


def _memory_pattern_bytes(buffers: Sequence[tuple[int, int, int]]) -> int:
    """Size of ORT's memory-pattern block for ``(bytes, first step, last step)`` in allocation order: each
    buffer goes into the best-fitting gap among the buffers alive at the same time, else after the last one
    (``MemPatternPlanner::TraceAllocation`` with program counters).
    """
    alive: list[tuple[int, int, int]] = []  # (offset, size, last step), sorted by offset
    total = 0
    for nbytes, start, stop in buffers:
        size = -(-nbytes // _ALIGNMENT) * _ALIGNMENT
        alive = [block for block in alive if block[2] >= start]  # buffers are placed in step order
        current, best, waste = 0, None, None
        for offset, other, _ in alive:
            gap = offset - current
            if gap >= size and (waste is None or gap - size < waste):
                best, waste = current, gap - size
            current = max(current, offset + other)
        if current < total and total - current >= size and (waste is None or total - current - size < waste):
            best = current
        offset = current if best is None else best
        total = max(total, offset + size)
        position = next((i for i, (o, s, _) in enumerate(alive) if o > offset or (o == offset and s >= size)), None)
        alive.insert(len(alive) if position is None else position, (offset, size, stop))
    return total


def declared_shapes(model: onnx.ModelProto) -> set[str]:
    """Values whose shape ``model`` declares (value_info, inputs, outputs, initializers): all ORT knows statically."""
    graph = model.graph
    values = [*graph.value_info, *graph.input, *graph.output]
    return {v.name for v in values if v.type.tensor_type.HasField("shape")} | {i.name for i in graph.initializer}


@dataclass(frozen=True)
class OrtRun:
    """One call of a model's graph as ORT runs it: its ops, value sizes, graph outputs and the allocation plan."""

    ops: list[Op]
    infos: dict[str, TensorInfo]
    graph_outputs: frozenset[str]
    allocation: Allocation

    @classmethod
    def of(cls, model: onnx.ModelProto, batch: int, batch_dim: str) -> OrtRun:
        outputs = frozenset(value.name for value in model.graph.output)
        ops = as_ort_runs([Op.of(node) for node in model.graph.node], outputs)
        infos = tensor_infos(model, batch, batch_dim)
        return cls(ops, infos, outputs, allocate(ops, infos, outputs, declared_shapes(model)))


@dataclass(frozen=True)
class TrainingGraphRoles:
    """Which values of an ORT training graph are what: the pass cannot tell weights from batch inputs by itself."""

    parameters: frozenset[str]  # the model's weights and buffers (their names show its blocks)
    user_inputs: frozenset[str]  # the batch: inputs and labels
    forward_outputs: frozenset[str]  # what the forward computes (loss, logits); everything else is backward


def recompute_training_graph(
    model: onnx.ModelProto, config: RecomputeConfig, roles: TrainingGraphRoles, *, batch: int, batch_dim: str
) -> RecomputePlan:
    """Recompute activations in ORT's training graph ``model`` (edited in place, Identity nodes removed as ORT
    removes them) and return the plan. Where recomputation would not lower the estimated workspace the graph
    is left unchanged, with a warning.
    """
    graph = _TrainingGraph(model, tensor_infos(model, batch, batch_dim), roles)
    plan, schedule = graph.plan(config)
    if not plan.recomputed:
        logger.warning("recompute: nothing to recompute lowers this graph's workspace; graph unchanged")
        return plan
    ops = graph.rewritten(schedule)
    del model.graph.node[:]
    model.graph.node.extend(op.to_proto() for op in ops)
    # The copies get their originals' declared shapes, so ORT plans them as it plans the originals.
    values = {value.name: value for value in model.graph.value_info}
    names = {name for op in ops for name in op.outputs}
    kept = [value for value in model.graph.value_info if value.name in names]
    for name in sorted(names - values.keys()):
        original = values.get(name.removesuffix(_RECOMPUTED))
        if name.endswith(_RECOMPUTED) and original is not None:
            copy = onnx.ValueInfoProto()
            copy.CopyFrom(original)
            copy.name = name
            kept.append(copy)
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    logger.info("recompute: %s (step workspace)", plan.describe())
    return plan


def plan_onnx_recomputation(
    model: onnx.ModelProto, config: RecomputeConfig, roles: TrainingGraphRoles, *, batch: int, batch_dim: str
) -> RecomputePlan:
    """What ``recompute_training_graph`` would do to ``model``, without changing it."""
    return _TrainingGraph(model, tensor_infos(model, batch, batch_dim), roles).plan(config)[0]


@dataclass
class _Schedule:
    """The copies, in the order they are inserted, and the (reader, value) reads that go to the copy instead."""

    segmentation: Segmentation
    targets: list[str] = field(default_factory=list)  # values backward read that it will recompute
    copies: list[int] = field(default_factory=list)  # indices of the forward ops copied
    redirected: set[tuple[int, str]] = field(default_factory=set)


class _TrainingGraph:
    """The forward of an ORT training graph, the forward values backward reads, and where the forward can be cut
    (``exporters.techniques.recompute.SegmentedGraph`` over value names).

    Forward ops are the ancestors of the forward outputs; every other op is backward. Forward values that depend
    on a user input are activations; the rest derive from weights only (frozen BatchNorm's scale). Each
    activation gets a group: its block (``parameter_block`` of the weights it reads), propagated as the maximum
    over its inputs so a residual add belongs to the later block, or its own position when the weights show
    no blocks. A cut after group k keeps the activations of groups <= k that a later group reads.
    """

    def __init__(self, model: onnx.ModelProto, infos: dict[str, TensorInfo], roles: TrainingGraphRoles) -> None:
        self.infos = infos
        self.shaped = declared_shapes(model)
        self.graph_outputs = {value.name for value in model.graph.output}
        # The graph as it is written back: without Identity nodes, which ORT drops anyway.
        self.ops = as_ort_runs([Op.of(node) for node in model.graph.node], self.graph_outputs, fold_relu=False)
        self.producer = {name: index for index, op in enumerate(self.ops) for name in op.outputs if name}
        forward_ops: set[int] = set()
        stack = [self.producer[name] for name in roles.forward_outputs if name in self.producer]
        while stack:
            index = stack.pop()
            if index not in forward_ops:
                forward_ops.add(index)
                stack.extend(self.producer[name] for name in self.ops[index].inputs if name in self.producer)
        self.forward_ops = forward_ops
        self.forward = {name for index in forward_ops for name in self.ops[index].outputs if name}
        self.readers: dict[str, list[int]] = {}  # forward value -> backward ops that read it
        for index, op in enumerate(self.ops):
            # Shape and Size run right after their input's producer: they hold nothing into backward.
            if index not in forward_ops and op.op_type not in _SHAPE_OPS:
                for name in dict.fromkeys(op.inputs):
                    if name in self.forward:
                        self.readers.setdefault(name, []).append(index)
        keys = {name: key for name in roles.parameters if (key := parameter_block(name)) is not None}
        self.blocks = len({key for key, numbered in keys.values() if numbered}) >= 2
        self.activations: list[str] = []
        self.group: dict[str, int] = dict.fromkeys(roles.user_inputs, -1)
        weight_keys: dict[str, frozenset[tuple[str, bool]]] = {name: frozenset([key]) for name, key in keys.items()}
        ranks: dict[tuple[str, bool], int] = {}
        labels: list[tuple[str, bool]] = []
        forward_order = sorted(forward_ops)  # generate_artifacts writes the forward in topological order
        for index in forward_order:
            op = self.ops[index]
            used = frozenset().union(*(weight_keys.get(name, frozenset()) for name in op.inputs))
            outputs = [name for name in op.outputs if name]
            if not any(name in self.group for name in op.inputs):
                weight_keys.update(dict.fromkeys(outputs, used))
                continue
            self.activations.extend(outputs)
            if not self.blocks:
                group = len(self.activations) - 1
            else:
                for key in sorted(used - ranks.keys()):
                    # Unnumbered modules between two blocks (a stem's conv and norm, a head) form one group.
                    if not (labels and not key[1] and not labels[-1][1]):
                        labels.append(key)
                    ranks[key] = len(labels) - 1
                group = max(max(self.group.get(name, -1) for name in op.inputs), *(ranks[key] for key in used), 0)
            self.group.update(dict.fromkeys(outputs, group))
        self.num_groups = max((self.group[name] for name in self.activations), default=-1) + 1
        readers_in_forward: dict[str, list[int]] = {}
        for index in forward_order:
            for name in self.ops[index].inputs:
                readers_in_forward.setdefault(name, []).append(index)
        # A weight-only value goes with the first group that reads it: recomputed with that segment.
        for index in reversed(forward_order):
            for name in self.ops[index].outputs:
                if name and name in weight_keys and name not in keys:
                    readers = readers_in_forward.get(name, [])
                    groups = [self.group.get(out, -1) for user in readers for out in self.ops[user].outputs if out]
                    self.group[name] = min((group for group in groups if group >= 0), default=-1)
        self.crossing: list[list[str]] = [[] for _ in range(max(self.num_groups - 1, 0))]
        for name in self.activations:
            users = readers_in_forward.get(name, [])
            last = max((self.group[out] for user in users for out in self.ops[user].outputs if out), default=-1)
            for k in range(self.group[name], min(last, self.num_groups - 1)):
                self.crossing[k].append(name)

    # SegmentedGraph
    def nbytes(self, value: str) -> int:
        return self.infos[value].nbytes if value in self.infos else 0

    def flops(self, value: str) -> int:
        """Rough cost of recomputing ``value``: multiply-adds of convolutions and matrix products, else its size."""
        out = self.infos.get(value)
        if out is None:
            return 0
        op = self.ops[self.producer[value]]
        numel = math.prod(out.shape)
        if op.op_type == "Conv" and op.inputs[1] in self.infos:
            weight = self.infos[op.inputs[1]].shape
            return numel * math.prod(weight[1:])
        if op.op_type in ("Gemm", "MatMul") and op.inputs[0] in self.infos:
            lhs = self.infos[op.inputs[0]].shape
            attributes = op.node.attribute if op.node is not None else []
            transposed = op.op_type == "Gemm" and any(a.name == "transA" and a.i for a in attributes)
            return numel * (lhs[0] if transposed else lhs[-1])
        return numel

    def arena_after(self, segmentation: Segmentation) -> int:
        return self._workspace(self._schedule(segmentation))

    # The pass
    def recomputable(self, value: str, segmentation: Segmentation) -> bool:
        return (
            value in self.forward
            and value not in segmentation.checkpoints
            and value not in self.graph_outputs
            and self.ops[self.producer[value]].op_type not in _RANDOM_OPS
        )

    def plan(self, config: RecomputeConfig) -> tuple[RecomputePlan, _Schedule]:
        schedule = self._schedule(choose_segmentation(self, config))
        before = self._workspace(None)
        after = self._workspace(schedule)
        if after >= before:
            schedule, after = _Schedule(schedule.segmentation), before
        checkpoints = schedule.segmentation.checkpoints
        plan = RecomputePlan(
            segmentation="blocks" if self.blocks else "ops",
            checkpoints=tuple(name for name in self.activations if name in checkpoints),
            recomputed=tuple(schedule.targets),
            copies=len(schedule.copies),
            released_bytes=sum(self.nbytes(name) for name in schedule.targets),
            estimated_peak_bytes=(before, after),
        )
        return plan, schedule

    def _schedule(self, segmentation: Segmentation) -> _Schedule:
        schedule = _Schedule(segmentation)
        schedule.targets = [
            name
            for name in self.activations + sorted(set(self.readers) - set(self.activations))
            if name in self.readers
            and self.recomputable(name, segmentation)
            and self.group.get(name, -1) in segmentation.recomputed_groups
        ]
        copied: set[int] = set()

        def materialize(index: int) -> None:
            if index in copied:
                return
            for name in self.ops[index].inputs:
                if name in self.producer and self.recomputable(name, segmentation):
                    materialize(self.producer[name])
            copied.add(index)
            schedule.copies.append(index)

        for name in schedule.targets:
            materialize(self.producer[name])
            schedule.redirected.update((reader, name) for reader in self.readers[name])
        return schedule

    def rewritten(self, schedule: _Schedule | None) -> list[Op]:
        """The graph's ops (Identity-free) with the copies after the last forward op and the reads redirected."""
        if schedule is None or not schedule.copies:
            return list(self.ops)
        copied_values = {name for index in schedule.copies for name in self.ops[index].outputs if name}

        def copy(op: Op) -> Op:
            return Op(
                op.name + _RECOMPUTED,
                op.op_type,
                tuple(name + _RECOMPUTED if name in copied_values else name for name in op.inputs),
                tuple(name + _RECOMPUTED if name else name for name in op.outputs),
                op.node,
            )

        result: list[Op] = []
        last_forward = max(self.forward_ops)
        for index, op in enumerate(self.ops):
            redirected = {name for name in op.inputs if (index, name) in schedule.redirected}
            if redirected:
                op = Op(
                    op.name,
                    op.op_type,
                    tuple(n + _RECOMPUTED if n in redirected else n for n in op.inputs),
                    op.outputs,
                    op.node,
                )
            result.append(op)
            if index == last_forward:
                result.extend(copy(self.ops[i]) for i in schedule.copies)
        return result

    def _workspace(self, schedule: _Schedule | None) -> int:
        infos, shaped = self.infos, self.shaped
        if schedule is not None and schedule.copies:
            copied = [name for index in schedule.copies for name in self.ops[index].outputs if name]
            infos = self.infos | {name + _RECOMPUTED: self.infos[name] for name in copied if name in self.infos}
            shaped = self.shaped | {name + _RECOMPUTED for name in copied if name in self.shaped}
        ops = as_ort_runs(self.rewritten(schedule), self.graph_outputs)
        return workspace_bytes(ops, infos, self.graph_outputs, shaped)
