"""The technique registry: a technique is a frozen config class plus the handlers registered for it.

In the style of torchao's ``register_quantize_module_handler`` and PEFT's ``register_peft_method``: each technique
file ends with one ``register_technique(Technique(...))`` naming its config class, its stage, the backends that
can take it and its handlers. The training plan (``exporters.plan.TrainingPlan``) is the optimizer, the
micro-batches and a tuple of technique configs; describing, serializing, applying, folding back and checking a
plan are loops over this registry, so adding a technique is one file (plus its CLI flags, or the generic
``memwall export --technique NAME=JSON``). ``tests/test_architecture.py`` adds one (freeze every LayerNorm) in
a dozen lines: a config class with ``to_json``/``from_json``, an ``apply`` handler and::

    register_technique(Technique("freeze_layernorm", FreezeLayerNormConfig, Stage.MODEL_TRANSFORM, apply=_apply))

Stages, in the order an export runs them:

- ``model transform``: applied to a copy of the model before export (LoRA, freezing, int8 frozen weights), in
  ``order``; ``fold`` turns a trained model back into the original architecture (``memwall pull``).
- ``graph pass``: the backend exporter runs it on the training graph; it receives the config as the keyword
  ``argument`` (the name unless given). Recompute runs before the fused update: ``order`` records it.
- ``speed route``: program rewrites that change no gradient (ExecuTorch); the backend records those that applied.

A config equal to the technique's ``default`` (freeze: everything trains) or ``inactive`` (speed routes: all off)
is held by the plan but neither described, checked against the backend, passed to it nor recorded.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from exporters.backend import BACKEND_EXPORTERS

BACKENDS = tuple(BACKEND_EXPORTERS)
# Where a technique's phrase goes in a plan's description: what trains ("train LoRA r4 + head"), the optimizer
# ("adamw fused into the program") or the list after them ("recompute auto").
Slot = Literal["trains", "optimizer", "step"]


class Stage(enum.Enum):
    MODEL_TRANSFORM = "model transform"
    GRAPH_PASS = "graph pass"
    SPEED_ROUTE = "speed route"


@dataclass
class ModelContext:
    """What the model transforms before this one did, for the ones after it.

    ``kept_trainable``: fnmatch patterns of parameters an earlier transform made trainable (LoRA's adapters),
    which a later selection of what trains (freezing) must keep.
    """

    kept_trainable: tuple[str, ...] = ()


def _never(config: Any) -> bool:
    return False


@dataclass(frozen=True)
class Technique:
    """One technique: its config class and handlers (see the module docstring).

    - ``backends``: the backends that can take it, declared here once; ``unsupported`` says why another cannot
      and what to do (formatted with ``{backend}``).
    - ``version``: of the config's JSON; plans record it, a newer one than the code knows is refused.
    - ``aliases``: older names that still read (plan JSON keys, ``TrainingPlan`` keywords, manifests).
    - ``describe(config)``: its phrase in the plan's one-line description, in ``slot`` (what trains, the
      optimizer, or the list of the step's techniques).
    - ``apply(model, config, context)``: model transforms: the transformed model (in place or new).
    - ``fold(model)``: model transforms: every trace of the technique folded back into plain layers.
    - ``present(model)``: model transforms: whether ``model`` already holds the technique's modules (an export
      that does not record it is refused: the manifest would hide it from ``pull``).
    - ``check(config, micro_batches)``: raise ``ValueError`` where the plan's step cannot take the config.
    - ``argument``: graph passes and speed routes: the backend exporter's keyword for the config (default:
      ``name``).
    """

    name: str
    config: type
    stage: Stage
    backends: frozenset[str] = frozenset(BACKENDS)
    version: int = 1
    order: int = 0
    aliases: tuple[str, ...] = ()
    default: Any = None
    inactive: Callable[[Any], bool] = _never
    describe: Callable[[Any], str] | None = None
    slot: Slot = "step"
    apply: Callable[[nn.Module, Any, ModelContext], nn.Module] | None = None
    fold: Callable[[nn.Module], nn.Module] | None = None
    present: Callable[[nn.Module], bool] | None = None
    check: Callable[[Any, int], None] | None = None
    argument: str | None = None
    unsupported: str = "{name} is not possible on the {backend} backend; use one of {backends}, or drop {name}"

    def __post_init__(self) -> None:
        if not self.backends or not self.backends <= set(BACKENDS):
            raise ValueError(f"technique {self.name!r}: backends must be some of {BACKENDS}, got {set(self.backends)}")
        if self.stage is Stage.MODEL_TRANSFORM and self.apply is None:
            raise ValueError(f"technique {self.name!r}: a model transform needs an apply handler")

    @property
    def keyword(self) -> str:
        """The backend exporter's keyword for a graph pass's or speed route's config."""
        return self.argument or self.name

    def active(self, config: Any) -> bool:
        """Whether ``config`` does anything (not the default, not switched off)."""
        return config != self.default and not self.inactive(config)

    def record(self, config: Any) -> dict[str, Any]:
        """The manifest's entry for ``config``: ``{"name", "config"}``."""
        return {"name": self.name, "config": config.to_json()}

    def summary(self) -> str:
        """The config class's first docstring line, for listings (``memwall techniques``)."""
        return (self.config.__doc__ or "").strip().splitlines()[0] if self.config.__doc__ else ""


_REGISTRY: dict[str, Technique] = {}
_BY_CONFIG: dict[type, Technique] = {}
# The built-in technique files, imported on first use of the registry (each registers itself at its end).
_BUILTINS = (
    "exporters.techniques.lora",
    "exporters.techniques.freeze",
    "exporters.techniques.int8_weights",
    "exporters.techniques.recompute",
    "exporters.techniques.fused_update",
    "exporters.techniques.speed_routes",
)
_loaded = False


