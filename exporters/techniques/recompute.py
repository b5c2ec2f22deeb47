"""Activation recomputation (checkpointing) as a pass on the ExecuTorch joint forward/backward graph.

The joint graph keeps every forward value that backward reads alive from forward to backward, and the
planned arena is sized by that. This pass keeps only checkpoints (segment boundaries, e.g. block outputs)
and gives backward copies of the other forward nodes, recomputed from the nearest checkpoint. ExecuTorch's
memory planner derives lifetimes from node order (``exir/memory_planning.py``) and no CSE pass runs after
``to_edge``, so a copy inserted right before its first backward reader lives only while backward needs it.
``torch.utils.checkpoint`` cannot do this: the joint graph is planned as one program, so it changes nothing.

Run it after ``to_edge`` and before ``to_executorch``. Gradients are bit-identical: the copies run the same
kernels on the same inputs. Where recomputation would not lower the arena (the peak lies in the forward or
in the last segment, or backward reads nothing worth recomputing) the method is left unchanged.

Where to cut (``choose_segmentation``) is backend-neutral: it reads a ``SegmentedGraph``, and
``onnx_recompute`` makes the same choice on ONNX Runtime's training graph.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind
from torch.fx import Node

from exporters.modules import parameter_block
from exporters.technique import Stage, Technique, register_technique

if TYPE_CHECKING:
    from executorch.exir import EdgeProgramManager

logger = logging.getLogger(__name__)

Segments = Literal["blocks", "sqrt", "auto"] | int
# The segment choice is backend-neutral (ONNX Runtime uses it too): ExecuTorch is imported only to rewrite.
Program = TypeVar("Program", "EdgeProgramManager", ExportedProgram)

_GRADIENT_OUTPUTS = (OutputKind.GRADIENT_TO_PARAMETER, OutputKind.GRADIENT_TO_USER_INPUT)
_POLICIES = ("blocks", "sqrt", "auto")


@dataclass(frozen=True)
class RecomputeConfig:
    """Where the forward is cut into segments whose activations backward recomputes.

    ``"blocks"``: every block output is a checkpoint (blocks are the numbered children in parameter names,
    e.g. ``features.3.`` or ``layers.7.``). ``"sqrt"``: about sqrt(n) segments over the n blocks, balanced by
    the bytes backward reads. An int: that many segments. ``"auto"`` (default): block cuts, then segments whose
    recomputation does not lower the estimated arena are kept instead, most compute per byte first: the same
    arena for less extra compute (MobileNetV2, 96x96: 1.1-1.2x step time instead of 1.3-1.5x). Without block
    structure, segments are cut over the forward ops in topological order (``"blocks"`` and ``"auto"`` then
    mean ``"sqrt"``). The last segment is never recomputed: backward reads it right after the forward ends.
    """

    segments: Segments = "auto"

    def __post_init__(self) -> None:
        valid = self.segments in _POLICIES or (
            type(self.segments) is int and self.segments >= 2  # bool is an int subclass: not a count
        )
        if not valid:
            raise ValueError(f"segments must be one of {_POLICIES} or an int >= 2, got {self.segments!r}")

    def to_json(self) -> dict[str, Any]:
        return {"segments": self.segments}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RecomputeConfig:
        return cls(segments=data["segments"])


@dataclass(frozen=True)
class RecomputePlan:
    """What a recomputation pass does to one training graph (either backend's); empty ``recomputed`` means it
    leaves the graph unchanged.
    """

    segmentation: Literal["blocks", "ops"]  # what the segments were cut over
    checkpoints: tuple[str, ...]  # forward values kept alive for backward as segment boundaries
    recomputed: tuple[str, ...]  # forward values backward read that it now recomputes
    copies: int  # forward nodes copied into backward (the recomputed ones and what they need)
    released_bytes: int  # size of the recomputed values no longer held from forward to backward
    # The backend's estimate of the step's peak, before and after: ExecuTorch's planned arena (largest sum of
    # live arena tensors in node order), ONNX Runtime's step workspace (``onnx_recompute.workspace_bytes``).
    estimated_peak_bytes: tuple[int, int]

    def describe(self) -> str:
        before, after = self.estimated_peak_bytes
        return (
            f"{len(self.recomputed)} values recomputed ({self.copies} copies) from {len(self.checkpoints)} "
            f"checkpoints over {self.segmentation}; estimated peak {before / 2**20:.1f} -> {after / 2**20:.1f} MiB"
        )


def recompute_activations(program: Program, config: RecomputeConfig, gradients_consumed: bool = False) -> Program:
    """Recompute activations in each joint (training) method of ``program``: edits it in place, returns it.

    Methods without gradient outputs (e.g. predict) and graphs where nothing can be saved are left unchanged,
    with a warning that says so. ``gradients_consumed``: a later pass (the fused update) uses each gradient right
    where it is computed, so gradients do not stay alive to the end of the method; the segment choice then
    aims at the peak that is left.
    """
    from executorch.exir import EdgeProgramManager

    if isinstance(program, EdgeProgramManager):
        methods = {name: program.exported_program(name) for name in sorted(program.methods)}
    else:
        methods = {"program": program}
    joint = {name: ep for name, ep in methods.items() if _has_gradients(ep)}
    if not joint:
        logger.warning("recompute: no method has gradient outputs; program unchanged")
    for name, ep in joint.items():
        graph = _JointGraph(ep, gradients_consumed)
        plan, schedule = _plan(graph, config)
        if not plan.recomputed:
            logger.warning("recompute %s: nothing to recompute saves memory; method unchanged", name)
            continue
        _rewrite(graph, schedule)
        ep.graph_module.graph.lint()
        ep.graph_module.recompile()
        logger.info("recompute %s: %s (planned arena)", name, plan.describe())
    return program


def plan_recomputation(program: ExportedProgram, config: RecomputeConfig) -> RecomputePlan:
    """What ``recompute_activations`` would do to a joint ``program``, without changing it."""
    plan, _ = _plan(_JointGraph(program), config)
    return plan


def _has_gradients(program: ExportedProgram) -> bool:
    return any(spec.kind in _GRADIENT_OUTPUTS for spec in program.graph_signature.output_specs)


def node_nbytes(node: Node) -> int:
    val = node.meta.get("val")
    tensors = val if isinstance(val, (tuple, list)) else [val]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _schema_name(node: Node) -> str:
    op = getattr(node.target, "_op", node.target)  # an edge op wraps its ATen overload
    schema = getattr(op, "_schema", None)
    return schema.name if schema is not None else ""


def _flops(node: Node) -> int:
    """Rough cost of recomputing ``node``: multiply-adds of convolutions and matmuls, else its output size."""
    val = node.meta.get("val")
    out = val[0] if isinstance(val, (tuple, list)) else val
    if not isinstance(out, torch.Tensor):
        return 0
    name = _schema_name(node)
    if name == "aten::convolution":
        return out.numel() * node.args[1].meta["val"][0].numel()
    if name in ("aten::mm", "aten::bmm", "aten::addmm", "aten::linear"):
        lhs = node.args[1] if name == "aten::addmm" else node.args[0]
        return out.numel() * lhs.meta["val"].shape[-1]
    return out.numel()


def _nondeterministic(node: Node) -> bool:
    # A seeded random op (dropout) run again draws new numbers: its value must be kept, not recomputed.
    op = getattr(node.target, "_op", node.target)
    return torch.Tag.nondeterministic_seeded in getattr(op, "tags", ())


class _JointGraph:
    """The forward half of a joint graph, the forward values backward reads, and where it can be cut.

    Forward nodes are the ancestors of the non-gradient outputs (loss, logits) and the calls placed among
    them that read only forward values; every other call is backward. Forward nodes that depend on a user
    input are activations; the rest derive from weights only (e.g. frozen BatchNorm's per-channel scale).
    Each activation gets a group: its block, propagated as the maximum over its inputs so a residual add
    belongs to the later block, or its own position when parameter names show no blocks. A cut after group k
    keeps the activations of groups <= k that a later group reads; every path from before the cut into a
    later group passes through them, so recomputation stops there.
    """

    def __init__(self, program: ExportedProgram, gradients_consumed: bool = False) -> None:
        self.graph = program.graph_module.graph
        signature = program.graph_signature
        outputs = self.graph.output_node().args[0]
        self.outputs = set(outputs)
        # The values the method's end keeps alive: all outputs, or all but the gradients a fused update consumes.
        self.kept_to_end = {
            node
            for spec, node in zip(signature.output_specs, outputs, strict=True)
            if not (gradients_consumed and spec.kind in _GRADIENT_OUTPUTS)
        }
        self.forward = _ancestors(
            node
            for spec, node in zip(signature.output_specs, outputs, strict=True)
            if spec.kind not in _GRADIENT_OUTPUTS
        )
        # Autograd saves some outputs (tanh, relu, log_softmax) through an alias, which edge makes a copy that
        # sits in the forward: a value backward reads, so it is forward too and must be recomputed.
        nodes = list(self.graph.nodes)
        end = max((i for i, node in enumerate(nodes) if node in self.forward), default=0)
        self.saved_copies: set[Node] = set()
        for node in nodes[:end]:
            if node.op == "call_function" and all(
                a in self.forward or a.op == "placeholder" for a in node.all_input_nodes
            ):
                self.forward.add(node)
                self.saved_copies.add(node)
        self.readers: dict[Node, list[Node]] = {}  # forward node -> backward nodes that read it
        for node in self.graph.nodes:
            if node.op == "call_function" and node not in self.forward:
                for arg in node.all_input_nodes:
                    if arg in self.forward:
                        self.readers.setdefault(arg, []).append(node)
        user_inputs = {spec.arg.name for spec in signature.input_specs if spec.kind == InputKind.USER_INPUT}
        trained = {spec.target for spec in signature.output_specs if spec.kind == OutputKind.GRADIENT_TO_PARAMETER}
        # The method's inputs and the weights it trains (outputs of a training program) are in its arena.
        self.arena_inputs = {
            node
            for node in self.graph.find_nodes(op="placeholder")
            if node.name in user_inputs or signature.inputs_to_parameters.get(node.name) in trained
        }
        keys = {
            spec.arg.name: key
            for spec in signature.input_specs
            if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER)
            and spec.target is not None
            and (key := parameter_block(spec.target)) is not None
        }
        self.blocks = len({key for key, numbered in keys.values() if numbered}) >= 2
        self.activations: list[Node] = []
        self.group: dict[Node, int] = {}
        weight_keys: dict[Node, frozenset[tuple[str, bool]]] = {}  # weight-only node -> blocks it reads
        ranks: dict[tuple[str, bool], int] = {}
        labels: list[tuple[str, bool]] = []
        for node in self.graph.nodes:
            if node.op == "placeholder":
                if node.name in user_inputs:
                    self.group[node] = -1
                else:
                    weight_keys[node] = frozenset([keys[node.name]] if node.name in keys else [])
                continue
            if node not in self.forward:
                continue
            inputs = node.all_input_nodes
            used = frozenset().union(*(weight_keys.get(arg, frozenset()) for arg in inputs))
            if not any(arg in self.group for arg in inputs):
                weight_keys[node] = used
                continue
            self.activations.append(node)
            if not self.blocks:
                self.group[node] = len(self.activations) - 1
                continue
            group = max(self.group.get(arg, -1) for arg in inputs)
            for key in sorted(used - ranks.keys()):
                # Unnumbered modules between two blocks (a stem's conv and norm, a head) form one group.
                if not (labels and not key[1] and not labels[-1][1]):
                    labels.append(key)
                ranks[key] = len(labels) - 1
            self.group[node] = max(group, *(ranks[key] for key in used), 0)
        self.num_groups = max((self.group[n] for n in self.activations), default=-1) + 1
        # A weight-only value goes with the first group that reads it: recomputed with that segment.
        for node in reversed(self.graph.nodes):
            if node in weight_keys and node.op == "call_function":
                self.group[node] = min((self.group[u] for u in node.users if u in self.group), default=-1)
        self.crossing: list[list[Node]] = [[] for _ in range(max(self.num_groups - 1, 0))]
        for node in self.activations:
            last = max((self.group[u] for u in node.users if u in self.forward), default=-1)
            for k in range(self.group[node], min(last, self.num_groups - 1)):
                self.crossing[k].append(node)

    def nbytes(self, node: Node) -> int:
        return node_nbytes(node)

    def flops(self, node: Node) -> int:
        return _flops(node)

    def arena_after(self, segmentation: Segmentation) -> int:
        return _estimated_arena(self, _best_schedule(self, segmentation))

    def recomputable(self, node: Node, segmentation: Segmentation) -> bool:
        return (
            node in self.forward
            and node not in segmentation.checkpoints
            and node not in self.outputs
            and not _nondeterministic(node)
        )


def _ancestors(roots: Iterable[Node]) -> set[Node]:
    seen: set[Node] = set()
    stack = [node for node in roots if isinstance(node, Node)]
    while stack:
        node = stack.pop()
        if node not in seen and node.op == "call_function":
            seen.add(node)
            stack.extend(node.all_input_nodes)
    return seen


@dataclass(frozen=True)
class Segmentation:
    checkpoints: frozenset[Any]  # values kept from forward to backward (graph nodes of the backend's graph)
    recomputed_groups: frozenset[int]  # groups whose other values backward reads are recomputed


class SegmentedGraph(Protocol):
    """What the segment choice reads from a training graph, whatever the backend's graph: the forward's groups
    (blocks, or forward ops in order), the values each cut keeps, and the bytes and compute of values.
    """

    blocks: bool  # groups are numbered blocks, not single ops
    num_groups: int
    activations: list[Any]  # forward values that depend on a user input, in forward order
    group: dict[Any, int]  # forward value -> its group
    readers: dict[Any, list[Any]]  # forward value -> the backward nodes that read it
    crossing: list[list[Any]]  # the values a cut after group k keeps from forward to backward

    def nbytes(self, value: Any) -> int: ...

    def flops(self, value: Any) -> int: ...

    def arena_after(self, segmentation: Segmentation) -> int:
        """The estimated peak workspace once ``segmentation`` is applied (with its best schedule)."""
        ...


@dataclass
class _Schedule:
    """The rewrite, in order: (backward node to insert before, node, moved). A forward node is copied there;
    a backward node (moved) is moved there. ``redirected`` lists the (reader, forward node) reads that go to
    the copy instead.
    """

    segmentation: Segmentation
    targets: list[Node] = field(default_factory=list)  # values backward read that it will recompute
    steps: list[tuple[Node, Node, bool]] = field(default_factory=list)
    redirected: set[tuple[Node, Node]] = field(default_factory=set)

    @property
    def copies(self) -> int:
        return sum(not moved for _, _, moved in self.steps)


def _schedule(graph: _JointGraph, segmentation: Segmentation, hoist: bool) -> _Schedule:
    """Each copy goes right before the first backward node that needs it, and copies are shared: each forward
    node is recomputed at most once. Recomputation stops at checkpoints, placeholders and kept values.

    With ``hoist``, a backward node that reads only forward values and is smaller than the copies it reads
    (ReLU6's bool masks of a float pre-activation) moves up to where those copies are made, so the copies it
    alone kept alive die before the gradients of the segment arrive.
    """
    schedule = _Schedule(segmentation)
    schedule.targets = [
        node
        for node in graph.readers
        if graph.recomputable(node, segmentation) and graph.group.get(node, -1) in segmentation.recomputed_groups
    ]
    targets = set(schedule.targets)
    available: set[Node] = set()  # copies and moved nodes made so far

    def materialize(node: Node, before: Node) -> None:
        if node in available:
            return
        for arg in node.all_input_nodes:
            if graph.recomputable(arg, segmentation):
                materialize(arg, before)
        available.add(node)
        schedule.steps.append((before, node, False))
        if hoist:
            for reader in graph.readers.get(node, []):
                move(reader, before)

    def move(node: Node, before: Node) -> None:
        # What moving it can free: the copies it reads and moved nodes (other forward values it reads as kept).
        made = [
            arg for arg in node.all_input_nodes if arg in available and (arg in targets or arg not in graph.forward)
        ]
        ready = all(
            arg in available or arg.op == "placeholder" or (arg in graph.forward and arg not in targets)
            for arg in node.all_input_nodes
        )
        if node in available or node is before or not ready or _nondeterministic(node):
            return
        if node_nbytes(node) >= sum(node_nbytes(arg) for arg in made):
            return
        available.add(node)
        schedule.steps.append((before, node, True))
        schedule.redirected.update((node, arg) for arg in made if arg in targets)
        for user in node.users:
            move(user, before)

    for node in list(graph.graph.nodes):
        if node.op == "call_function" and node not in graph.forward:
            for arg in node.all_input_nodes:
                if arg in targets:
                    materialize(arg, node)
                    schedule.redirected.add((node, arg))
    return schedule


def _best_schedule(graph: _JointGraph, segmentation: Segmentation) -> _Schedule:
    """Hoisting mask-like nodes helps where they free a copy and costs where the copy stays alive anyway."""
    plain, hoisted = (_schedule(graph, segmentation, hoist) for hoist in (False, True))
    return hoisted if _estimated_arena(graph, hoisted) < _estimated_arena(graph, plain) else plain


def _rewrite(graph: _JointGraph, schedule: _Schedule) -> None:
    clones: dict[Node, Node] = {}
    for before, node, moved in schedule.steps:
        if moved:
            before.prepend(node)
        else:
            with graph.graph.inserting_before(before):
                clones[node] = graph.graph.node_copy(node, lambda arg: clones.get(arg, arg))
    for reader, node in schedule.redirected:
        reader.replace_input_with(node, clones[node])
    # A saving copy that backward no longer reads would still run in the forward: drop it.
    for node in reversed(list(graph.graph.nodes)):
        if node in graph.saved_copies and not node.users:
            graph.graph.erase_node(node)


def _estimated_arena(graph: _JointGraph, schedule: _Schedule | None) -> int:
    """Largest sum of live arena bytes over the node order after the rewrite, with lifetimes as the memory
    planner sets them: from the first to the last node that writes or reads a value; inputs and trainable
    weights (outputs of a training program) for the whole method; other weights are constants, not arena.
    """
    steps = schedule.steps if schedule else []
    redirected = schedule.redirected if schedule else set()
    inserted: dict[Node, list[tuple[Node, bool]]] = {}
    for before, node, moved in steps:
        inserted.setdefault(before, []).append((node, moved))
    copied = {node for _, node, moved in steps if not moved}
    moved_nodes = {node for _, node, moved in steps if moved}

    def reads(node: Node) -> list[Any]:
        return [("copy", arg) if (node, arg) in redirected else arg for arg in node.all_input_nodes]

    kept = graph.kept_to_end

    # A value is a node or ("copy", node); each row lists the values one node writes and reads.
    rows: list[list[Any]] = []
    for node in graph.graph.nodes:
        for item, moved in inserted.get(node, []):
            if moved:
                rows.append([item, *reads(item)])
            else:
                rows.append([("copy", item), *(("copy", a) if a in copied else a for a in item.all_input_nodes)])
        if node not in moved_nodes:
            rows.append([node, *reads(node)] if node.op != "output" else [v for v in reads(node) if v in kept])
    first: dict[Any, int] = {}
    last: dict[Any, int] = {}
    for i, values in enumerate(rows):
        for value in values:
            first.setdefault(value, i)
            last[value] = i
    delta = [0] * (len(rows) + 1)
    for value, end in last.items():
        node = value[1] if isinstance(value, tuple) else value
        if node.op == "placeholder":
            if node in graph.arena_inputs:
                delta[0] += node_nbytes(node)
            continue
        # A multi-output node's tensors are counted once, through the getitem nodes that name them.
        if not isinstance(node.meta.get("val"), (tuple, list)):
            delta[first[value]] += node_nbytes(node)
            delta[end + 1] -= node_nbytes(node)
    peak = live = 0
    for change in delta:
        live += change
        peak = max(peak, live)
    return peak


def _plan(graph: _JointGraph, config: RecomputeConfig) -> tuple[RecomputePlan, _Schedule]:
    """The plan and its schedule; an empty one where recomputation would not lower the estimated arena
    (the peak lies where nothing is recomputed, e.g. in the forward or the last segment).
    """
    schedule = _best_schedule(graph, choose_segmentation(graph, config))
    before = _estimated_arena(graph, None)
    after = _estimated_arena(graph, schedule)
    if after >= before:
        schedule, after = _Schedule(schedule.segmentation), before
    checkpoints = schedule.segmentation.checkpoints
    plan = RecomputePlan(
        segmentation="blocks" if graph.blocks else "ops",
        checkpoints=tuple(n.name for n in graph.graph.nodes if n in checkpoints),
        recomputed=tuple(n.name for n in schedule.targets),
        copies=schedule.copies,
        released_bytes=sum(node_nbytes(n) for n in schedule.targets),
        estimated_peak_bytes=(before, after),
    )
    return plan, schedule


def _segmentation(graph: SegmentedGraph, cuts: list[int], kept: Iterable[int] = ()) -> Segmentation:
    """Checkpoints at ``cuts`` (after those groups); the segments before the last cut are recomputed, except
    those numbered in ``kept``.
    """
    bounds = [-1, *sorted(cuts)]
    skip = set(kept)
    groups = {g for i in range(len(cuts)) if i not in skip for g in range(bounds[i] + 1, bounds[i + 1] + 1)}
    return Segmentation(frozenset(n for k in cuts for n in graph.crossing[k]), frozenset(groups))


def _saved_bytes_per_group(graph: SegmentedGraph) -> list[int]:
    """Bytes of the forward values backward reads, by the group that computes them."""
    sizes = [0] * graph.num_groups
    for value in graph.readers:
        if graph.group.get(value, -1) >= 0:
            sizes[graph.group[value]] += graph.nbytes(value)
    return sizes


def _balanced_cuts(graph: SegmentedGraph, segments: int) -> list[int]:
    """``segments - 1`` cuts balancing the bytes backward reads per segment, preferring small checkpoints.

    Both terms of the choice are bytes: a cut's distance from the even split, and its checkpoints' size.
    """
    candidates = len(graph.crossing)
    if segments - 1 >= candidates:
        return list(range(candidates))
    sizes = _saved_bytes_per_group(graph)
    cumulative = [sum(sizes[: k + 1]) for k in range(candidates)]
    cost = [sum(graph.nbytes(n) for n in nodes) for nodes in graph.crossing]
    cuts: list[int] = []
    for j in range(1, segments):
        target = sum(sizes) * j / segments
        window = range(cuts[-1] + 1 if cuts else 0, candidates - (segments - 1 - j))
        cuts.append(min(window, key=lambda k: abs(cumulative[k] - target) + cost[k]))
    return cuts


def choose_segmentation(graph: SegmentedGraph, config: RecomputeConfig) -> Segmentation:
    """Where ``config`` cuts the forward of ``graph`` and which segments backward recomputes."""
    if not graph.crossing:
        return Segmentation(frozenset(), frozenset())
    policy = config.segments
    if policy in ("blocks", "auto") and not graph.blocks:
        policy = "sqrt"
    if policy in ("blocks", "auto"):
        cuts = list(range(len(graph.crossing)))
    elif policy == "sqrt":
        cuts = _balanced_cuts(graph, max(2, round(math.sqrt(graph.num_groups))))
    else:
        cuts = _balanced_cuts(graph, int(policy))
    if config.segments == "auto":
        return _keep_cheap_segments(graph, cuts)
    return _segmentation(graph, cuts)


def _keep_cheap_segments(graph: SegmentedGraph, cuts: list[int]) -> Segmentation:
    """Stop recomputing segments whose values do not set the peak, most compute per byte released first."""
    segmentation = _segmentation(graph, cuts)
    bounds = [-1, *cuts]
    compute_per_byte: dict[int, float] = {}
    for i in range(len(cuts)):
        nodes = [n for n in graph.activations if bounds[i] < graph.group[n] <= bounds[i + 1]]
        released = sum(graph.nbytes(n) for n in nodes if n in graph.readers and n not in segmentation.checkpoints)
        compute_per_byte[i] = sum(graph.flops(n) for n in nodes) / max(released, 1)
    best = graph.arena_after(segmentation)
    kept: list[int] = []
    for segment in sorted(compute_per_byte, key=compute_per_byte.__getitem__, reverse=True):
        trial = _segmentation(graph, cuts, [*kept, segment])
        if graph.arena_after(trial) <= best:
            kept.append(segment)
            segmentation = trial
    return segmentation


def _describe(config: RecomputeConfig) -> str:
    return f"recompute {config.segments}"


# Both backends: ExecuTorch runs recompute_activations on the joint graph, ONNX Runtime onnx_recompute on its
# training graph; both take the config as ``recompute=``. It runs before the fused update (order): that pass
# removes the gradient outputs through which this one finds the forward.
register_technique(Technique("recompute", RecomputeConfig, Stage.GRAPH_PASS, order=10, describe=_describe))
