"""ExecuTorch training session: the .pte's joint method, stepped through the real runtime.

Outputs are read without cloning: gradients alias the method's planned arena and parameters alias the
program's weights, as in a C++ app. The optimizer consumes the gradients before the next call overwrites
them, so no gradient copies exist unless micro-batches must be accumulated.
"""

from __future__ import annotations

import torch
from executorch.extension.pybindings.portable_lib import _load_for_executorch

from exporters.bundle import Bundle
from exporters.config import OptimizerConfig
from sdk_tools.runner.optim import Optimizer
from sdk_tools.runner.session import TORCH_DTYPES, TrainingSession

GRADIENTS_INDEX = "__et_training_gradients_index_"
PARAMETERS_INDEX = "__et_training_parameters_index_"
FQN = "__et_training_fqn_"


class ExecuTorchSession(TrainingSession):
    def __init__(self, bundle: Bundle) -> None:
        super().__init__(bundle)
        methods = self.manifest.methods
        self._train_name = methods["train"]["name"]
        self._predict_name = methods["predict"]["name"]
        # Module, not _load_program + load_method: methods loaded one by one from a program share planned
        # memory in 1.5.1, so running predict overwrote the training method's weights (measured).
        self._module = _load_for_executorch(str(bundle.path("program")))
        self._grad_start = self._meta(GRADIENTS_INDEX)[0]
        self._param_start = self._meta(PARAMETERS_INDEX)[0]
        self._names: list[str] = list(self._meta(FQN))
        expected = [p.name for p in self.manifest.trainable]
        if self._names != expected:
            raise RuntimeError(f"program trains {self._names[:3]}..., the manifest lists {expected[:3]}...")
        self._params: dict[str, torch.Tensor] | None = None
        self.optimizer: Optimizer | None = None

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
            self._run(torch.zeros(self.manifest.inputs[0].shape), self._zero_labels())
        assert self._params is not None
        return self._params

    def _zero_labels(self) -> torch.Tensor:
        spec = self.manifest.labels
        return torch.zeros(spec.shape, dtype=TORCH_DTYPES[spec.dtype])

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
        params = self.parameters()
        missing = [name for name in params if name not in tensors]
        if missing:
            raise ValueError(f"checkpoint lacks parameters {missing[:3]}: it belongs to another bundle")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(tensors[name])
        assert self.optimizer is not None
        prefix = "optimizer/"
        self.optimizer.load_state(
            steps, {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        )
