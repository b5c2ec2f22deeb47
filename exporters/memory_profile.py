"""Where a training step's planned memory goes: tensor lifetimes of the exported joint graph, by component,
by layer, and as a timeline over forward and backward.

The ExecuTorch memory planner gives every tensor of a method a lifetime (first and last node index) and a
place in the arena; this module reads those plans back from the planned graph, so the profile is exact for
the arena, not an estimate. Each tensor is put in one component:

- ``inputs``: the batch (input, labels);
- ``trainable_weights``: parameters the step trains (a training program plans them into its arena);
- ``saved_activations``: forward values that backward reads (alive from their forward op into backward);
- ``gradients``: the gradient outputs (in a program with the fused update, the gradients its update reads);
- ``optimizer_state``: optimizer state buffers (only a program with the fused update plans them);
- ``workspace``: everything else (forward transients, backward intermediates, loss and logits).

The profile is written into the bundle (``memory_profile.json``) by the exporter: ``memwall analyze`` reads
it with the manifest and needs neither the model nor the runtime.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind
from torch.fx import Node

from exporters.node_roles import GRADIENT_OF, OPTIMIZER_STATE_OF
from exporters.techniques.freeze import parameter_block

PROFILE_FILE = "memory_profile.json"
PROFILE_VERSION = 1
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
        if data.get("version") != PROFILE_VERSION:
            raise ValueError(
                f"memory profile version {data.get('version')!r} is not {PROFILE_VERSION}: re-export the bundle"
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
        if (key := parameter_block(target.removeprefix("model."))) is not None
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

    # Layers: a parameter's block; an op takes the block of a weight it reads, else of its inputs (a
    # backward op prefers the forward values it reads: those are the layer whose gradient it computes).
    weight_names = {**signature.inputs_to_parameters, **signature.inputs_to_buffers}
    weight_names.update(signature.inputs_to_lifted_tensor_constants)
    layer_of: dict[Node, str] = {}
    for node in nodes:
        if node.op == "placeholder" and node.name in weight_names:
            owner = node.meta.get(OPTIMIZER_STATE_OF, weight_names[node.name])
            key = parameter_block(owner.removeprefix("model."))
            if key is not None:
                layer_of[node] = key[0]
        elif node.op == "call_function":
            inputs = node.all_input_nodes
            direct = [layer_of[a] for a in inputs if a.op == "placeholder" and a in layer_of]
            via_forward = [layer_of[a] for a in inputs if a in forward and a in layer_of]
            via_any = [layer_of[a] for a in inputs if a in layer_of]
            chosen = direct or (via_any if node in forward else via_forward or via_any)
            if chosen:
                layer_of[node] = chosen[-1]

    user_inputs = {spec.arg.name for spec in signature.input_specs if spec.kind == InputKind.USER_INPUT}
    trained = set(gradient_of.values())
    owners: dict[int, tuple[Any, Node]] = {}
    for node in nodes:
        if _op_name(node) == "alloc":
            continue  # its spec is the op's out= tensor: the op that fills it is the owner
        for spec in _specs(node):
            owners.setdefault(id(spec), (spec, node))

    starts = {c: [0] * (len(nodes) + 1) for c in COMPONENTS}
    per_layer: dict[str, dict[str, int]] = {}

    def layer_row(name: str) -> dict[str, int]:
        return per_layer.setdefault(
            name,
            {
                "trainable_weight_bytes": 0,
                "frozen_weight_bytes": 0,
                "gradient_bytes": 0,
                "saved_activation_bytes": 0,
                "optimizer_state_bytes": 0,
            },
        )

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
                key = parameter_block(node.meta[OPTIMIZER_STATE_OF].removeprefix("model."))
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
        starts[component][first] += size
        starts[component][last + 1] -= size
    for target in signature.inputs_to_parameters.values():
        if target not in trained:
            key = parameter_block(target.removeprefix("model."))
            tensor = program.state_dict.get(target)
            if key is not None and tensor is not None:
                layer_row(key[0])["frozen_weight_bytes"] += tensor.numel() * tensor.element_size()

    timeline: dict[str, list[int]] = {}
    for component, deltas in starts.items():
        live, running = [], 0
        positions = iter(index[op] for op in ops)
        target = next(positions, None)
        for i, delta in enumerate(deltas[:-1]):
            running += delta
            if i == target:
                live.append(running)
                target = next(positions, None)
        timeline[component] = live
    totals = [sum(values) for values in zip(*timeline.values(), strict=True)]
    peak_op = max(range(len(totals)), key=totals.__getitem__) if totals else 0
    order = list(dict.fromkeys(layer_of[op] for op in ops if op in forward and op in layer_of))
    order += [name for name in per_layer if name not in order]
    return MemoryProfile(
        method=method,
        arena_bytes=arena_bytes,
        peak_live_bytes=totals[peak_op] if totals else 0,
        peak_op=peak_op,
        backward_start=backward_start,
        ops=[_op_name(op) for op in ops],
        timeline=timeline,
        layers=[LayerMemory(name, **per_layer[name]) for name in order if name in per_layer],
    )
