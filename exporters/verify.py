"""Verified export: a bundle trains like eager PyTorch in its real runtime, or the export refuses it.

Two checks, both run by ``export_bundle`` before the bundle replaces anything:

- ``check_runtime``: every kernel (and delegate) the ExecuTorch program calls is registered in the installed runtime,
  before the program file is written (``UnsupportedOperatorError``: ExecuTorch 1.5.1 has no ``avg_pool2d_backward``, so
  such a program exported and then failed at its first step). ONNX Runtime's training build refuses ops without a
  gradient when the artifacts are generated (``onnxruntime_export``), with the same error type.
- ``verify_training``: the training method runs once in the runtime, as the host runner runs it, on a
  deterministic batch, and its loss, logits and every gradient are compared with eager PyTorch on the same model
  and batch (fused-update programs: the updated parameters and the optimizer state; micro-batch bundles: the
  accumulated gradient against the full batch). A mismatch raises ``VerificationError`` naming the parameters
  whose gradients are wrong and the operators between them and the loss (ExecuTorch 1.5.1's max-pool backward
  is wrong: every parameter before a ``nn.MaxPool2d`` got gradients 4x-19x off, FACTS.md).

Tolerance (``Tolerance``), per tensor: ``max|runtime - eager| <= abs + rel * max|eager|``. The runtimes sum in
another order than eager PyTorch (portable kernels, im2col/matmul routes, XNNPACK), so elementwise relative
checks fail on small elements that are sums of cancelling terms; scaled by the tensor's largest element, float32
rounding over N summed terms stays below ~N * 6e-8. Measured largest relative error over the reference models and
every bundle kind (``python benchmarks/verify_cost.py``, benchmarks/RESULTS-verify.md): 1.2e-6 for loss, logits
and gradients; 1.2e-4 for a fused update's parameter change, which is the parameters' own float32 rounding against
an lr-sized step (allowed for as 4 ulp of the largest parameter). The known wrong kernel gives errors of 100 and
more. ``rel = 1e-3`` leaves wide headroom for rounding and still refuses anything a user would notice;
``abs = 1e-6`` only covers all-zero tensors.

Deep networks with ReLU-type kinks are more sensitive: a last-bit difference upstream flips a ReLU6 mask, and the
gradients below it move by one element's share of a sum. MobileNetV2 x1.0 at 96x96 (batch 8) was refused at 1e-3
(``features.18.1.bias`` off by 4.1e-5 where 1.1e-5 was allowed), while eager PyTorch in float32 is itself 6.5e-3
(relative) away from the same step in float64 there. So when a tensor is outside the tolerance, the step also
runs in float64, and the relative tolerance is raised to ``ROUNDING_HEADROOM`` times float32 eager's own largest
relative distance from it (capped at ``MAX_RELATIVE``, 5%): the runtime may be as far from eager as a few other
float32 summation orders would be. The known wrong kernels are 4x-270x off, far above the cap. The tolerance
written to the manifest is the one applied.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from exporters.bundle import Bundle, BundleError
from exporters.config import OptimizerConfig
from exporters.losses import LossSpec, encode_labels
from exporters.training_graph import strip_prefix

DEFAULT_SEED = 20261207
ROUNDING_HEADROOM = 4.0
MAX_RELATIVE = 0.05
_FLOAT32_EPS = torch.finfo(torch.float32).eps
# Kernels whose absence has a better fix than the generic one.
_AVERAGE_POOL_FIX = (
    "replace the average pooling (a global one: x.mean((2, 3)), whose backward has kernels; else a strided "
    "convolution), freeze every parameter before it (--trainable) so its backward is not needed, or export "
    "with --backend onnxruntime"
)
_OPERATOR_FIXES = {
    "aten::avg_pool2d_backward": _AVERAGE_POOL_FIX,
    "aten::_adaptive_avg_pool2d_backward": _AVERAGE_POOL_FIX,
}


class UnsupportedOperatorError(ValueError):
    """The program calls an operator the target runtime has no kernel for: it would fail at its first step."""


class VerificationError(ValueError):
    """The bundle, run in its runtime, does not train like eager PyTorch: it is refused."""

    def __init__(self, message: str, mismatches: list[TensorError]) -> None:
        super().__init__(message)
        self.mismatches = mismatches


@dataclass(frozen=True)
class Tolerance:
    """Per tensor: ``max|runtime - eager| <= abs + rel * max|eager|`` (see the module docstring for why)."""

    abs: float = 1e-6
    rel: float = 1e-3

    def to_json(self) -> dict[str, float]:
        return {"abs": self.abs, "rel": self.rel}


@dataclass(frozen=True)
class TensorError:
    """How far one runtime tensor is from eager PyTorch's."""

    name: str  # "loss", "logits", "gradient/<parameter>", "parameter/<parameter>", "optimizer/<state>/<parameter>"
    error: float  # max |runtime - eager|
    scale: float  # max |eager|
    allowed: float

    @property
    def relative(self) -> float:
        return self.error / self.scale if self.scale else self.error

    @property
    def ok(self) -> bool:
        return self.error <= self.allowed  # NaN compares false: refused

    @property
    def parameter(self) -> str | None:
        kind, _, rest = self.name.partition("/")
        return {"gradient": rest, "parameter": rest, "optimizer": rest.partition("/")[2]}.get(kind)


