"""Fused optimizer update: SGD/AdamW applied inside the ExecuTorch training graph, right after each gradient.

A training method that returns its gradients keeps all of them alive at the end of the step (the app applies
the optimizer afterwards), so the planned arena holds a full set of gradients. This pass turns each trainable
parameter into a mutable buffer of the program and each gradient output into an update of that buffer,
inserted right after the gradient and every read of the parameter: the gradient dies there, and gradient
memory becomes about one tensor instead of all of them. Optimizer state (SGD momentum, AdamW's exp_avg and
exp_avg_sq) becomes mutable buffers too. ExecuTorch keeps mutable buffers across calls of a method.

The arithmetic is ``torch.optim.SGD`` / ``AdamW`` (single-tensor path), written out in core ATen ops with
torch's formulas (``rsub``, ``lerp``, ``addcmul`` and ``addcdiv`` are not core ATen). Every value is written into
its buffer with ``copy_`` as soon as it is final: ``to_executorch`` would otherwise append the write-backs at the
end of the graph and keep every new value alive until then, and later reads go through the buffer instead of
keeping a temporary alive.

The step number is an input of the method (1-based, int64 scalar): AdamW's bias corrections and the first
step of SGD momentum (which takes the gradient as is) come from it, so optimizer state needs no initial value
in the program file. Step 0 is a dry run: loss and logits without any change to the parameters (the update is
applied with learning rate 0); the app uses it to obtain the parameter tensors before training. The learning
rate is an input too (float32 scalar, so apps can schedule it) unless the config bakes it in.

The method returns the loss and the logits, then the parameters and the optimizer state, which alias the
program's buffers (ExecuTorch 1.5.1 hands out a method's outputs without copying them): the host reads and
writes them in place to checkpoint and resume. Run after ``to_edge`` and after ``recompute_activations``, which
finds the forward through the gradient outputs that this pass removes.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import (
    ExportGraphSignature,
    InputKind,
    InputSpec,
    OutputKind,
    OutputSpec,
    TensorArgument,
)
from torch.fx import Graph, Node
from torch.utils import _pytree as pytree

from exporters.config import OptimizerConfig
from exporters.node_roles import GRADIENT_OF, OPTIMIZER_STATE_OF
from exporters.technique import Stage, Technique, register_technique

if TYPE_CHECKING:
    from executorch.exir import EdgeProgramManager

LR_INPUT = "lr"
STEP_INPUT = "step"
STATE_PREFIX = "optimizer/"  # optimizer state outputs are named as in checkpoints: optimizer/<state>/<parameter>
INPUT_DESCRIPTIONS = {
    LR_INPUT: {"shape": [], "dtype": "float32", "meaning": "learning rate of this step"},
    STEP_INPUT: {
        "shape": [],
        "dtype": "int64",
        "meaning": "optimizer step number, 1-based; 0 runs forward and backward without updating anything",
    },
}


def _edge_ops() -> Any:
    # ExecuTorch is imported when the pass runs, not with the config: plans and ONNX Runtime exports use the config.
    from executorch.exir.dialects._ops import ops as exir_ops

    return exir_ops.edge


@dataclass(frozen=True)
class FusedUpdateConfig:
    """Apply the bundle's optimizer inside the training program.

    ``learning_rate``: ``"input"`` (default) makes it a float32 scalar input of every training call, so the app
    can schedule it; ``"constant"`` bakes the optimizer config's ``lr`` into the program.
    """

    learning_rate: Literal["input", "constant"] = "input"

    def __post_init__(self) -> None:
        if self.learning_rate not in ("input", "constant"):
            raise ValueError(f"learning_rate must be 'input' or 'constant', got {self.learning_rate!r}")

    def to_json(self) -> dict[str, Any]:
        return {"learning_rate": self.learning_rate}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FusedUpdateConfig:
        return cls(learning_rate=data["learning_rate"])


@dataclass(frozen=True)
class FusedMethod:
    """What the pass changed in a training method's interface."""

    added_inputs: tuple[str, ...]  # appended to the user inputs: lr (if an input), step
    buffers: tuple[str, ...]  # appended to the outputs: parameters, then optimizer state (checkpoint names)


