"""Reference models and the registry that resolves a model spec to a factory.

A model spec is either a registered name (``mobilenet_v2``) or an import path ``pkg.module:factory``;
the factory is called with keyword arguments and must return an ``nn.Module`` mapping a float batch to
logits. The spec and its kwargs go into the bundle manifest so the model can be rebuilt later.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

from exporters.frozen_batchnorm import FrozenBatchNorm2d, freeze_batchnorm
from sdk_tools.models.mlp import MLP
from sdk_tools.models.mobilenet_v2 import MobileNetV2
from sdk_tools.models.small_cnn import SmallCNN

REFERENCE_MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "small_cnn": SmallCNN,
    "mobilenet_v2": MobileNetV2,
}


def resolve_factory(spec: str) -> Callable[..., nn.Module]:
    """Return the factory for a registered name or a ``pkg.module:factory`` path."""
    if spec in REFERENCE_MODELS:
        return REFERENCE_MODELS[spec]
    if ":" not in spec:
        raise ValueError(
            f"unknown model {spec!r}: use one of {sorted(REFERENCE_MODELS)} "
            "or an import path like 'my_pkg.my_module:make_model'"
        )
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r} of model spec {spec!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"model spec {spec!r}: {module_name} has no callable {attr!r}")
    return factory


def build_model(spec: str, **kwargs: Any) -> nn.Module:
    factory = resolve_factory(spec)
    try:
        model = factory(**kwargs)
    except TypeError as exc:  # the usual user mistake: a keyword the factory does not take (--model-kwargs)
        raise ValueError(f"model {spec!r} cannot be built with kwargs {kwargs} ({exc}); check --model-kwargs") from exc
    if not isinstance(model, nn.Module):
        raise TypeError(f"model factory {spec!r} returned {type(model).__name__}, expected torch.nn.Module")
    return model


__all__ = [
    "MLP",
    "REFERENCE_MODELS",
    "FrozenBatchNorm2d",
    "MobileNetV2",
    "SmallCNN",
    "build_model",
    "freeze_batchnorm",
    "resolve_factory",
]
