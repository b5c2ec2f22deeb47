"""The optimizers the app runs between training steps, on tensors the runtime owns (updated in place).

ExecuTorch's runtime optimizer is SGD only and keeps its momentum buffers where a checkpoint cannot reach
them; these are PyTorch's ``torch.optim.SGD`` / ``AdamW`` update rules written out (the same arithmetic, in
the same order, so results match to float rounding), with state that a checkpoint saves and restores.
The Android/iOS apps implement the same few lines.
"""

from __future__ import annotations

import math

import torch

from exporters.config import OptimizerConfig


class Optimizer:
    """Applies one update per ``step`` to ``params`` in place; ``state`` is checkpointable."""

    def __init__(self, config: OptimizerConfig, params: dict[str, torch.Tensor]) -> None:
        self.config = config
        self.params = params
        self.steps = 0
        self.state: dict[str, torch.Tensor] = {}
        for name, p in params.items():
            if config.kind == "adamw":
                self.state[f"exp_avg/{name}"] = torch.zeros_like(p)
                self.state[f"exp_avg_sq/{name}"] = torch.zeros_like(p)
            elif config.momentum > 0:
                self.state[f"momentum/{name}"] = torch.zeros_like(p)

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor]) -> None:
        self.steps += 1
        for name, p in self.params.items():
            if self.config.kind == "adamw":
                self._adamw(name, p, grads[name])
            else:
                self._sgd(name, p, grads[name])

    def _sgd(self, name: str, p: torch.Tensor, grad: torch.Tensor) -> None:
        c = self.config
        d_p = grad.add(p, alpha=c.weight_decay) if c.weight_decay else grad
        if c.momentum:
            buf = self.state[f"momentum/{name}"]
            if self.steps == 1:
                buf.copy_(d_p)
            else:
                buf.mul_(c.momentum).add_(d_p, alpha=1 - c.dampening)
            d_p = d_p.add(buf, alpha=c.momentum) if c.nesterov else buf
        p.add_(d_p, alpha=-c.lr)

    def _adamw(self, name: str, p: torch.Tensor, grad: torch.Tensor) -> None:
        c = self.config
        beta1, beta2 = c.betas
        exp_avg, exp_avg_sq = self.state[f"exp_avg/{name}"], self.state[f"exp_avg_sq/{name}"]
        p.mul_(1 - c.lr * c.weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1**self.steps
        bias_correction2 = 1 - beta2**self.steps
        denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(c.eps)
        p.addcdiv_(exp_avg, denom, value=-c.lr / bias_correction1)

    def load_state(self, steps: int, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.state) - set(state)
        if missing:
            raise ValueError(
                f"checkpoint lacks optimizer state {sorted(missing)[:3]}: it was saved with another optimizer"
            )
        for key, value in self.state.items():
            value.copy_(state[key])
        self.steps = steps