def state_names(optimizer: OptimizerConfig) -> tuple[str, ...]:
    """Optimizer state tensors per parameter, in output order."""
    if optimizer.kind == "adamw":
        return ("exp_avg", "exp_avg_sq")
    return ("momentum",) if optimizer.momentum else ()


def fuse_optimizer_update(
    program: EdgeProgramManager, optimizer: OptimizerConfig, config: FusedUpdateConfig
) -> dict[str, FusedMethod]:
    """Fuse the optimizer into every training method of ``program`` (edited in place); returns their interfaces.

    Methods without gradient outputs (predict) are left unchanged.
    """
    fused = {}
    for name in sorted(program.methods):
        ep = program.exported_program(name)
        if any(spec.kind == OutputKind.GRADIENT_TO_PARAMETER for spec in ep.graph_signature.output_specs):
            fused[name] = _fuse(ep, optimizer, config)
    if not fused:
        raise ValueError("fused update: no method returns gradients; export the joint training graph first")
    return fused


@dataclass
class _Buffer:
    """A mutable buffer of the fused program: a trainable parameter or one of its optimizer state tensors."""

    target: str  # name in the program's state dict
    output: str  # name of its output (the checkpoint's name for it)
    node: Node  # its placeholder
    written: Node | None = None  # the last copy_ into it so far

    @property
    def value(self) -> Node:
        """The buffer as the graph reads it at this point: through its last write, which orders the reads after it."""
        return self.written or self.node


class _Builder:
    """Adds edge ops to a graph with their fake values, so later passes see shapes and dtypes."""

    def __init__(self, graph: Graph, fake_mode: Any) -> None:
        self.graph = graph
        self.fake_mode = fake_mode
        self.edge = _edge_ops()
        self.aten = self.edge.aten

    def op(self, target: Callable[..., Any], *args: Any, **kwargs: Any) -> Node:
        node = self.graph.call_function(target, args, kwargs)
        fake_args, fake_kwargs = pytree.tree_map_only(Node, lambda n: n.meta["val"], (args, kwargs))
        with self.fake_mode:
            node.meta["val"] = target(*fake_args, **fake_kwargs)
        return node

    def placeholder(self, name: str, like: torch.Tensor) -> Node:
        node = self.graph.placeholder(name)
        with self.fake_mode:
            node.meta["val"] = torch.empty_like(like)
        return node

    def write(self, buffer: _Buffer, value: Node) -> None:
        """Store ``value`` in ``buffer`` now, so ``value`` dies here; later reads go through the returned alias."""
        written = self.graph.call_function(torch.ops.aten.copy_.default, (buffer.value, value))
        written.meta["val"] = buffer.node.meta["val"]  # copy_ returns its destination
        buffer.written = written

    def one_minus(self, x: Node) -> Node:
        return self.op(self.aten.add.Scalar, self.op(self.aten.mul.Scalar, x, -1.0), 1.0)  # rsub is not core ATen

    def cast(self, x: Node, dtype: torch.dtype) -> Node:
        return self.op(self.edge.dim_order_ops._to_dim_order_copy.default, x, dtype=dtype, dim_order=[])

    def full(self, value: float, dtype: torch.dtype) -> Node:
        return self.op(self.aten.full.default, [], value, dtype=dtype)


@dataclass(frozen=True)
class _Scalars:
    """Per-step scalars, computed once at the start of the method."""

    first: Node  # bool: step <= 1, optimizer state starts from the gradient
    neg_lr: Node  # float32: -lr, or -0 on a dry run (step 0)
    zero: Node  # float32 0, for where()
    sgd_dampened: Node | None = None  # float32: 1 - dampening, or 1 on the first step (torch takes d_p as is)
    adamw_decay: Node | None = None  # float32: 1 - lr * weight_decay
    adamw_neg_step_size: Node | None = None  # float32: -lr / (1 - beta1^step)
    adamw_bias_correction2_sqrt: Node | None = None  # float32: sqrt(1 - beta2^step)


