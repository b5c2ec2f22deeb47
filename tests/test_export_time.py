"""The faster export pipeline writes the same programs: byte for byte against the stock pipeline (strict traces of
both methods, ``executorch.exir.to_edge``), planner variants sharing one trace equal their own exports, and an
impossible budget is refused from a lower bound before anything is exported.

Times are measured by ``benchmarks/export_time.py``, not here.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge
from executorch.exir.memory_planning import MemoryPlanningAlgorithmSuite, greedy
from executorch.exir.passes import MemoryPlanningPass

from exporters import OptimizerConfig
from exporters.edge_program import EDGE_CONFIG, needs_decomposition, shared_traces
from exporters.executorch_export import (
    MEMORY_PLANNING,
    PREDICT_METHOD,
    PROGRAM_FILE,
    TRAIN_METHOD,
    export_joint_graph,
    gradient_order,
)
from exporters.executorch_pipeline import MAY_CHANGE, Pipeline, Step, edge_passes, run_edge_passes
from exporters.losses import encode_labels, resolve_loss
from exporters.plan import TrainingPlan, export_plan
from exporters.techniques import FreezeConfig, FusedUpdateConfig, Int8WeightsConfig, RecomputeConfig
from exporters.training_graph import PredictStep, prepare_for_training_export, strip_prefix
from sdk_tools.planner import NoPlanFitsError, Planner, variants
from tests.conftest import BATCH, REFERENCE_CASES, ExportedCase, make_model


def stock_program(case: ExportedCase) -> bytes:
    """The program as the exporter built it before: strict traces of both methods, then the stock ``to_edge``."""
    model = case.fresh_eager()
    inputs = torch.zeros((BATCH, *case.sample_shape))
    with torch.no_grad():
        num_classes = model(inputs).shape[-1]
    loss = resolve_loss("cross_entropy")
    labels = encode_labels(loss, torch.arange(BATCH) % num_classes, num_classes)
    joint = export_joint_graph(model, loss, inputs, labels)
    names = [strip_prefix(n) for n in gradient_order(joint)]
    params = dict(model.named_parameters())
    predict = torch.export.export(
        PredictStep(model, names), (inputs, *(params[n].detach() for n in names)), strict=True
    )
    edge = to_edge(
        {TRAIN_METHOD: joint, PREDICT_METHOD: predict}, compile_config=EdgeCompileConfig(_check_ir_validity=False)
    )
    planner = MemoryPlanningPass(
        memory_planning_algo=MemoryPlanningAlgorithmSuite([greedy]),
        alloc_graph_input=MEMORY_PLANNING["alloc_graph_input"],
        alloc_graph_output=MEMORY_PLANNING["alloc_graph_output"],
    )
    return edge.to_executorch(ExecutorchBackendConfig(memory_planning_pass=planner)).buffer


def test_program_is_the_stock_pipelines_byte_for_byte(et_case: ExportedCase) -> None:
    assert (et_case.bundle.directory / PROGRAM_FILE).read_bytes() == stock_program(et_case)


def test_joint_graph_needs_no_second_decomposition() -> None:
    from executorch.exir.tracer import _default_decomposition_table

    model = make_model("small_cnn")
    inputs, labels = torch.zeros((BATCH, 1, 8, 8)), torch.arange(BATCH)
    joint = export_joint_graph(model, resolve_loss("cross_entropy"), inputs, labels)
    table = _default_decomposition_table()
    assert not needs_decomposition(joint, table)
    # A traced (not yet decomposed) program does: linear is composite, batch norm is in the table.
    assert needs_decomposition(torch.export.export(model.eval(), (inputs,)), table)


def canonical(gm: torch.fx.GraphModule) -> list[tuple[str, str, str, str]]:
    """A graph as its nodes' operations, targets and arguments, with node names replaced by positions."""
    position = {node: i for i, node in enumerate(gm.graph.nodes)}

    def arguments(value: object) -> str:
        return repr(torch.fx.node.map_arg(value, lambda node: f"%{position[node]}"))

    return [
        (n.op, "" if n.op == "placeholder" else str(n.target), arguments(n.args), arguments(n.kwargs))
        for n in gm.graph.nodes
    ]


@pytest.mark.parametrize("name", ["mlp", "small_cnn", "mobilenet_v2"])
def test_skipped_edge_passes_change_nothing(name: str) -> None:
    """Every pass the predicates skip, run where it would have run, leaves the graph as it was."""
    model = prepare_for_training_export(make_model(name))
    inputs, labels = torch.zeros((BATCH, *REFERENCE_CASES[name][1])), torch.arange(BATCH) % 2
    joint = export_joint_graph(model, resolve_loss("cross_entropy"), inputs, labels)
    skipped: list[str] = []
    run_edge_passes(copy.deepcopy(joint.graph_module), EDGE_CONFIG, skipped)
    assert {"SymToTensorPass", "RemoveMixedTypeOperators"} <= set(skipped)  # the saving is real
    gm = joint.graph_module
    for edge_pass in edge_passes(EDGE_CONFIG):
        after = edge_pass(gm).graph_module
        if type(getattr(edge_pass, "__wrapped__", edge_pass)).__name__ in skipped:
            assert canonical(after) == canonical(gm), edge_pass
        gm = after


