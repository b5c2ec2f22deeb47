"""ExecuTorch training session: the .pte's joint method, stepped through the real runtime.

Outputs are read without cloning: gradients alias the method's planned arena and parameters alias the
program's weights, as in a C++ app. The optimizer consumes the gradients before the next call overwrites
them, so no gradient copies exist unless micro-batches must be accumulated.

Bundles exported with ``fused_update`` (``backend_options.optimizer_runs_in == "program"``) get a
``FusedExecuTorchSession``: the training method updates the weights itself and returns no gradients.

Threads: ExecuTorch's thread pool (used by XNNPACK and optimized kernels only) is process-wide and must be sized
before the first program loads (resizing it under a loaded program crashed the process, measured on 1.5.1):
``configure_runtime`` sizes it once, from the caller's ``threads`` or the manifest's
``backend_options.runtime.threads``, and checks that the backends the program calls are registered.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
from executorch.extension.pybindings.portable_lib import (
    _get_registered_backend_names,
    _load_for_executorch,
    _threadpool_get_thread_count,
    _unsafe_reset_threadpool,
)

from exporters.bundle import Bundle, BundleError
from exporters.config import OptimizerConfig
from exporters.techniques.fused_update import LR_INPUT, STATE_PREFIX
from sdk_tools.runner.checkpoint import copy_checked
from sdk_tools.runner.optim import Optimizer
from sdk_tools.runner.session import TrainingSession, run_once_in_child

GRADIENTS_INDEX = "__et_training_gradients_index_"
PARAMETERS_INDEX = "__et_training_parameters_index_"
FQN = "__et_training_fqn_"


_PROGRAM_LOADED = False  # whether this process has loaded a program through this module (the pool is then fixed)


def optimizer_runs_in_program(bundle: Bundle) -> bool:
    return bundle.manifest.backend_options.get("optimizer_runs_in") == "program"


def runtime_requirements(bundle: Bundle) -> dict[str, Any]:
    """``backend_options.runtime`` (bundles exported before it: portable kernels, one thread, no delegates)."""
    return {"backends": [], "kernels": "portable", "threads": 1, **bundle.manifest.backend_options.get("runtime", {})}


def resolve_threads(hint: int | str) -> int:
    """A thread count from the manifest's hint: ``performance_cores`` is every core this process may use on a host
    (phones: ExecuTorch's ``cpuinfo`` count of performance cores)."""
    if isinstance(hint, int):
        return max(1, hint)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def configure_runtime(bundle: Bundle, threads: int | None = None) -> int:
    """Check the program's backends are registered; size the thread pool if no program is loaded yet.

    ``threads``: the caller's choice (measure/train ``--threads``); else the manifest's hint, and then only
    grown (a larger default pool is left as it is). Returns the pool's size.
    """
    needs = runtime_requirements(bundle)
    missing = sorted(set(needs["backends"]) - set(_get_registered_backend_names()))
    if missing:
        raise RuntimeError(
            f"this program calls the {', '.join(missing)} delegate, which this ExecuTorch runtime lacks: use a "
            "runtime built with it (the pybindings and the Android AAR include XNNPACK), or re-export the bundle "
            "without speed routes (--no-speed-routes)"
        )
    current = _threadpool_get_thread_count()
    wanted = threads if threads is not None else max(current, resolve_threads(needs["threads"]))
    if wanted != current:
        if _PROGRAM_LOADED:
            print(
                f"[memwall] ExecuTorch's thread pool stays at {current} threads ({wanted} asked): it can only be "
                "sized before the first program loads in a process",
                file=sys.stderr,
            )
        else:
            _unsafe_reset_threadpool(wanted)
    return _threadpool_get_thread_count()


class ExecuTorchSession(TrainingSession):
    def __new__(cls, bundle: Bundle, threads: int | None = None, preflight: bool = True) -> ExecuTorchSession:
        # One entry point for both kinds of ExecuTorch bundle (open_session, the worker, the apps' host runs).
        if cls is ExecuTorchSession and optimizer_runs_in_program(bundle):
            cls = FusedExecuTorchSession
        return super().__new__(cls)

    def __init__(self, bundle: Bundle, threads: int | None = None, preflight: bool = True) -> None:
        """``preflight``: first load the program and run one training call and one prediction in a forked child
        (``session.run_once_in_child``), so a malformed program that crashes the runtime ends in a ``BundleError``,
        not in a dead process. The measuring worker skips it: its parent reports a crash the same way."""
        global _PROGRAM_LOADED
        super().__init__(bundle)
        self.threads = configure_runtime(bundle, threads)
        methods = self.manifest.methods
        self._train_name = methods["train"]["name"]
        self._predict_name = methods["predict"]["name"]
        program = bundle.path("program")
        if preflight:
            run_once_in_child(lambda: ExecuTorchSession(bundle, self.threads, preflight=False), str(program))
        # Module, not _load_program + load_method: methods loaded one by one from a program share planned
        # memory in 1.5.1, so running predict overwrote the training method's weights (measured).
        try:
            self._module = _load_for_executorch(str(program))
            _PROGRAM_LOADED = True
            self._names = self._trained_names()
        except (RuntimeError, UnicodeDecodeError) as exc:  # what the pybindings raise for a malformed program
            raise BundleError(f"ExecuTorch cannot load {program} ({exc}); re-export the bundle") from exc
        expected = [p.name for p in self.manifest.trainable]
        if self._names != expected:
            raise BundleError(
                f"program trains {self._names[:3]}..., the manifest lists {expected[:3]}...: they are from "
                "different exports; re-export the bundle"
            )
        self._params: dict[str, torch.Tensor] | None = None
        self.optimizer: Optimizer | None = None

    def _trained_names(self) -> list[str]:
        """The trained parameters in output order; records where gradients and parameters start."""
        self._grad_start = self._meta(GRADIENTS_INDEX)[0]
        self._param_start = self._meta(PARAMETERS_INDEX)[0]
        return list(self._meta(FQN))

    def _meta(self, prefix: str) -> list:
        return self._module.run_method(prefix + self._train_name, ())

    def _run(self, inputs: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        self.check_batch(inputs, labels)
        outputs = self._module.run_method(self._train_name, (inputs, labels), clone_outputs=False)
        if self._params is None:
            # Parameter outputs alias the runtime's weights: updating them in place trains the program.
            self._params = dict(zip(self._names, outputs[self._param_start :], strict=True))
            self.optimizer = Optimizer(OptimizerConfig.from_json(self.manifest.optimizer), self._params)
        return outputs

    def parameters(self) -> dict[str, torch.Tensor]:
        if self._params is None:
            # The runtime hands out its weight tensors only as outputs of a step: run one, discard it.
            self._run(torch.zeros(self.manifest.inputs[0].shape), self.zero_labels())
        assert self._params is not None
        return self._params

    def forward_backward(
        self, inputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[float, torch.Tensor, dict[str, torch.Tensor]]:
        """Loss, logits and gradients (copies) of one batch, without an optimizer step."""
        outputs = self._run(inputs, labels)
        grads = outputs[self._grad_start : self._param_start]
        return (
            float(outputs[0]),
            outputs[1].clone(),
            {n: g.clone() for n, g in zip(self._names, grads, strict=True)},
        )

    def train_step(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, torch.Tensor]:
        count = len(micro_batches)
        total_loss = 0.0
        logits: list[torch.Tensor] = []
        accumulated: dict[str, torch.Tensor] = {}
        for inputs, labels in micro_batches:
            outputs = self._run(inputs, labels)
            total_loss += float(outputs[0])
            logits.append(outputs[1].clone())
            grads = dict(zip(self._names, outputs[self._grad_start : self._param_start], strict=True))
            if count == 1:
                accumulated = grads
            elif not accumulated:
                accumulated = {k: g.clone() for k, g in grads.items()}
            else:
                for k, g in grads.items():
                    accumulated[k].add_(g)
        if count > 1:
            # Each call's loss is a micro-batch mean: the full batch's gradient is their average.
            for g in accumulated.values():
                g.div_(count)
        assert self.optimizer is not None
        self.optimizer.step(accumulated)
        return total_loss / count, torch.cat(logits)

    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        self.check_batch(inputs)
        params = self.parameters()
        return self._module.run_method(self._predict_name, (inputs, *params.values()))[0]

    def state_tensors(self) -> tuple[int, dict[str, torch.Tensor]]:
        params = self.parameters()
        assert self.optimizer is not None
        return self.optimizer.steps, {
            **params,
            **{f"optimizer/{k}": v for k, v in self.optimizer.state.items()},
        }

    def load_state_tensors(self, steps: int, tensors: dict[str, torch.Tensor]) -> None:
        _, live = self.state_tensors()  # the runtime's own tensors and the optimizer's state, by checkpoint name
        copy_checked(live, tensors)
        assert self.optimizer is not None
        self.optimizer.steps = steps


class FusedExecuTorchSession(ExecuTorchSession):
    """A program that applies the optimizer itself: each call of the training method is one optimizer step.

    The method takes the step number (and the learning rate, unless the export baked it in) and returns the
    loss, the logits, then its parameters and optimizer state. Those outputs alias the program's mutable
    buffers, so reading them reads the live weights and writing them (resume) changes what the next step
    trains. Step 0 runs forward and backward without changing anything: that is how the session gets the
    buffers before the first step.
    """

    def __init__(self, bundle: Bundle, threads: int | None = None, preflight: bool = True) -> None:
        train = bundle.manifest.methods["train"]
        self._inputs: list[str] = train["inputs"]
        self._buffer_names: list[str] = train["outputs"][2:]
        self._buffers: dict[str, torch.Tensor] | None = None
        self._lr = OptimizerConfig.from_json(bundle.manifest.optimizer).lr
        self.steps = 0
        super().__init__(bundle, threads, preflight)

    def _trained_names(self) -> list[str]:
        return [name for name in self._buffer_names if not name.startswith(STATE_PREFIX)]

    @property
    def lr(self) -> float:
        """Learning rate of the next steps; set it to schedule (only where the program takes it as an input)."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        if LR_INPUT not in self._inputs:
            raise ValueError(
                "this bundle's learning rate is a constant of the program; export it with "
                "FusedUpdateConfig(learning_rate='input') to schedule it"
            )
        self._lr = value

    def _call(self, inputs: torch.Tensor, labels: torch.Tensor, step: int) -> list[torch.Tensor]:
        self.check_batch(inputs, labels)
        extra = [torch.tensor(self._lr, dtype=torch.float32)] if LR_INPUT in self._inputs else []
        args = (inputs, labels, *extra, torch.tensor(step, dtype=torch.int64))
        outputs = self._module.run_method(self._train_name, args, clone_outputs=False)
        if self._buffers is None:
            self._buffers = dict(zip(self._buffer_names, outputs[2:], strict=True))
            self._params = {name: self._buffers[name] for name in self._names}
        return outputs

    def _state(self) -> dict[str, torch.Tensor]:
        if self._buffers is None:
            self._call(torch.zeros(self.manifest.inputs[0].shape), self.zero_labels(), step=0)
            assert self._buffers is not None
            with torch.no_grad():
                # The dry run left values in the state buffers that the next step ignores; a checkpoint taken
                # before it should hold torch's initial state.
                for name, tensor in self._buffers.items():
                    if name.startswith(STATE_PREFIX):
                        tensor.zero_()
        return self._buffers

    def parameters(self) -> dict[str, torch.Tensor]:
        self._state()
        assert self._params is not None
        return self._params

    def forward_backward(
        self, inputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[float, torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError(
            "this bundle applies the optimizer inside the program and returns no gradients; export it without "
            "fused_update to read gradients"
        )

    def train_step(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, torch.Tensor]:
        if len(micro_batches) != 1:
            raise ValueError(
                f"got {len(micro_batches)} micro-batches: a program that applies the optimizer itself steps on "
                "every call, so it takes exactly one batch per step"
            )
        [(inputs, labels)] = micro_batches
        outputs = self._call(inputs, labels, self.steps + 1)
        self.steps += 1
        return float(outputs[0]), outputs[1].clone()

    def state_tensors(self) -> tuple[int, dict[str, torch.Tensor]]:
        return self.steps, dict(self._state())

    def load_state_tensors(self, steps: int, tensors: dict[str, torch.Tensor]) -> None:
        copy_checked(self._state(), tensors)
        self.steps = steps
