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
    """Applies one update per ``step`` to ``params`` in place; ``state`` is checkpointable.

    Where the update needs an intermediate tensor it is computed into one scratch buffer of the largest
    parameter's size (``workspace``), allocated once, as an app would: torch's own expressions allocate one or
    two temporaries per parameter per step, and those peaks belong to no phone.
    """

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
        largest = max((p.numel() for p in params.values()), default=0)
        self.workspace = torch.empty(largest if config.update_needs_workspace else 0)

    def _scratch(self, like: torch.Tensor) -> torch.Tensor:
        return self.workspace[: like.numel()].view_as(like)

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
        d_p = torch.add(grad, p, alpha=c.weight_decay, out=self._scratch(p)) if c.weight_decay else grad
        if c.momentum:
            buf = self.state[f"momentum/{name}"]
            if self.steps == 1:
                buf.copy_(d_p)
            else:
                buf.mul_(c.momentum).add_(d_p, alpha=1 - c.dampening)
            d_p = torch.add(d_p, buf, alpha=c.momentum, out=self._scratch(p)) if c.nesterov else buf
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
        denom = torch.sqrt(exp_avg_sq, out=self._scratch(p)).div_(math.sqrt(bias_correction2)).add_(c.eps)
        p.addcdiv_(exp_avg, denom, value=-c.lr / bias_correction1)