class Transposes(torch.nn.Module):
    def forward(self, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        return x.t() * 2 + n


def test_edge_pass_predicates_see_the_ops_their_passes_rewrite() -> None:
    program = torch.export.export(Transposes(), (torch.ones(3, 2), torch.ones(2, 3, dtype=torch.int64)))
    may_change = {cls.__name__: test(program.graph_module) for cls, test in MAY_CHANGE.items()}
    assert may_change["NormalizeTransposePass"]  # aten.t
    assert may_change["ReplaceBrokenOpsWithFunctionalOpsPass"]  # t is a view
    assert may_change["ScalarToTensorPass"]  # mul(x, 2)
    assert may_change["RemoveMixedTypeOperators"]  # float + int64
    assert not may_change["SymToTensorPass"]  # static shapes


def test_pipeline_refuses_a_step_before_one_it_must_follow() -> None:
    def same(edge: object) -> object:
        return edge

    update = Step("fused_update", same, after={"recompute": "it finds the forward through the gradients"})
    assert Pipeline([Step("recompute", same), update]).names == ["recompute", "fused_update"]
    assert Pipeline([update]).names == ["fused_update"]  # a constraint on a step that is not there holds
    with pytest.raises(ValueError, match="'fused_update' must run after 'recompute': it finds the forward"):
        Pipeline([update, Step("recompute", same)])
    with pytest.raises(ValueError, match="distinct names"):
        Pipeline([update, update])


@pytest.fixture(scope="module")
def mlp_planner(tmp_path_factory: pytest.TempPathFactory) -> Planner:
    torch.manual_seed(0)
    model = make_model("mlp")
    return Planner(
        model, (1, 8, 8), 4, "executorch", OptimizerConfig(lr=0.01, momentum=0.9), tmp_path_factory.mktemp("plan")
    )


def test_variants_sharing_one_trace_equal_their_own_exports(mlp_planner: Planner, tmp_path: Path) -> None:
    base = TrainingPlan(FreezeConfig(last_blocks=1), mlp_planner.optimizer)
    plans = [base, replace(base, fused_update=FusedUpdateConfig()), replace(base, recompute=RecomputeConfig("auto"))]
    common = {"sample_shape": (1, 8, 8), "batch_size": 4}
    with shared_traces():
        shared = [export_plan(mlp_planner.model, tmp_path / f"shared{i}", p, **common) for i, p in enumerate(plans)]
    for i, (plan, bundle) in enumerate(zip(plans, shared, strict=True)):
        alone = export_plan(mlp_planner.model, tmp_path / f"alone{i}", plan, **common)
        assert (bundle.directory / PROGRAM_FILE).read_bytes() == (alone.directory / PROGRAM_FILE).read_bytes()
        assert comparable(bundle.manifest.to_json()) == comparable(alone.manifest.to_json())


def comparable(manifest: dict) -> dict:
    """A manifest without what differs between two exports of the same program: file hashes (the JSON files carry
    the manifest's own fields) and the seconds the verification took."""
    verification = {k: v for k, v in manifest.get("verification", {}).items() if k != "seconds"}
    return manifest | {"files": None, "verification": verification}


def test_impossible_budget_is_refused_before_any_export(mlp_planner: Planner, tmp_path: Path) -> None:
    planner = replace(mlp_planner, work_dir=tmp_path / "work")
    with pytest.raises(
        NoPlanFitsError, match=r"no plan fits 0\.1 MiB.*or more \(runtime .* int8 .*nothing was exported"
    ):
        planner.search(100 * 1024)
    assert not (tmp_path / "work").exists()


def test_lower_bound_is_below_the_leanest_plan(mlp_planner: Planner) -> None:
    head = TrainingPlan(FreezeConfig(last_blocks=0), mlp_planner.optimizer)
    leanest = mlp_planner.candidate(replace(variants(head, 4, "executorch")[-1], int8_frozen=Int8WeightsConfig()))
    assert leanest is not None
    bound, _ = mlp_planner.lower_bound_bytes()
    assert bound <= leanest.predicted_peak_bytes


def test_two_worker_processes_find_the_same_plans(mlp_planner: Planner, tmp_path: Path) -> None:
    full = mlp_planner.candidate(TrainingPlan(FreezeConfig(), mlp_planner.optimizer))
    assert full is not None
    budget = int(full.predicted_peak_bytes * 0.98 / 0.9)  # the plain full fine-tune just misses it
    alone = replace(mlp_planner, work_dir=tmp_path / "one").search(budget, top=2)
    together = replace(mlp_planner, work_dir=tmp_path / "two", workers=2).search(budget, top=2)
    assert [c.plan for c in together.fitting] == [c.plan for c in alone.fitting]
    assert [c.predicted_peak_bytes for c in together.fitting] == [c.predicted_peak_bytes for c in alone.fitting]
