"""Where a training step's planned memory goes: tensor lifetimes of the exported joint graph, by component,
by layer, and as a timeline over forward and backward.

The ExecuTorch memory planner gives every tensor of a method a lifetime (first and last node index) and a
place in the arena; this module reads those plans back from the planned graph, so the profile is exact for
the arena, not an estimate. ONNX Runtime plans at run time; its profile follows the allocation plan the
exporter predicts ORT's buffers with (``onnx_recompute.allocate``), plus the gradient accumulation buffers
(ORT's weights are session state, outside that arena). Each tensor is put in one component:

- ``inputs``: the batch (input, labels);
- ``trainable_weights``: parameters the step trains (a training program plans them into its arena);
- ``saved_activations``: forward values that backward reads (alive from their forward op into backward);
- ``gradients``: the gradient outputs (with the fused update, the gradients its update reads; ORT: also the
  accumulation buffers);
- ``optimizer_state``: optimizer state buffers (only a program with the fused update plans them);
- ``workspace``: everything else (forward transients, backward intermediates, loss and logits).

The profile is written into the bundle (``memory_profile.json``) by the exporter: ``memwall analyze`` reads
it with the manifest and needs neither the model nor the runtime.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind
from torch.fx import Node

from exporters.modules import parameter_block
from exporters.node_roles import GRADIENT_OF, OPTIMIZER_STATE_OF

if TYPE_CHECKING:
    from exporters.techniques.onnx_recompute import OrtRun, TrainingGraphRoles

T = TypeVar("T")

PROFILE_FILE = "memory_profile.json"
PROFILE_VERSION = 2  # 2: the optimizer_state component and per-layer optimizer_state_bytes
READABLE_VERSIONS = (1, 2)  # a version 1 profile reads with no optimizer state
COMPONENTS = ("inputs", "trainable_weights", "saved_activations", "gradients", "optimizer_state", "workspace")
NO_LAYER = "(graph)"  # values that derive from no parameter: loss arithmetic, label encoding


@dataclass(frozen=True)
class LayerMemory:
    name: str  # a numbered block (``features.3``) or a module path without one (``classifier``)
    trainable_weight_bytes: int
    frozen_weight_bytes: int
    gradient_bytes: int
    saved_activation_bytes: int
    optimizer_state_bytes: int = 0  # in the planned arena: only with the fused update


@dataclass(frozen=True)
class MemoryProfile:
    method: str
    arena_bytes: int  # what the planner reserved (>= the largest sum of live tensors: fragmentation)
    peak_live_bytes: int  # the largest sum of live tensors at one op
    peak_op: int  # index (into ``ops``) where that sum is reached
    backward_start: int  # index of the first backward op
    ops: list[str]  # op names in execution order, e.g. "convolution", "convolution_backward"
    timeline: dict[str, list[int]]  # component -> live bytes while each op runs
    layers: list[LayerMemory]

    def to_json(self) -> dict[str, Any]:
        return {"version": PROFILE_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MemoryProfile:
        if data.get("version") not in READABLE_VERSIONS:
            raise ValueError(
                f"memory profile version {data.get('version')!r} is not one of {READABLE_VERSIONS} that this memwall "
                "reads: re-export the bundle, or update memwall"
            )
        fields = {k: v for k, v in data.items() if k != "version"}
        fields["layers"] = [LayerMemory(**layer) for layer in data["layers"]]
        return cls(**fields)

    def peak_components(self) -> dict[str, int]:
        return {name: values[self.peak_op] for name, values in self.timeline.items()}


def _specs(node: Node) -> list[Any]:
    spec = node.meta.get("spec")
    items = spec if isinstance(spec, list | tuple) else [spec]
    return [s for s in items if s is not None and getattr(s, "mem_id", None) is not None]


def _ancestors(roots: list[Node]) -> set[Node]:
    seen: set[Node] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node not in seen and node.op == "call_function":
            seen.add(node)
            stack.extend(node.all_input_nodes)
    return seen


def _op_name(node: Node) -> str:
    name = getattr(node.target, "__name__", str(node.target))
    return name.split(".")[0].removeprefix("aten::")


def profile_planned_method(program: ExportedProgram, method: str, arena_bytes: int) -> MemoryProfile:
    """Profile one memory-planned method (``ExecutorchProgramManager.exported_program(method)``)."""
    graph = program.graph_module.graph
    signature = program.graph_signature
    nodes = list(graph.nodes)
    index = {node: i for i, node in enumerate(nodes)}
    outputs = list(graph.output_node().args[0])
    specs = list(signature.output_specs)
    if len(specs) != len(outputs):  # the emitter drops buffer mutations (the fused update's) from the output node
        specs = [spec for spec in specs if spec.kind != OutputKind.BUFFER_MUTATION]
    kinds = [spec.kind for spec in specs]
    # A gradient is a getitem of a *_backward op: match its spec, which the op node lists too.
    gradient_of = {
        node: out.target or ""
        for node, out in zip(outputs, specs, strict=True)
        if out.kind == OutputKind.GRADIENT_TO_PARAMETER
    }
    gradient_of.update({node: node.meta[GRADIENT_OF] for node in nodes if GRADIENT_OF in node.meta})
    gradient_layers = {
        id(spec): key[0]
        for node, target in gradient_of.items()
        for spec in _specs(node)
        if (key := _block(target)) is not None
    }
    forward = _ancestors(
        [
            node
            for node, kind in zip(outputs, kinds, strict=True)
            if isinstance(node, Node) and kind in (OutputKind.LOSS_OUTPUT, OutputKind.USER_OUTPUT)
        ]
    )
    ops = [node for node in nodes if node.op == "call_function" and _op_name(node) not in ("alloc", "getitem")]
    forward_ops = [i for i, node in enumerate(ops) if node in forward]
    backward_start = max(forward_ops) + 1 if forward_ops else 0
    forward_end = index[ops[backward_start - 1]] if backward_start else -1

    weight_names = {**signature.inputs_to_parameters, **signature.inputs_to_buffers}
    weight_names.update(signature.inputs_to_lifted_tensor_constants)
    weight_layers = {
        node: key[0]
        for node in nodes
        if node.op == "placeholder" and node.name in weight_names
        if (key := _block(node.meta.get(OPTIMIZER_STATE_OF, weight_names[node.name]))) is not None
    }
    layer_of = _assign_layers(
        weight_layers,
        [(node.all_input_nodes, [node]) for node in nodes if node.op == "call_function"],
        forward,
    )

    user_inputs = {spec.arg.name for spec in signature.input_specs if spec.kind == InputKind.USER_INPUT}
    trained = set(gradient_of.values())
    owners: dict[int, tuple[Any, Node]] = {}
    for node in nodes:
        if _op_name(node) == "alloc":
            continue  # its spec is the op's out= tensor: the op that fills it is the owner
        for spec in _specs(node):
            owners.setdefault(id(spec), (spec, node))

    intervals: list[tuple[str, int, int, int]] = []
    per_layer = _LayerTable()
    layer_row = per_layer.row
    for spec, node in owners.values():
        first, last = spec.lifetime
        if first is None or last is None:
            continue
        size = int(spec.allocated_memory)
        layer = layer_of.get(node, NO_LAYER)
        if node.op == "placeholder":
            target = weight_names.get(node.name)  # with the fused update, trained parameters are buffers
            if node.name in user_inputs:
                component = "inputs"
            elif target in trained:
                component = "trainable_weights"
                layer_row(layer)["trainable_weight_bytes"] += size
            elif OPTIMIZER_STATE_OF in node.meta:
                component = "optimizer_state"
                key = _block(node.meta[OPTIMIZER_STATE_OF])
                layer_row(key[0] if key else NO_LAYER)["optimizer_state_bytes"] += size
            else:
                component = "workspace"
        elif id(spec) in gradient_layers:
            component = "gradients"
            layer_row(gradient_layers[id(spec)])["gradient_bytes"] += size
        elif node in forward and last > forward_end and node not in outputs:
            component = "saved_activations"
            layer_row(layer)["saved_activation_bytes"] += size
        else:
            component = "workspace"
        intervals.append((component, size, first, last))
    for target in signature.inputs_to_parameters.values():
        tensor = program.state_dict.get(target)
        if target not in trained and (key := _block(target)) is not None and tensor is not None:
            layer_row(key[0])["frozen_weight_bytes"] += tensor.numel() * tensor.element_size()
    timeline = _timeline(intervals, [index[op] for op in ops], len(nodes))
    forward_layers = [layer_of[op] for op in ops if op in forward and op in layer_of]
    return _profile(
        method, arena_bytes, [_op_name(op) for op in ops], backward_start, timeline, forward_layers, per_layer
    )


def _block(name: str) -> tuple[str, ...] | None:
    return parameter_block(name.removeprefix("model."))


def _assign_layers(
    weights: dict[T, str], ops: Iterable[tuple[Sequence[T], Sequence[T]]], forward: Collection[T]
) -> dict[T, str]:
    """Layer of every value: a weight's is its parameter's block; an op's outputs take the block of a weight the
    op reads, else of its inputs (a backward op prefers the forward values it reads: those are the layer whose
    gradient it computes). ``ops``: (inputs, outputs) in execution order."""
    layer_of = dict(weights)
    for inputs, outputs in ops:
        direct = [weights[a] for a in inputs if a in weights]
        via_forward = [layer_of[a] for a in inputs if a in forward and a in layer_of]
        via_any = [layer_of[a] for a in inputs if a in layer_of]
        chosen = direct or (via_any if any(o in forward for o in outputs) else via_forward or via_any)
        if chosen:
            layer_of.update((o, chosen[-1]) for o in outputs)
    return layer_of


class _LayerTable(dict[str, dict[str, int]]):
    def row(self, name: str) -> dict[str, int]:
        fields = [f for f in LayerMemory.__dataclass_fields__ if f != "name"]
        return self.setdefault(name, dict.fromkeys(fields, 0))


def _timeline(
    intervals: Iterable[tuple[str, int, int, int]], samples: Sequence[int], length: int
) -> dict[str, list[int]]:
    """Live bytes of each component at each of ``samples`` (positions), from ``(component, bytes, first, last)``."""
    deltas = {c: [0] * (length + 1) for c in COMPONENTS}
    for component, size, first, last in intervals:
        deltas[component][first] += size
        deltas[component][last + 1] -= size
    timeline = {}
    for component, changes in deltas.items():
        running = list(itertools.accumulate(changes))
        timeline[component] = [running[i] for i in samples]
    return timeline


def _profile(
    method: str,
    arena_bytes: int,
    ops: list[str],
    backward_start: int,
    timeline: dict[str, list[int]],
    forward_layers: Iterable[str],
    per_layer: dict[str, dict[str, int]],
) -> MemoryProfile:
    totals = [sum(values) for values in zip(*timeline.values(), strict=True)]
    peak_op = max(range(len(totals)), key=totals.__getitem__) if totals else 0
    order = list(dict.fromkeys(forward_layers))  # layers in forward order, then those only backward touches
    order += [name for name in per_layer if name not in order]
    return MemoryProfile(
        method=method,
        arena_bytes=arena_bytes,
        peak_live_bytes=totals[peak_op] if totals else 0,
        peak_op=peak_op,
        backward_start=backward_start,
        ops=ops,
        timeline=timeline,
        layers=[LayerMemory(name, **per_layer[name]) for name in order if name in per_layer],
    )


def profile_onnx_training(
    run: OrtRun,
    *,
    roles: TrainingGraphRoles,
    trainable: Collection[str],
    arena_bytes: int,
) -> MemoryProfile:
    """Profile one call of ORT's training graph (``run``) from the allocation plan the exporter predicts with
    (``onnx_recompute.allocate``: ORT's execution order and buffer reuse). ORT's arena-like part is the
    gradient accumulation buffers (alive for the whole step) plus the per-call buffers; weights live in the
    sessions' checkpoint state, outside it, so ``trainable_weights`` is zero here."""
    ops, infos, graph_outputs, plan = run.ops, run.infos, run.graph_outputs, run.allocation
    producer = {name: index for index, op in enumerate(ops) for name in op.outputs if name}
    forward_ops: set[int] = set()
    stack = [producer[name] for name in roles.forward_outputs if name in producer]
    while stack:
        index = stack.pop()
        if index not in forward_ops:
            forward_ops.add(index)
            stack.extend(producer[name] for name in ops[index].inputs if name in producer)
    # ORT runs a few backward ops early (the loss-scale seed, shape ops): backward starts after the last forward op.
    backward_start = 1 + max((step for step, index in enumerate(plan.order) if index in forward_ops), default=-1)
    forward_values = {name for index in forward_ops for name in ops[index].outputs if name}
    weight_layers = {name: key[0] for name in roles.parameters if (key := _block(name)) is not None}
    layer_of = _assign_layers(weight_layers, [(ops[i].inputs, ops[i].outputs) for i in plan.order], forward_values)
    per_layer = _LayerTable()
    gradients = {f"{name}_grad" for name in trainable}  # ORT's names for the step's gradient tensors
    buffer_bytes = 0
    for name in trainable:
        info = infos.get(name)
        key = _block(name)
        size = info.nbytes if info else 0
        buffer_bytes += size
        row = per_layer.row(key[0] if key else NO_LAYER)
        row["gradient_bytes"] += size  # its accumulation buffer
        row["trainable_weight_bytes"] += size  # in the sessions' state, not in the timeline's arena
    for name in roles.parameters - set(trainable):
        info, key = infos.get(name), _block(name)
        if info is not None and key is not None:
            per_layer.row(key[0])["frozen_weight_bytes"] += info.nbytes
    steps = len(plan.order)
    intervals = [("gradients", buffer_bytes, 0, steps - 1)]
    for name, size, first, unclamped in [*plan.planned_buffers(infos), *plan.separate_buffers(infos)]:
        last = min(unclamped, steps - 1)  # a buffer nothing reads is kept to the end of the run
        layer = layer_of.get(name, NO_LAYER)
        if name in gradients:
            component = "gradients"
        elif producer.get(name) in forward_ops and last >= backward_start and name not in graph_outputs:
            component = "saved_activations"
            per_layer.row(layer)["saved_activation_bytes"] += size
        else:
            component = "workspace"
        intervals.append((component, size, first, last))
    timeline = _timeline(intervals, list(range(steps)), steps)
    # The file's order (torch.onnx writes the forward in module order), not ORT's, which starts from the weights.
    forward_layers = [layer_of[name] for i in sorted(forward_ops) for name in ops[i].outputs if name in layer_of]
    return _profile(
        "train_step",
        arena_bytes,
        [ops[i].op_type for i in plan.order],
        backward_start,
        timeline,
        forward_layers,
        per_layer,
    )
