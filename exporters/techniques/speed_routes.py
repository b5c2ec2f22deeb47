"""ExecuTorch speed routes: which of them an export applies, and what the app's runtime then needs.

ExecuTorch's training step runs portable kernels (naive, single-threaded) unless the program is steered onto
faster ones. Three routes do that without changing a single gradient:

- ``pointwise_linear`` (``exporters/techniques/pointwise_linear.py``): trainable 1x1 convolutions as matmuls,
  which have optimized kernels (``mm``/``bmm``/``addmm``). Costs planned arena where the rewritten form keeps a
  copy for backward (MobileNetV2 x1.0 96x96 batch 8 full fine-tune: 121.7 -> 131.2 MiB); the planned arena
  is the real memory plan, so the manifest's prediction includes it.
- ``im2col_matmul`` (``exporters/techniques/im2col_matmul.py``): trainable KxK convolutions with groups 1 as
  im2col (strided slices of the zero-padded input) + one matmul, on the same optimized kernels. Costs planned
  arena: backward keeps the columns (kh x kw / stride^2 times the layer's input) where a convolution keeps its
  input; ``max_columns_bytes`` (16 MiB by default) keeps any layer whose columns would be larger a convolution.
- ``xnnpack_frozen`` (``exporters/techniques/xnnpack_frozen.py``): every node that reads no trainable tensor
  lowered to XNNPACK inside the joint graph. Costs program file bytes where a delegate needs a frozen weight in
  another layout (bias-only: the transposed convolutions of backward; MobileNetV2 .pte 8.8 -> 17.2 MiB) and
  XNNPACK's workspace at run time, outside the planned arena (``delegate_memory_bytes`` predicts it).

A fourth, threads, is a runtime setting: only XNNPACK (and optimized) kernels use ExecuTorch's thread
pool, which must be sized before the first program loads. ``backend_options.runtime`` records what the program
needs: the XNNPACK backend (a program with delegates fails to load without it), the kernel library its speed
assumes, and the pool size.

Each enabled route applies only where it has something to do: ``pointwise_linear`` where a trainable 1x1
convolution exists, ``im2col_matmul`` where a trainable KxK groups-1 convolution within the columns limit exists,
``xnnpack_frozen`` where the model has frozen parameters (with everything trainable only parameter-free ops
would be lowered, in many small delegates). The manifest's ``techniques`` lists the routes
that applied.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from exporters.technique import Stage, Technique, register_technique
from exporters.techniques.im2col_matmul import Im2colMatmulConfig
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

    ``SpeedConfig()`` enables every route (each where it applies); ``SpeedConfig.off()`` none. JSON written
    before a route existed has no key for it and reads as that route off.
    """

    pointwise_linear: PointwiseLinearConfig | None = field(default_factory=PointwiseLinearConfig)
    im2col_matmul: Im2colMatmulConfig | None = field(default_factory=Im2colMatmulConfig)
    xnnpack_frozen: XnnpackFrozenConfig | None = field(default_factory=XnnpackFrozenConfig)

    @classmethod
    def off(cls) -> SpeedConfig:
        return cls(**dict.fromkeys(ROUTES))

    @property
    def enabled(self) -> bool:
        return any(getattr(self, name) is not None for name in ROUTES)

    def describe(self) -> str:
        routes = [name for name in ROUTES if getattr(self, name) is not None]
        return "speed routes " + "+".join(routes) if routes else "no speed routes"

    def to_json(self) -> dict[str, Any]:
        return {name: config.to_json() if (config := getattr(self, name)) else None for name in ROUTES}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SpeedConfig:
        return cls(
            **{
                name: kind.from_json(data[name]) if data.get(name) is not None else None
                for name, kind in ROUTES.items()
            }
        )


# Every route's config class by field name, in the order an export applies them.
ROUTES: dict[str, Any] = {
    "pointwise_linear": PointwiseLinearConfig,
    "im2col_matmul": Im2colMatmulConfig,
    "xnnpack_frozen": XnnpackFrozenConfig,
}


def default_speed_routes(backend: str, requested: bool | None = None) -> SpeedConfig | None:
    """The speed routes an export takes when the user does not say (``requested`` None): every route on
    ExecuTorch (each where it applies; the bundle is verified like any other), none on ONNX Runtime. The CLI and
    ``sdk_tools.api.export`` share this default; ``export_bundle``/``export_plan`` take exactly what they are given."""
    routes = requested if requested is not None else backend == "executorch"
    return SpeedConfig() if routes else None


register_technique(
    Technique(
        "speed_routes",
        SpeedConfig,
        Stage.SPEED_ROUTE,
        backends=frozenset({"executorch"}),
        aliases=("speed",),  # the plan's field before the registry
        inactive=lambda config: not config.enabled,
        describe=SpeedConfig.describe,
        argument="speed",
        unsupported="speed routes are ExecuTorch program rewrites; the {backend} backend has no use for them: "
        "use backend='executorch', or speed=None (CLI: --no-speed-routes)",
    )
)
