"""The planner's faster search returns what the one-process, one-set-at-a-time search returns: the same plans, in
the same order, with the same predicted figures (every figure still a real export's prediction).

Times are measured by ``benchmarks/plan_time.py``, not here.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from exporters import OptimizerConfig
from exporters.plan import TrainingPlan
from exporters.techniques import FreezeConfig
from sdk_tools.planner import Planner
from tests.conftest import make_model


@pytest.fixture(scope="module")
def planner(tmp_path_factory: pytest.TempPathFactory) -> Planner:
    torch.manual_seed(0)
    model = make_model("mlp")
    return Planner(model, (1, 8, 8), 4, "executorch", OptimizerConfig(lr=0.01), tmp_path_factory.mktemp("plan"))


def test_lanes_return_the_one_process_report(planner: Planner, tmp_path: Path) -> None:
    full = planner.candidate(TrainingPlan(FreezeConfig(), planner.optimizer))
    assert full is not None
    budget = int(full.predicted_peak_bytes * 0.98 / 0.9)  # the plain full fine-tune just misses it: sets search on
    alone = planner.search(budget, top=3)
    together = replace(planner, work_dir=tmp_path, workers=2).search(budget, top=3)  # every export again
    assert len(alone.fitting) == 3
    assert together.to_json(bundles=False) == alone.to_json(bundles=False)