def compare(
    name: str, runtime: torch.Tensor, eager: torch.Tensor, tolerance: Tolerance, slack: float = 0.0
) -> TensorError:
    """``slack``: extra absolute error the comparison itself introduces (float32 rounding of a recovered value)."""
    runtime, eager = runtime.detach().double(), eager.detach().double()
    if runtime.shape != eager.shape:
        return TensorError(name, float("inf"), 0.0, 0.0)
    scale = float(eager.abs().max()) if eager.numel() else 0.0
    error = float((runtime - eager).abs().max()) if eager.numel() else 0.0
    if not torch.isfinite(runtime).all():
        error = float("nan")
    return TensorError(name, error, scale, tolerance.abs + tolerance.rel * scale + slack)


@dataclass(frozen=True)
class Verification:
    """What ``verify_training`` checked; ``to_json`` is the manifest's ``verification``."""

    tolerance: Tolerance
    seed: int
    errors: list[TensorError]
    seconds: float

    @property
    def largest(self) -> TensorError:
        return max(self.errors, key=lambda e: e.relative)

    def to_json(self) -> dict[str, Any]:
        worst = self.largest
        return {
            "verified": True,
            "tolerance": self.tolerance.to_json(),
            "largest_error": {"tensor": worst.name, "abs": worst.error, "relative": worst.relative},
            "tensors_compared": len(self.errors),
            "batch_seed": self.seed,
            "seconds": round(self.seconds, 3),
        }


SKIPPED = {"verified": False}


def runtime_version(backend: str) -> str:
    """The installed runtime's version, for messages ("ExecuTorch 1.5.1")."""
    if backend == "onnxruntime":
        import onnxruntime

        return f"ONNX Runtime {onnxruntime.__version__}"
    try:
        return f"ExecuTorch {version('executorch')}"
    except PackageNotFoundError:
        return "ExecuTorch (unknown version)"


def check_runtime(requirements: dict[str, Any]) -> None:
    """Refuse a program that calls an operator or a delegate the installed ExecuTorch runtime lacks
    (``backend_options.runtime``: ``operators``, ``backends``), before any file is written."""
    from executorch.extension.pybindings.portable_lib import _get_operator_names, _get_registered_backend_names

    backends = sorted(set(requirements["backends"]) - set(_get_registered_backend_names()))
    if backends:
        raise UnsupportedOperatorError(
            f"the program delegates to {', '.join(backends)}, which {runtime_version('executorch')} here lacks: "
            "install a runtime built with it, or export without speed routes (--no-speed-routes)"
        )
    # An operator without an overload is listed as ``aten::copy_.``, registered as ``aten::copy_``.
    missing = sorted({op.removesuffix(".") for op in requirements["operators"]} - set(_get_operator_names()))
    if not missing:
        return
    op = missing[0].rpartition(".")[0] or missing[0]
    fix = _OPERATOR_FIXES.get(
        op,
        "freeze every parameter before the layer that calls it (requires_grad=False / --trainable) so the "
        "program does not need it, replace that layer, or export with --backend onnxruntime",
    )
    more = f" (and {', '.join(missing[1:])})" if len(missing) > 1 else ""
    raise UnsupportedOperatorError(
        f"{missing[0]}{more} has no kernel in {runtime_version('executorch')}, so training would fail "
        f"at its first step: {fix}"
    )


