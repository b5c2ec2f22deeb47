"""The public entry point: ``export(model, out, *techniques, budget=...)``, what ``memwall export`` runs.

``exporters`` holds the export machinery (``export_bundle`` exports a model as given, ``export_plan`` applies a
``TrainingPlan``); this call adds the defaults the command line has and, with a budget, the planner, which lives
here in ``sdk_tools`` (``exporters`` never imports ``sdk_tools``).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from exporters.bundle import Bundle, load_bundle
from exporters.config import OptimizerConfig
from exporters.export import check_destination, staged
from exporters.plan import TrainingPlan, export_plan
from exporters.techniques.speed_routes import SpeedConfig, default_speed_routes


def export(
    model: nn.Module,
    out: str | Path,
    *techniques: Any,
    sample_shape: Sequence[int],
    batch_size: int = 8,
    budget: int | None = None,
    backend: str = "executorch",
    optimizer: OptimizerConfig | None = None,
    micro_batches: int = 1,
    margin: float = 0.1,
    work_dir: str | Path = "memwall_runs/plans",
    lossless: bool = False,
    **options: Any,
) -> Bundle:
    """Export ``model`` as a training bundle in ``out`` with ``techniques`` applied and recorded in the manifest.

    ``techniques`` are configs of registered techniques (``memwall techniques`` lists them); each is applied to a
    copy of the model (or by the backend's exporter) and recorded, so ``memwall pull`` can fold it back. Defaults
    are the command line's: the ExecuTorch speed routes are on unless a ``SpeedConfig`` is given
    (``SpeedConfig.off()`` turns them off); verification is on. With ``budget`` (bytes), the planner searches for
    the plan that trains most of the model within ``budget`` less ``margin`` and exports that instead
    (``techniques`` and ``micro_batches`` then come from the planner, so none may be given). ``options``:
    ``export_plan``'s (``loss``, ``classes``, ``name``, ``model_spec``, ``overwrite``, ``verify``).

    Example::

        from exporters.techniques import FreezeConfig, LoraConfig
        from sdk_tools.api import export

        bundle = export(model, "bundle", LoraConfig(rank=4), FreezeConfig(("classifier.*",)), sample_shape=(3, 32, 32))
        [t["name"] for t in bundle.manifest.techniques]  # ['lora', 'freeze', ...]
        export(model, "small", sample_shape=(3, 32, 32), budget=48 * 2**20, overwrite=True)
    """
    optimizer = optimizer or OptimizerConfig()
    if not any(isinstance(t, SpeedConfig) for t in techniques):
        techniques = (*techniques, default_speed_routes(backend))
    if budget is None:
        plan = TrainingPlan(*techniques, optimizer=optimizer, micro_batches=micro_batches)
        return export_plan(
            model, out, plan, sample_shape=sample_shape, batch_size=batch_size, backend=backend, **options
        )
    from sdk_tools.planner import Planner

    chosen = [t for t in techniques if not isinstance(t, SpeedConfig)]
    if chosen or micro_batches != 1:
        raise ValueError(
            "with a budget the planner chooses the techniques and micro-batches; drop them (limiting the search to "
            "named techniques is not built yet), or export without a budget"
        )
    speed = next((t for t in techniques if isinstance(t, SpeedConfig)), None)
    planner = Planner(
        model, tuple(sample_shape), batch_size, backend, optimizer, Path(work_dir),
        model_spec=options.get("model_spec"), loss=options.get("loss", "cross_entropy"), speed=speed, lossless=lossless,
    )  # fmt: skip
    return export_within_budget(planner, Path(out), budget, margin=margin, overwrite=options.get("overwrite", False))[0]


def export_within_budget(
    planner: Any, out: Path, budget: int, *, margin: float, overwrite: bool
) -> tuple[Bundle, TrainingPlan]:
    """The planner's best plan for ``budget`` exported into ``out`` (the old bundle stays until the new one is
    complete), and that plan.

    Example::

        planner = Planner(model, (3, 32, 32), 8, "executorch", OptimizerConfig(), Path("memwall_runs/plans"))
        bundle, plan = export_within_budget(planner, Path("bundle"), 48 * 2**20, margin=0.1, overwrite=False)
    """
    check_destination(out, overwrite)
    best = planner.search(budget, margin=margin, top=1).fitting[0]
    with staged(out) as stage:
        shutil.copytree(best.bundle.directory, stage, dirs_exist_ok=True)
    return load_bundle(out), best.plan
