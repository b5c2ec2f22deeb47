"""Export-time configuration: small frozen dataclasses that serialize into the bundle manifest."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

OptimizerKind = Literal["sgd", "adamw"]


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer the app runs between training steps; PyTorch's SGD/AdamW semantics exactly."""

    kind: OptimizerKind = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.kind not in ("sgd", "adamw"):
            raise ValueError(f"unknown optimizer {self.kind!r}: use 'sgd' or 'adamw'")
        if self.lr <= 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError("nesterov needs momentum > 0 and dampening == 0 (as in torch.optim.SGD)")

    def torch_optimizer(self, params: Iterable[Any]) -> Any:
        """The same optimizer in eager PyTorch (``torch.optim.SGD`` / ``AdamW``), the reference the runtimes match."""
        import torch

        if self.kind == "adamw":
            return torch.optim.AdamW(params, lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay)
        return torch.optim.SGD(
            params,
            lr=self.lr,
            momentum=self.momentum,
            dampening=self.dampening,
            weight_decay=self.weight_decay,
            nesterov=self.nesterov,
        )

    @property
    def update_needs_workspace(self) -> bool:
        """Whether the update computes an intermediate tensor (AdamW's denominator, SGD's decayed or Nesterov
        gradient): the app-side optimizer keeps one scratch tensor of the largest parameter's size for it."""
        return self.kind == "adamw" or bool(self.weight_decay) or self.nesterov

    @property
    def state_tensors_per_parameter(self) -> int:
        if self.kind == "adamw":
            return 2  # exp_avg and exp_avg_sq
        return 1 if self.momentum > 0 else 0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OptimizerConfig:
        return cls(**{**data, "betas": tuple(data.get("betas", (0.9, 0.999)))})
