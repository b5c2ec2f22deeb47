"""A planner lane's process (``Planner(workers=2)``): library chatter quieted before the heavy imports, so the lane
prints only what the planner logs (torchao's CUDA load failures and torch's notices otherwise reach the CLI user's
terminal once per lane: seen in `memwall plan`). Light on purpose: a spawned process imports this module first."""

from __future__ import annotations

import pickle
from typing import Any

_LANE: tuple[Any, int] | None = None  # this process's planner and the limit it searches for


def start(planner_config: bytes, limit: int) -> None:
    """The lane's initializer: ``planner_config`` is the pickled keyword arguments of its ``Planner``."""
    from sdk_tools.quiet import quiet_library_chatter

    quiet_library_chatter()
    import torch

    from exporters.edge_program import open_shared_traces
    from sdk_tools.planner import Planner

    global _LANE
    torch.set_num_threads(1)  # the lanes share the cores
    open_shared_traces()  # for its whole life: it only searches sets
    _LANE = (Planner(**pickle.loads(planner_config)), limit)


def search_set(base: Any) -> Any:
    """The trainable set ``base`` searched in this lane (``Planner.search_set``)."""
    assert _LANE is not None, "called in a lane's process"
    planner, limit = _LANE
    return planner.search_set(base, limit)