def deterministic_batch(bundle: Bundle, loss: LossSpec, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One optimizer step's micro-batches: standard-normal inputs, uniformly random classes."""
    manifest = bundle.manifest
    gen = torch.Generator().manual_seed(seed)
    classes = len(manifest.classes)
    batches = []
    for _ in range(manifest.training["micro_batches"]):
        inputs = torch.randn(manifest.inputs[0].shape, generator=gen)
        labels = torch.randint(0, classes, (manifest.batch_size,), generator=gen)
        batches.append((inputs, encode_labels(loss, labels, classes)))
    return batches


def verify_training(
    bundle: Bundle,
    model: nn.Module,
    loss: LossSpec,
    optimizer: OptimizerConfig,
    *,
    tolerance: Tolerance | None = None,
    seed: int = DEFAULT_SEED,
) -> Verification:
    """Run one training step of ``bundle`` in its runtime and compare it with ``model`` (the prepared model the
    bundle was exported from, unchanged) in eager PyTorch; raise ``VerificationError`` on a mismatch."""
    tolerance = tolerance or Tolerance()
    start = time.perf_counter()
    batches = deterministic_batch(bundle, loss, seed)
    eager = _eager_step(model, loss, batches)
    try:
        runtime = _runtime_step(bundle, batches)
    except (BundleError, RuntimeError, ValueError, OSError) as exc:
        raise VerificationError(
            f"the {bundle.manifest.backend} runtime cannot run the exported training method ({exc}); the bundle "
            "would fail on the device: export with another backend, or report the model",
            [],
        ) from exc
    errors = _compare_step(runtime, eager, model, optimizer, tolerance)
    if any(not e.ok for e in errors):
        # Only then, so the manifest keeps the base tolerance wherever it holds (the float64 step: 0.5 s CPU on
        # MobileNetV2 x1.0 96x96 b8).
        tolerance = _with_rounding_headroom(tolerance, eager, model, loss, batches)
        errors = _compare_step(runtime, eager, model, optimizer, tolerance)
    result = Verification(tolerance, seed, errors, time.perf_counter() - start)
    wrong = [e for e in errors if not e.ok]
    if wrong:
        raise VerificationError(_explain(bundle, wrong, model, loss, batches[0]), wrong)
    return result


def _compare_step(
    runtime: _Step, eager: _Step, model: nn.Module, optimizer: OptimizerConfig, tolerance: Tolerance
) -> list[TensorError]:
    errors = [
        compare("loss", runtime.loss, eager.loss, tolerance),
        compare("logits", runtime.logits, eager.logits, tolerance),
    ]
    if runtime.before is None:
        return errors + [
            compare(f"gradient/{name}", grad, eager.gradient(name, grad), tolerance)
            for name, grad in runtime.gradients.items()
        ]
    return errors + _compare_fused(runtime, eager, model, optimizer, tolerance)


@dataclass
class _Step:
    loss: torch.Tensor
    logits: torch.Tensor
    gradients: dict[str, torch.Tensor]  # by runtime name (eager: by model name); fused update: none
    # Fused update: the parameters before and after the step, and the optimizer state after it.
    before: dict[str, torch.Tensor] | None = None
    after: dict[str, torch.Tensor] | None = None
    state: dict[str, torch.Tensor] | None = None

    def gradient(self, runtime_name: str, like: torch.Tensor) -> torch.Tensor:
        """Eager's gradient of a parameter by its runtime name; zero where the loss does not depend on it."""
        grad = self.gradients.get(strip_prefix(runtime_name))
        return torch.zeros_like(like) if grad is None else grad


def _eager_step(model: nn.Module, loss: LossSpec, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> _Step:
    """The whole batch at once: micro-batch accumulation must give the full batch's mean gradient."""
    model.zero_grad(set_to_none=True)
    inputs = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    logits = model(inputs)
    value = loss.fn(logits, labels)
    value.backward()
    gradients = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return _Step(value.detach(), logits.detach(), gradients)


def _with_rounding_headroom(
    tolerance: Tolerance,
    eager: _Step,
    model: nn.Module,
    loss: LossSpec,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
) -> Tolerance:
    """``tolerance`` with its relative part raised to ``ROUNDING_HEADROOM`` x float32 eager's largest relative
    distance from the same step in float64 (see the module docstring), at most ``MAX_RELATIVE``."""
    try:
        exact = _eager_step(
            copy.deepcopy(model).double(),
            loss,
            [(x.double(), y.double() if y.is_floating_point() else y) for x, y in batches],
        )
    except (RuntimeError, TypeError, ValueError, copy.Error):
        # A model that fixes its own dtypes (int8 weights dequantized to float32) has no float64 twin: the base
        # tolerance stays, which every such reference model meets.
        return tolerance
    pairs = [(eager.loss, exact.loss), (eager.logits, exact.logits)]
    pairs += [(grad, exact.gradients[name]) for name, grad in eager.gradients.items() if name in exact.gradients]
    # Tensors near zero (the bias of a layer followed by BatchNorm) are judged by ``abs``: floor the scale.
    floor = tolerance.abs / tolerance.rel
    sensitivity = max(
        (float((a.double() - b).abs().max()) / (float(b.abs().max()) + floor) for a, b in pairs if b.numel()),
        default=0.0,
    )
    relative = min(max(tolerance.rel, ROUNDING_HEADROOM * sensitivity), MAX_RELATIVE)
    return Tolerance(tolerance.abs, relative)


def _runtime_step(bundle: Bundle, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> _Step:
    """One optimizer step's worth of calls, through the host runner's session for the bundle's runtime."""
    from sdk_tools.runner.train import open_session

    session = open_session(bundle)
    if bundle.manifest.backend == "onnxruntime":
        return _onnxruntime_step(session, batches)
    from sdk_tools.runner.executorch_session import FusedExecuTorchSession

    if isinstance(session, FusedExecuTorchSession):
        # parameters() runs the dry step 0 first, as the runner does: the arena holds a call's leftovers.
        before = {n: t.clone() for n, t in session.parameters().items()}
        loss, logits = session.train_step(batches)
        _, buffers = session.state_tensors()
        after = {n: buffers[n].clone() for n in before}
        state = {n: t.clone() for n, t in buffers.items() if n not in before}
        return _Step(torch.tensor(loss), logits, {}, before, after, state)
    # One call suffices to catch 1.5.1's max-pool backward: the memory it reads without writing already holds an
    # earlier tensor of the same call (measured: conv gradients 120x-270x off on the first call, as on later ones).
    losses, logits, total = [], [], {}
    for inputs, labels in batches:
        loss, batch_logits, grads = session.forward_backward(inputs, labels)
        losses.append(loss)
        logits.append(batch_logits)
        for name, grad in grads.items():
            total[name] = total[name] + grad if name in total else grad
    count = len(batches)
    return _Step(torch.tensor(sum(losses) / count), torch.cat(logits), {n: g / count for n, g in total.items()})


def _onnxruntime_step(session: Any, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> _Step:
    """ORT's training session adds up the gradients of every call until ``lazy_reset_grad``; the loss-gradient
    seed ``loss_scale`` = 1 / micro-batches makes the sum the full batch's mean (as the runner's train_step)."""
    import numpy as np

    session.check_batch(*batches[0])
    scale = np.array(1.0 / len(batches), dtype=np.float32)
    session.module.train()
    session.module.lazy_reset_grad()
    losses, logits = [], []
    for inputs, labels in batches:
        loss, batch_logits = session.module(inputs.numpy(), labels.numpy(), scale)
        losses.append(float(loss))
        logits.append(torch.from_numpy(batch_logits))
    names = [p.name for p in session.manifest.trainable]
    gradients = {n: torch.from_numpy(session.state.parameters[n].grad).clone() for n in names}
    return _Step(torch.tensor(sum(losses) / len(batches)), torch.cat(logits), gradients)


def _compare_fused(
    runtime: _Step, eager: _Step, model: nn.Module, optimizer: OptimizerConfig, tolerance: Tolerance
) -> list[TensorError]:
    """A fused-update program returns no gradients: its first step's optimizer state holds them (AdamW's
    ``exp_avg`` = (1 - beta1) g, SGD momentum = g + weight_decay p), else its parameter change does (plain SGD:
    (p - p') / lr = g + weight_decay p). Each is compared with eager's; then the parameters after the step with
    ``torch.optim`` applied to the program's own gradient, which checks the update without letting AdamW's
    g / (|g| + eps) magnify last-bit differences of near-zero gradients into a false refusal."""
    assert runtime.before is not None and runtime.after is not None and runtime.state is not None
    params = dict(model.named_parameters())
    errors, recovered = [], {}
    for name, before in runtime.before.items():
        grad = eager.gradient(name, before)
        if optimizer.kind == "adamw":
            recovered[name] = runtime.state[f"optimizer/exp_avg/{name}"] / (1 - optimizer.betas[0])
            errors.append(compare(f"gradient/{name}", recovered[name], grad, tolerance))
            continue
        effective = grad + optimizer.weight_decay * params[strip_prefix(name)].detach()
        if optimizer.momentum:
            buffer = runtime.state[f"optimizer/momentum/{name}"]
            errors.append(compare(f"gradient/{name}", buffer, effective, tolerance))
            recovered[name] = buffer - optimizer.weight_decay * before
        else:
            # p' is rounded to float32: dividing its change by lr magnifies that rounding.
            slack = 2 * _FLOAT32_EPS * float(before.abs().max()) / optimizer.lr
            change = (before.double() - runtime.after[name].double()) / optimizer.lr
            errors.append(compare(f"gradient/{name}", change, effective, tolerance, slack))
    if recovered:
        expected = _torch_update(runtime.before, recovered, optimizer)
        for name, after in runtime.after.items():
            # The update changes p by about lr * g: compared on that scale, plus p's own float32 rounding.
            slack = 4 * _FLOAT32_EPS * float(after.abs().max())
            start = runtime.before[name].double()
            errors.append(
                compare(f"parameter/{name}", after.double() - start, expected[name].double() - start, tolerance, slack)
            )
    return errors


def _torch_update(
    before: dict[str, torch.Tensor], gradients: dict[str, torch.Tensor], optimizer: OptimizerConfig
) -> dict[str, torch.Tensor]:
    params = {n: nn.Parameter(t.clone()) for n, t in before.items()}
    for name, p in params.items():
        p.grad = gradients[name].clone()
    optimizer.torch_optimizer(params.values()).step()
    return {n: p.detach() for n, p in params.items()}


class _Reach(TorchDispatchMode):
    """Which parameters each forward operator's inputs depend on: a parameter "reaches" every op downstream."""

    def __init__(self, params: dict[str, torch.Tensor]) -> None:
        super().__init__()
        from torch.utils.weak import WeakIdKeyDictionary

        self.sources: WeakIdKeyDictionary = WeakIdKeyDictionary()
        for name, p in params.items():
            self.sources[p] = frozenset((name,))
        self.ops: dict[str, set[str]] = {}  # op -> parameters reaching it, in first-call order

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs, _ = tree_flatten((args, kwargs))
        reached: set[str] = set()
        for value in inputs:
            if isinstance(value, torch.Tensor) and value in self.sources:
                reached |= self.sources[value]
        if reached:
            self.ops.setdefault(str(func.overloadpacket.__name__), set()).update(reached)
            outputs, _ = tree_flatten(out)
            for value in outputs:
                if isinstance(value, torch.Tensor):
                    self.sources[value] = frozenset(reached)
        return out


def _operators_between(
    model: nn.Module, loss: LossSpec, batch: tuple[torch.Tensor, torch.Tensor], wrong: set[str]
) -> tuple[list[str], list[str]]:
    """Forward operators the wrong parameters reach on their way to the loss: (those no correct trainable
    parameter reaches, in call order; the rest)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad(), _Reach(params) as reach:
        loss.fn(model(batch[0]), batch[1])
    suspects = [op for op, by in reach.ops.items() if by & wrong and by <= wrong]
    shared = [op for op, by in reach.ops.items() if by & wrong and not by <= wrong]
    return suspects, shared


def _explain(
    bundle: Bundle,
    wrong: list[TensorError],
    model: nn.Module,
    loss: LossSpec,
    batch: tuple[torch.Tensor, torch.Tensor],
) -> str:
    backend = bundle.manifest.backend
    runtime = runtime_version(backend)
    worst = max(wrong, key=lambda e: e.error / e.allowed if e.allowed else float("inf"))
    params = sorted({strip_prefix(p) for e in wrong if (p := e.parameter) is not None})
    trainable = len(bundle.manifest.trainable)
    if not params:
        what = f"its {', '.join(e.name for e in wrong)} differ from eager PyTorch"
        where = ""
    else:
        shown = ", ".join(params[:6]) + (f" and {len(params) - 6} more" if len(params) > 6 else "")
        what = f"the gradients of {len(params)} of {trainable} trained parameters differ from eager PyTorch: {shown}"
        suspects, shared = _operators_between(model, loss, batch, set(params))
        where = f"; operators between them and the loss: {', '.join(suspects) or '(none of their own)'}"
        if shared:
            where += f" (then, shared with correctly trained parameters: {', '.join(shared)})"
    return (
        f"verification refused the bundle: run in {runtime}, {what} (worst: {worst.name}, max error "
        f"{worst.error:.3g} where {worst.allowed:.3g} is allowed, {worst.relative:.3g} of its largest value){where}. "
        "It would train wrong on the device: freeze those parameters (--trainable), replace the layer whose operator "
        "is wrong, or try the other --backend; --no-verify exports it anyway"
    )
