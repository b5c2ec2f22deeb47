"""ExecuTorch speed routes: which of them an export applies, and what the app's runtime then needs.

ExecuTorch's training step runs portable kernels (naive, single-threaded) unless the program is steered onto
faster ones. Two routes do that without changing a single gradient:

- ``pointwise_linear`` (``exporters/techniques/pointwise_linear.py``): trainable 1x1 convolutions as matmuls,
  which have optimized kernels (``mm``/``bmm``/``addmm``). Costs planned arena where the rewritten form keeps a
  copy for backward (MobileNetV2 x1.0 96x96 batch 8 full fine-tune: 121.7 -> 131.2 MiB); the planned arena
  is the real memory plan, so the manifest's prediction includes it.
- ``xnnpack_frozen`` (``exporters/techniques/xnnpack_frozen.py``): every node that reads no trainable tensor
  lowered to XNNPACK inside the joint graph. Costs program file bytes where a delegate needs a frozen weight in
  another layout (bias-only: the transposed convolutions of backward; MobileNetV2 .pte 8.8 -> 17.2 MiB) and
  XNNPACK's workspace at run time, outside the planned arena (``delegate_memory_bytes`` predicts it).

The third route, threads, is a runtime setting: only XNNPACK (and optimized) kernels use ExecuTorch's thread
pool, which must be sized before the first program loads. ``backend_options.runtime`` records what the program
needs: the XNNPACK backend (a program with delegates fails to load without it), the kernel library its speed
assumes, and the pool size.

Each enabled route applies only where it has something to do: ``pointwise_linear`` where a trainable 1x1
convolution exists, ``xnnpack_frozen`` where the model has frozen parameters (with everything trainable only
parameter-free ops would be lowered, in many small delegates). The manifest's ``techniques`` lists the routes
that applied.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from exporters.techniques.pointwise_linear import PointwiseLinearConfig


@dataclass(frozen=True)
class XnnpackFrozenConfig:
    """Lower what reads no trainable tensor to XNNPACK.

    ``backward_convolutions``: rewrite input-gradient-only ``convolution_backward`` of frozen convolutions
    into transposed convolutions, so XNNPACK runs the backward through frozen layers too.
    """

    backward_convolutions: bool = True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> XnnpackFrozenConfig:
        return cls(**data)


@dataclass(frozen=True)
class SpeedConfig:
    """The speed routes an ExecuTorch export may take; ``None`` turns a route off.

    ``SpeedConfig()`` enables both (each where it applies); ``SpeedConfig.off()`` none.
    """

    pointwise_linear: PointwiseLinearConfig | None = field(default_factory=PointwiseLinearConfig)
    xnnpack_frozen: XnnpackFrozenConfig | None = field(default_factory=XnnpackFrozenConfig)

    @classmethod
    def off(cls) -> SpeedConfig:
        return cls(pointwise_linear=None, xnnpack_frozen=None)

    @property
    def enabled(self) -> bool:
        return self.pointwise_linear is not None or self.xnnpack_frozen is not None

    def describe(self) -> str:
        routes = [name for name in ("pointwise_linear", "xnnpack_frozen") if getattr(self, name) is not None]
        return "speed routes " + "+".join(routes) if routes else "no speed routes"

    def to_json(self) -> dict[str, Any]:
        return {
            "pointwise_linear": self.pointwise_linear.to_json() if self.pointwise_linear else None,
            "xnnpack_frozen": self.xnnpack_frozen.to_json() if self.xnnpack_frozen else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SpeedConfig:
        pointwise = data.get("pointwise_linear")
        xnnpack = data.get("xnnpack_frozen")
        return cls(
            pointwise_linear=PointwiseLinearConfig.from_json(pointwise) if pointwise is not None else None,
            xnnpack_frozen=XnnpackFrozenConfig.from_json(xnnpack) if xnnpack is not None else None,
        )