def _fuse(ep: ExportedProgram, optimizer: OptimizerConfig, config: FusedUpdateConfig) -> FusedMethod:
    graph = ep.graph_module.graph
    signature = ep.graph_signature
    placeholders = {node.name: node for node in graph.find_nodes(op="placeholder")}
    build = _Builder(graph, next(iter(placeholders.values())).meta["val"].fake_mode)
    output_node = graph.output_node()
    outputs = list(output_node.args[0])
    gradients = {
        spec.target: node
        for spec, node in zip(signature.output_specs, outputs, strict=True)
        if spec.kind == OutputKind.GRADIENT_TO_PARAMETER and spec.target is not None
    }
    param_inputs = {spec.target: spec.arg.name for spec in signature.input_specs if spec.target in gradients}
    # In gradient order: the order of the manifest's trainable parameters.
    params = {fqn: _Buffer(fqn, fqn, placeholders[param_inputs[fqn]]) for fqn in gradients}
    for param in params.values():
        # A buffer's value does not require grad: passes that re-trace would refuse the in-place copy_.
        param.node.meta["val"] = param.node.meta["val"].detach()
        # The weights' initial values go into the program; optimizer state starts from the step number.
        param.node.meta["et_init_buffer"] = True

    # Placeholders: optimizer state buffers before the user inputs, lr and step after them.
    user_specs = [spec for spec in signature.input_specs if spec.kind == InputKind.USER_INPUT]
    kinds = state_names(optimizer)
    state: dict[tuple[str, str], _Buffer] = {}
    with graph.inserting_before(placeholders[user_specs[0].arg.name]):
        for fqn in gradients:
            for kind in kinds:
                node = build.placeholder(f"b_optimizer_{kind}_{fqn.replace('.', '_')}", params[fqn].node.meta["val"])
                node.meta[OPTIMIZER_STATE_OF] = fqn
                state[fqn, kind] = _Buffer(f"optimizer.{kind}.{fqn}", f"{STATE_PREFIX}{kind}/{fqn}", node)
    with graph.inserting_after(placeholders[user_specs[-1].arg.name]):
        step = build.placeholder(STEP_INPUT, torch.zeros((), dtype=torch.int64))
    new_inputs = [step]
    if config.learning_rate == "input":
        with graph.inserting_before(step):
            lr = build.placeholder(LR_INPUT, torch.zeros((), dtype=torch.float32))
        new_inputs.insert(0, lr)
    with graph.inserting_before(next(node for node in graph.nodes if node.op != "placeholder")):
        if config.learning_rate == "constant":
            lr = build.full(optimizer.lr, torch.float32)
        scalars = _step_scalars(build, optimizer, lr, step)

    order = {node: i for i, node in enumerate(graph.nodes)}
    for fqn, grad in gradients.items():
        param = params[fqn]
        grad.meta[GRADIENT_OF] = fqn  # no output spec names it any more: the memory profile finds it by this
        # After every read of the old weights (backward reads them to propagate further) and of the gradient. The
        # planner keeps all outputs of a multi-output op (convolution_backward) alive until its last getitem.
        siblings = list(grad.args[0].users) if grad.target is operator.getitem else []
        anchor = max([grad, *siblings, *_readers(grad), *_readers(param.node)], key=order.__getitem__)
        with graph.inserting_before(anchor.next):
            _update(build, optimizer, scalars, grad, param, {kind: state[fqn, kind] for kind in kinds})

    buffers = [*params.values(), *state.values()]
    kept = [
        (spec, node)
        for spec, node in zip(signature.output_specs, outputs, strict=True)
        if spec.kind != OutputKind.GRADIENT_TO_PARAMETER
    ]
    # Mutations come first in an exported program's outputs. Each names its buffer's placeholder, not its last
    # copy_: the writes are in place, so to_executorch adds no write-back, and no output tensor is planned apart from
    # the buffer (a copy_ output would get arena of its own at the end of the method). The emitter drops mutation
    # outputs: the buffers are returned again as plain outputs after the originals (loss, logits), which the
    # runtime hands out as aliases of its buffers.
    output_node.args = ((*(b.node for b in buffers), *(node for _, node in kept), *(b.node for b in buffers)),)
    input_specs = []
    for spec in signature.input_specs:
        if spec is user_specs[0]:
            input_specs += [_buffer_spec(b) for b in state.values()]
        input_specs.append(_buffer_spec(params[spec.target]) if spec.target in params else spec)
    input_specs += [InputSpec(InputKind.USER_INPUT, TensorArgument(node.name), None) for node in new_inputs]
    output_specs = [
        *(OutputSpec(OutputKind.BUFFER_MUTATION, TensorArgument(b.node.name), b.target) for b in buffers),
        *(spec for spec, _ in kept),
        *(OutputSpec(OutputKind.USER_OUTPUT, TensorArgument(b.node.name), None) for b in buffers),
    ]
    ep._graph_signature = ExportGraphSignature(input_specs, output_specs)
    for fqn in params:
        ep._state_dict[fqn] = ep._state_dict[fqn].detach()
    for (fqn, _), b in state.items():
        ep._state_dict[b.target] = torch.zeros_like(ep._state_dict[fqn])  # not serialized: no et_init_buffer
    call = ep._module_call_graph[0].signature
    assert call is not None
    call.forward_arg_names = [*call.forward_arg_names, *(node.name for node in new_inputs)]
    call.in_spec = pytree.tree_flatten((tuple(call.forward_arg_names), {}))[1]
    call.out_spec = pytree.tree_flatten(tuple(range(len(kept) + len(buffers))))[1]
    graph.lint()
    ep.graph_module.recompile()
    return FusedMethod(tuple(node.name for node in new_inputs), tuple(b.output for b in buffers))