def register_technique(technique: Technique) -> Technique:
    """Add ``technique`` to the registry; a name, alias or config class already taken is an error, except by the
    same config class imported again (a module loaded under a second name re-registers its techniques)."""
    names = (technique.name, *technique.aliases)
    taken = [n for n in names if n in _REGISTRY and not _same_class(_REGISTRY[n].config, technique.config)]
    if taken:
        raise ValueError(f"technique name {taken[0]!r} is already registered; choose another name")
    if technique.config in _BY_CONFIG and _BY_CONFIG[technique.config].name != technique.name:  # one name each
        raise ValueError(f"{technique.config.__name__} is already the config of {_BY_CONFIG[technique.config].name!r}")
    for name in names:
        _REGISTRY[name] = technique
    _BY_CONFIG[technique.config] = technique
    return technique


def _same_class(a: type, b: type) -> bool:
    # By source file: a test file is imported by pytest as ``test_x`` and by a model spec as ``tests.test_x``.
    return (inspect.getsourcefile(a), a.__qualname__) == (inspect.getsourcefile(b), b.__qualname__)


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        import importlib

        for module in _BUILTINS:
            importlib.import_module(module)


def techniques() -> list[Technique]:
    """Every registered technique, in the order an export runs them (stage, then ``order``)."""
    _load_builtins()
    unique = {t.name: t for t in _REGISTRY.values()}.values()
    stages = list(Stage)
    return sorted(unique, key=lambda t: (stages.index(t.stage), t.order, t.name))


def find_technique(name: str) -> Technique | None:
    """The technique registered under ``name`` (or one of its old names), else None."""
    _load_builtins()
    return _REGISTRY.get(name)


def technique(name: str) -> Technique:
    """The technique registered under ``name`` (or one of its old names); an unknown name is an error."""
    _load_builtins()
    if name not in _REGISTRY:
        known = ", ".join(t.name for t in techniques())
        raise ValueError(f"unknown technique {name!r}: registered techniques are {known}")
    return _REGISTRY[name]


def technique_of(config: Any) -> Technique:
    """The technique whose config ``config`` is."""
    _load_builtins()
    if type(config) not in _BY_CONFIG:
        raise TypeError(
            f"{type(config).__name__} is not a registered technique config; register it with register_technique"
        )
    return _BY_CONFIG[type(config)]


def from_record(name: str, config: dict[str, Any], version: int = 1) -> Any:
    """The config a plan's or manifest's ``{name, config}`` entry describes (old names read too)."""
    found = technique(name)
    if version > found.version:
        raise ValueError(
            f"technique {name!r} was written as version {version}, this memwall reads up to {found.version}: "
            "upgrade memwall"
        )
    return found.config.from_json(config)


def in_order(configs: Iterable[Any]) -> list[tuple[Technique, Any]]:
    """``configs`` with their techniques, in the registry's order; two configs of one technique are an error."""
    order = {t.name: i for i, t in enumerate(techniques())}
    pairs: dict[str, tuple[Technique, Any]] = {}
    for config in configs:
        found = technique_of(config)
        if found.name in pairs:
            raise ValueError(f"two {found.name} configs in one plan: combine them into one {found.config.__name__}")
        pairs[found.name] = (found, config)
    return sorted(pairs.values(), key=lambda pair: order[pair[0].name])


def check_techniques(configs: Sequence[Any], *, micro_batches: int, backend: str | None = None) -> None:
    """Raise ``ValueError`` where an active config cannot be used with this step (or on ``backend``)."""
    active = [(found, config) for found, config in in_order(configs) if found.active(config)]
    for found, config in active:
        if found.check is not None:
            found.check(config, micro_batches)
    for found, _ in active:
        if backend is not None and backend not in found.backends:
            raise ValueError(
                found.unsupported.format(name=found.name, backend=backend, backends=", ".join(sorted(found.backends)))
            )


def check_recorded(model: nn.Module, records: Iterable[dict[str, Any]]) -> None:
    """Refuse a model that holds a technique's modules (LoRA adapters, int8 layers) its records do not name."""
    named = {found.name for r in records if (found := find_technique(r["name"])) is not None}
    for found in techniques():
        if found.present is not None and found.name not in named and found.present(model):
            raise ValueError(
                f"the model already has {found.name} applied, but the export does not record it, so the manifest "
                f"would hide it (memwall pull could not fold it back): pass the {found.config.__name__} to "
                f"export(model, out, {found.config.__name__}(...)) or to a TrainingPlan instead of applying it first"
            )


def backend_support() -> dict[str, list[str]]:
    """Backend -> the techniques it can take (for documentation and ``memwall techniques``)."""
    return {backend: [t.name for t in techniques() if backend in t.backends] for backend in BACKENDS}


def fold_techniques(model: nn.Module) -> nn.Module:
    """Every registered model transform folded back out of ``model`` (adapters merged, int8 weights as floats)."""
    for found in techniques():
        if found.fold is not None:
            model = found.fold(model)
    return model


def foldable(records: Iterable[dict[str, Any]]) -> list[str]:
    """The names of recorded techniques that change the model's architecture (they have a ``fold``)."""
    found = [find_technique(r["name"]) for r in records]  # the speed routes record each route by its own name
    return sorted({t.name for t in found if t is not None and t.fold is not None})


@dataclass(frozen=True)
class Listing:
    """One row of ``memwall techniques``."""

    name: str
    stage: str
    backends: list[str]
    version: int
    summary: str
    aliases: list[str] = field(default_factory=list)


def listing() -> list[Listing]:
    return [
        Listing(t.name, t.stage.value, sorted(t.backends), t.version, t.summary(), list(t.aliases))
        for t in techniques()
    ]
