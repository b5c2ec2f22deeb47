"""Shared fixtures: reference models exported once per test session (exports take seconds to a minute)."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from exporters import Bundle, ModelSpec, OptimizerConfig, export_bundle
from exporters.training_graph import prepare_for_training_export
from sdk_tools.coverage import ROWS_BY_NAME, Cell, check_cell, run_cells
from sdk_tools.models import build_model

# Every kind of MobileNetV2 block (expansion 1; stride 2; residual), twice over, in 5 blocks: the 17 of the full
# network add no kind of layer, only export time (to_edge interprets every node of the joint graph: ~3x longer).
MOBILENET_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2))
# Small settings that keep every layer type of each reference model.
REFERENCE_CASES: dict[str, tuple[dict, tuple[int, ...]]] = {
    "mlp": ({}, (1, 8, 8)),
    "small_cnn": ({}, (1, 8, 8)),
    "mobilenet_v2": (
        {"width_mult": 0.25, "in_channels": 3, "settings": MOBILENET_BLOCKS, "last_channels": 128},
        (3, 16, 16),
    ),
}
BATCH = 4


@dataclass
class ExportedCase:
    name: str
    eager: nn.Module  # the model as it trains on device (BatchNorm frozen), same initial weights
    sample_shape: tuple[int, ...]
    bundle: Bundle

    def fresh_eager(self) -> nn.Module:
        return copy.deepcopy(self.eager)

    def batch(self, seed: int, batch: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        return torch.rand((batch, *self.sample_shape), generator=gen), torch.randint(0, 10, (batch,), generator=gen)


def make_model(name: str, seed: int = 0, cases: dict[str, tuple[dict, tuple[int, ...]]] = REFERENCE_CASES) -> nn.Module:
    torch.manual_seed(seed)
    kwargs, _ = cases[name]
    model = build_model(name, **kwargs)
    # Non-trivial BatchNorm statistics, so freezing them is actually exercised.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


def export_case(
    tmp_root: Path,
    name: str,
    optimizer: OptimizerConfig,
    *,
    tag: str = "",
    batch: int = BATCH,
    micro_batches: int = 1,
    configure: Callable[[nn.Module], None] | None = None,
    backend: str = "executorch",
) -> ExportedCase:
    kwargs, shape = REFERENCE_CASES[name]
    model = make_model(name)
    if configure:
        configure(model)
    bundle = export_bundle(
        model,
        tmp_root / f"{name}-{backend}{tag}",
        sample_shape=shape,
        batch_size=batch,
        backend=backend,
        optimizer=optimizer,
        model_spec=ModelSpec(name, kwargs),
        micro_batches=micro_batches,
    )
    return ExportedCase(name, prepare_for_training_export(model), shape, bundle)


SGD_MOMENTUM = OptimizerConfig(kind="sgd", lr=0.01, momentum=0.9)


# `./dev test --fast` (pytest -m "not slow") leaves out every test of these files: each builds or runs the native
# runtime or a mobile app, runs the CLI in subprocesses (torch and ExecuTorch imported each time), or exports through
# XNNPACK or the planner; 20 s to minutes per test on the 2-core CI machine (pytest --durations, 2026-12-08).
SLOW_FILES = frozenset(
    {
        "test_analyze.py",
        "test_android.py",
        "test_cli.py",
        "test_export_time.py",
        "test_ios.py",
        "test_planner_speed.py",
        "test_runtime.py",
        "test_runtime_inputs.py",
        "test_runtime_memory.py",
        "test_speed_routes.py",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)


# MobileNetV2's ExecuTorch export: 60 s under load 10 (about 17 s idle), so that case is slow.
@pytest.fixture(scope="session", params=["mlp", "small_cnn", pytest.param("mobilenet_v2", marks=pytest.mark.slow)])
def et_case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ExportedCase:
    """Each reference model exported to ExecuTorch with SGD + momentum, all parameters trainable."""
    return export_case(tmp_path_factory.mktemp("et"), request.param, SGD_MOMENTUM)


class CoverageCells:
    """Cells of the operator coverage table (``sdk_tools.coverage``), each measured once per session: test_coverage.py
    measures the whole table as the script does (child processes, two at a time), test_rewrites.py checks the cells
    a rewrite makes train (22 verified exports, 45 s CPU in-process) and measures only those not measured yet."""

    def __init__(self) -> None:
        self._cells: dict[tuple[str, str], Cell] = {}

    def measure(self, rows: list[str], backends: tuple[str, ...]) -> dict[tuple[str, str], Cell]:
        for backend in backends:
            missing = [row for row in rows if (row, backend) not in self._cells]
            if missing:
                self._cells.update(((row, b), cell) for row, b, cell in run_cells(missing, (backend,), jobs=2))
        return {(row, backend): self._cells[row, backend] for row in rows for backend in backends}

    def cell(self, row: str, backend: str, work: Path) -> Cell:
        if (row, backend) not in self._cells:
            self._cells[row, backend] = check_cell(ROWS_BY_NAME[row], backend, work)
        return self._cells[row, backend]


@pytest.fixture(scope="session")
def coverage_cells() -> CoverageCells:
    return CoverageCells()


# The native runtime (runtime/): built once per session by runtime/setup.sh, shared by test_runtime*,
# test_runtime_memory and tests/lab/test_lab_native_report.
NATIVE_BUILD = Path(__file__).resolve().parents[1] / "runtime" / "build"


@pytest.fixture(scope="session")
def native() -> Path:
    """runtime/setup.sh builds (or finds up to date) libmemwall.a, memwall-run, memwall-golden and memwall-c-smoke;
    the path of memwall-run."""
    env = {**os.environ, "MEMWALL_PYTHON": sys.executable}
    done = subprocess.run([str(NATIVE_BUILD.parent / "setup.sh")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return NATIVE_BUILD / "memwall-run"


def copy_bundle(bundle: Bundle, where: Path) -> Path:
    """A private copy (each run writes its checkpoint into the bundle directory)."""
    target = where / bundle.directory.name
    shutil.copytree(bundle.directory, target)
    (target / "checkpoint.safetensors").unlink(missing_ok=True)
    return target


def run_native(binary: Path, bundle_dir: Path, data: Path, steps: int, *extra: str) -> tuple[list[float], str]:
    """Losses per step and stdout."""
    done = subprocess.run(
        [str(binary), str(bundle_dir), "--data", str(data), "--steps", str(steps), *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    losses = [float(line.split()[3]) for line in done.stdout.splitlines() if line.startswith("step ")]
    return losses, done.stdout


def run_c_smoke(bundle_dir: Path, checkpoint: Path) -> None:
    """memwall.h compiled as C99 (what Swift and JNI import): a step, predict, checkpoint round trip, report."""
    done = subprocess.run(
        [str(NATIVE_BUILD / "memwall-c-smoke"), str(bundle_dir), str(checkpoint)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok 1 ")


def refusal(binary: Path, bundle_dir: Path, data: Path) -> str:
    """memwall-run's one-line refusal of ``bundle_dir`` (exit 2, nothing on stdout, no checkpoint written)."""
    done = subprocess.run(
        [str(binary), str(bundle_dir), "--data", str(data), "--steps", "1"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memwall-run: error: "), done.stderr
    assert not (bundle_dir / "checkpoint.safetensors").exists()
    return lines[0]