def _buffer_spec(buffer: _Buffer) -> InputSpec:
    return InputSpec(InputKind.BUFFER, TensorArgument(buffer.node.name), buffer.target, persistent=True)


def _readers(node: Node) -> list[Node]:
    """Nodes that read ``node``'s memory: its users, and the users of views of it (to_executorch makes view_copy
    a memory view), excluding the graph output."""
    readers = []
    for user in node.users:
        if user.op == "output":
            continue
        readers.append(user)
        if user.target == _edge_ops().aten.view_copy.default:  # becomes a memory view in to_executorch
            readers += _readers(user)
    return readers


def _step_scalars(build: _Builder, optimizer: OptimizerConfig, lr: Node, step: Node) -> _Scalars:
    first = build.op(build.aten.le.Scalar, step, 1)
    zero = build.full(0.0, torch.float32)
    # A dry run (step 0) updates with learning rate 0: parameters unchanged bit for bit.
    lr = build.op(build.aten.where.self, build.op(build.aten.gt.Scalar, step, 0), lr, zero)
    neg_lr = build.op(build.aten.mul.Scalar, lr, -1.0)
    if optimizer.kind != "adamw":
        dampened = None
        if optimizer.dampening:
            dampened = build.op(
                build.aten.where.self,
                first,
                build.full(1.0, torch.float32),
                build.full(1 - optimizer.dampening, torch.float32),
            )
        return _Scalars(first, neg_lr, zero, sgd_dampened=dampened)
    # As torch.optim.AdamW: scalars in double precision, rounded to float32 where they meet the tensors.
    beta1, beta2 = optimizer.betas
    steps = build.op(build.aten.clamp.default, build.cast(step, torch.float64), 1.0)
    lr64 = build.cast(lr, torch.float64)
    bias_correction1 = build.one_minus(build.op(build.aten.pow.Scalar, beta1, steps))
    bias_correction2 = build.one_minus(build.op(build.aten.pow.Scalar, beta2, steps))
    neg_step_size = build.op(build.aten.mul.Scalar, build.op(build.aten.div.Tensor, lr64, bias_correction1), -1.0)
    decay = build.one_minus(build.op(build.aten.mul.Scalar, lr64, optimizer.weight_decay))
    return _Scalars(
        first,
        neg_lr,
        zero,
        adamw_decay=build.cast(decay, torch.float32),
        adamw_neg_step_size=build.cast(neg_step_size, torch.float32),
        adamw_bias_correction2_sqrt=build.cast(build.op(build.aten.sqrt.default, bias_correction2), torch.float32),
    )


