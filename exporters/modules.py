"""Helpers the techniques and the memory engine share: parameter blocks, module selection and replacement."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from typing import TypeVar

from torch import nn

Kind = TypeVar("Kind")


def parameter_block(fqn: str) -> tuple[str, bool] | None:
    """A parameter's block: its module path up to the first numbered child, and whether it has one.

    ``features.3.conv.0.weight`` -> ``("features.3", True)``; ``classifier.weight`` -> ``("classifier", False)``;
    top-level tensors (lifted constants such as BatchNorm's eps) belong to no module: None.
    """
    parts = fqn.split(".")[:-1]
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1]), True
    return (".".join(parts), False) if parts else None


def numbered_blocks(names: list[str]) -> list[str]:
    """The numbered blocks of a model (``features.0`` ... ``features.18``) in parameter order."""
    blocks: list[str] = []
    for name in names:
        key = parameter_block(name)
        if key is not None and key[1] and key[0] not in blocks:
            blocks.append(key[0])
    return blocks


def describe_module(module: nn.Module) -> str:
    """A layer as error messages name it, e.g. ``Conv2d 3x3 groups=8``."""
    if isinstance(module, nn.Conv2d):
        kernel = "x".join(str(k) for k in module.kernel_size)
        extra = f" padding_mode={module.padding_mode}" if module.padding_mode != "zeros" else ""
        return f"Conv2d {kernel} groups={module.groups}{extra}"
    return type(module).__name__


def select_modules(
    model: nn.Module,
    patterns: Iterable[str],
    kind_of: Callable[[nn.Module], Kind | None],
    *,
    what: str,
    lacks: str,
    fix: str,
    explain: Callable[[nn.Module], str] = describe_module,
) -> dict[str, Kind]:
    """The modules each fnmatch pattern over module names selects, with what ``kind_of`` maps them to (their
    replacement; None: the technique does not take that module), in the way torchao's ``filter_fn`` selects.

    Raises where a pattern matches no module, or only modules ``kind_of`` refuses: ``{what} target 'p' {lacks} (it
    matches <the first four, each with explain(module)>); {fix}``.
    """
    modules = dict(model.named_modules())
    selected: dict[str, Kind] = {}
    for pattern in patterns:
        matched = [name for name in modules if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            examples = [name for name in modules if name][:4]
            raise ValueError(f"{what} target {pattern!r} matches no module; module names look like {examples}")
        kinds = {name: kind for name in matched if (kind := kind_of(modules[name])) is not None}
        if not kinds:
            found = ", ".join(f"{name or '<root>'} ({explain(modules[name])})" for name in matched[:4])
            more = ", ..." if len(matched) > 4 else ""
            raise ValueError(f"{what} target {pattern!r} {lacks} (it matches {found}{more}); {fix}")
        selected.update(kinds)
    return selected


def replace_module(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Put ``module`` at ``name`` in ``model``; returns the model, or ``module`` itself for the root (``""``)."""
    if not name:
        return module
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)
    return model