def _update(
    build: _Builder,
    optimizer: OptimizerConfig,
    scalars: _Scalars,
    grad: Node,
    param: _Buffer,
    state: dict[str, _Buffer],
) -> None:
    """One parameter's update, placed where the graph builder points. Besides the gradient, at most two
    parameter-sized temporaries are alive at a time."""
    op = build.op
    c = optimizer
    if c.kind == "adamw":
        _adamw(build, c, scalars, grad, param, state["exp_avg"], state["exp_avg_sq"])
        return
    d_p = op(build.aten.add.Tensor, grad, param.value, alpha=c.weight_decay) if c.weight_decay else grad
    if c.momentum:
        buf = state["momentum"]
        # Before the first step the buffer holds whatever its memory held; torch's buffer starts as d_p.
        build.write(buf, op(build.aten.where.self, scalars.first, scalars.zero, buf.value))
        build.write(buf, op(build.aten.mul.Scalar, buf.value, c.momentum))
        if c.dampening:
            assert scalars.sgd_dampened is not None
            build.write(buf, op(build.aten.add.Tensor, buf.value, op(build.aten.mul.Tensor, d_p, scalars.sgd_dampened)))
        else:
            build.write(buf, op(build.aten.add.Tensor, buf.value, d_p))
        d_p = op(build.aten.add.Tensor, d_p, buf.value, alpha=c.momentum) if c.nesterov else buf.value
    build.write(param, op(build.aten.add.Tensor, param.value, op(build.aten.mul.Tensor, d_p, scalars.neg_lr)))


def _adamw(
    build: _Builder,
    c: OptimizerConfig,
    scalars: _Scalars,
    grad: Node,
    param: _Buffer,
    exp_avg: _Buffer,
    exp_avg_sq: _Buffer,
) -> None:
    op = build.op
    beta1, beta2 = c.betas
    assert scalars.adamw_decay is not None and scalars.adamw_neg_step_size is not None
    assert scalars.adamw_bias_correction2_sqrt is not None
    if c.weight_decay:
        build.write(param, op(build.aten.mul.Tensor, param.value, scalars.adamw_decay))
    # Before the first step the buffers hold whatever their memory held; torch's start as zeros.
    build.write(exp_avg, op(build.aten.where.self, scalars.first, scalars.zero, exp_avg.value))
    build.write(exp_avg_sq, op(build.aten.where.self, scalars.first, scalars.zero, exp_avg_sq.value))
    # exp_avg.lerp_(grad, 1 - beta1), with torch's formula for each side of weight 0.5.
    weight = 1 - beta1
    diff = op(build.aten.sub.Tensor, grad, exp_avg.value)
    if weight < 0.5:
        build.write(exp_avg, op(build.aten.add.Tensor, exp_avg.value, diff, alpha=weight))
    else:
        build.write(exp_avg, op(build.aten.sub.Tensor, grad, diff, alpha=1 - weight))
    # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    build.write(exp_avg_sq, op(build.aten.mul.Scalar, exp_avg_sq.value, beta2))
    squared = op(build.aten.mul.Tensor, op(build.aten.mul.Scalar, grad, 1 - beta2), grad)
    build.write(exp_avg_sq, op(build.aten.add.Tensor, exp_avg_sq.value, squared))
    # denom = exp_avg_sq.sqrt() / bias_correction2_sqrt + eps; param.addcdiv_(exp_avg, denom, value=-step_size)
    root = op(build.aten.div.Tensor, op(build.aten.sqrt.default, exp_avg_sq.value), scalars.adamw_bias_correction2_sqrt)
    denom = op(build.aten.add.Scalar, root, c.eps)
    step = op(build.aten.mul.Tensor, op(build.aten.div.Tensor, exp_avg.value, denom), scalars.adamw_neg_step_size)
    build.write(param, op(build.aten.add.Tensor, param.value, step))


def _check(config: FusedUpdateConfig, micro_batches: int) -> None:
    if micro_batches > 1:
        raise ValueError(
            f"fused_update applies the optimizer on every call of the training method, so it cannot accumulate "
            f"{micro_batches} micro-batches; use micro_batches=1 with a smaller batch_size, or drop fused_update "
            "(the app then accumulates gradients and runs the optimizer)"
        )


# ExecuTorch only. ONNX graphs are functional: ONNX Runtime keeps parameters in its checkpoint state and changes
# them only through its separate optimizer model, so an update cannot live in the training graph.
register_technique(
    Technique(
        "fused_update",
        FusedUpdateConfig,
        Stage.GRAPH_PASS,
        backends=frozenset({"executorch"}),
        order=20,
        describe=lambda config: "fused into the program",
        slot="optimizer",
        check=_check,
        unsupported="fused_update is not possible on the {backend} backend (its optimizer is a separate model that "
        "runs after the training graph); use backend='executorch', or drop fused_update",
    )
)
