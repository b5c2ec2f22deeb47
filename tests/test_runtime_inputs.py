"""Bundles with several named inputs of different dtypes, through the native runtime (runtime/).

memwall's exporter writes one float32 input today; transformers will bring int64 token ids and float masks. This
builds such a bundle the way exporters/executorch_export.py builds one (non-strict ``torch.export`` in first-use
order, ``_export_forward_backward``, ``to_edge`` of a train and a predict method, greedy memory planning with inputs
and outputs in the arena, the runtime check) with a manifest that validates against manifest.v1, and checks that
``memwall-run`` trains it exactly as eager PyTorch does and refuses data files that do not match its inputs.

The Python host runner (sdk_tools/runner) feeds one input ``x`` only, so the reference here is eager PyTorch with
the runner's own optimizer (sdk_tools/runner/optim.py), fed the batches memwall-run takes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge
from executorch.exir.memory_planning import MemoryPlanningAlgorithmSuite, greedy
from executorch.exir.passes import MemoryPlanningPass
from safetensors.torch import load_file
from torch import nn
from torch.export.experimental import _export_forward_backward
from torch.export.graph_signature import OutputKind
from torch.func import functional_call

from exporters.bundle import (
    Bundle,
    Manifest,
    MemoryEstimate,
    ParameterSpec,
    TensorSpec,
    atomic_write_bytes,
    file_entry,
    load_bundle,
    write_manifest,
)
from exporters.config import OptimizerConfig
from exporters.training_graph import MODEL_PREFIX, in_first_use_order
from exporters.verify import check_runtime
from sdk_tools.runner.optim import Optimizer
from tests.conftest import copy_bundle, refusal, run_c_smoke, run_native

VOCAB, DIM, CLASSES, SEQ = 24, 8, 5, 6
BATCH = 4
STEPS = 20  # as tests/test_runtime.py compares the runners
SAMPLES = 24  # 6 batches: 20 steps wrap the stream into later epochs
SGD = OptimizerConfig(kind="sgd", lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
ADAMW = OptimizerConfig(kind="adamw", lr=0.02, weight_decay=0.01, betas=(0.8, 0.99), eps=1e-3)


class MaskedBagClassifier(nn.Module):
    """Token ids (int64) and a float mask -> embedding, masked mean over the sequence, linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.embed = nn.Embedding(VOCAB, DIM)
        self.head = nn.Linear(DIM, CLASSES)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        summed = (self.embed(ids) * mask.unsqueeze(-1)).sum(dim=1)
        return self.head(summed / mask.sum(dim=1, keepdim=True).clamp(min=1.0))


class TrainStep(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = self.model(ids, mask)
        return nn.functional.cross_entropy(logits, label), logits.detach()


class PredictStep(nn.Module):
    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, *trainable: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, dict(zip(self.names, trainable, strict=True)), (ids, mask))


def export_two_input_bundle(out: Path, optimizer: OptimizerConfig, micro_batches: int) -> Bundle:
    """A training program whose train method takes ``ids`` (int64), ``mask`` (float32) and ``label``."""
    model = MaskedBagClassifier().eval()
    ids, mask, label = torch.zeros((BATCH, SEQ), dtype=torch.int64), torch.ones(BATCH, SEQ), torch.arange(BATCH)
    traced = in_first_use_order(torch.export.export(TrainStep(model), (ids, mask, label), strict=False))
    joint = _export_forward_backward(traced, joint_loss_index=0)
    order = [s.target for s in joint.graph_signature.output_specs if s.kind == OutputKind.GRADIENT_TO_PARAMETER]
    names = [n.removeprefix(MODEL_PREFIX) for n in order]
    params = dict(model.named_parameters())
    predict_inputs = (ids, mask, *(params[n].detach() for n in names))
    predict = torch.export.export(PredictStep(model, names), predict_inputs, strict=False)
    edge = to_edge({"forward": joint, "predict": predict}, compile_config=EdgeCompileConfig(_check_ir_validity=False))
    planner = MemoryPlanningPass(
        memory_planning_algo=MemoryPlanningAlgorithmSuite([greedy]), alloc_graph_input=True, alloc_graph_output=True
    )
    program = edge.to_executorch(ExecutorchBackendConfig(memory_planning_pass=planner))
    plans = program.executorch_program.execution_plan
    operators = sorted({f"{op.name}.{op.overload}" for plan in plans for op in plan.operators})
    runtime = {"backends": [], "kernels": "portable", "threads": 1, "operators": operators}
    check_runtime(runtime)
    out.mkdir(parents=True)
    atomic_write_bytes(out / "model.pte", program.buffer)
    arenas = {plan.name: sum(plan.non_const_buffer_sizes) for plan in plans}
    trainable = [
        ParameterSpec(r, list(params[n].shape), "float32", params[n].numel()) for r, n in zip(order, names, strict=True)
    ]
    weights = 4 * sum(p.numel for p in trainable)
    state = weights * (2 if optimizer.kind == "adamw" else int(optimizer.momentum > 0))
    program_bytes = (out / "model.pte").stat().st_size
    manifest = Manifest(
        name="masked-bag-executorch",
        backend="executorch",
        created_by="memwall tests/test_runtime_inputs.py",
        files={"program": file_entry(out, "model.pte")},
        inputs=[TensorSpec("ids", [BATCH, SEQ], "int64"), TensorSpec("mask", [BATCH, SEQ], "float32")],
        labels=TensorSpec("label", [BATCH], "int64"),
        outputs=[TensorSpec("loss", [], "float32"), TensorSpec("logits", [BATCH, CLASSES], "float32")],
        classes=[str(c) for c in range(CLASSES)],
        loss="cross_entropy",
        trainable=trainable,
        frozen_parameter_count=0,
        optimizer=optimizer.to_json(),
        training={"batch_size": BATCH * micro_batches, "micro_batches": micro_batches},
        methods={
            "train": {"name": "forward", "inputs": ["ids", "mask", "label"], "outputs": ["loss", "logits"]},
            "predict": {"name": "predict", "inputs": ["ids", "mask", *order], "outputs": ["logits"]},
        },
        # Not calibrated (memory is not what this test is about): the parts, added up.
        memory=MemoryEstimate(
            planned_arena_bytes=arenas["forward"],
            parameter_bytes=weights,
            trainable_parameter_bytes=weights,
            gradient_bytes=weights,
            optimizer_state_bytes=state,
            program_bytes=program_bytes,
            runtime_overhead_bytes=0,
            predicted_peak_bytes=arenas["forward"] + arenas["predict"] + program_bytes + state,
            evaluation_arena_bytes=arenas["predict"],
        ),
        model={"spec": None, "kwargs": {}, "parameters": weights // 4, "trainable_parameters": weights // 4},
        backend_options={
            "memory_planning": {"algorithm": "greedy", "alloc_graph_input": True, "alloc_graph_output": True},
            "optimizer_runs_in": "app",
            "runtime": runtime,
        },
        verification={"verified": False},
    )
    write_manifest(out, manifest)  # validates against manifest.v1
    return load_bundle(out)


@dataclass(frozen=True)
class Tokens:
    ids: np.ndarray  # int64 (N, SEQ)
    mask: np.ndarray  # float32 (N, SEQ): each row's first 1..SEQ positions
    y: np.ndarray  # int64 (N,)

    def batch(self, position: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """memwall-run's stream: batch k is samples [k*B, (k+1)*B) of the file, epoch after epoch."""
        first = (position % (len(self.y) // BATCH)) * BATCH
        rows = slice(first, first + BATCH)
        return torch.from_numpy(self.ids[rows]), torch.from_numpy(self.mask[rows]), torch.from_numpy(self.y[rows])


@pytest.fixture(scope="module")
def tokens() -> Tokens:
    rng = np.random.default_rng(5)
    lengths = rng.integers(1, SEQ + 1, SAMPLES)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.float32)
    ids = rng.integers(0, VOCAB, (SAMPLES, SEQ)).astype(np.int64)
    return Tokens(ids, mask, rng.integers(0, CLASSES, SAMPLES).astype(np.int64))


@pytest.fixture(scope="module")
def token_file(tokens: Tokens, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "tokens.npz"
    np.savez(path, ids=tokens.ids, mask=tokens.mask, y=tokens.y)
    return path


@pytest.fixture(scope="module")
def two_input_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Bundle]:
    root = tmp_path_factory.mktemp("two-inputs")
    return {
        "sgd": export_two_input_bundle(root / "sgd", SGD, micro_batches=1),
        "adamw-micro": export_two_input_bundle(root / "adamw", ADAMW, micro_batches=2),
    }


def accuracy(model: nn.Module, tokens: Tokens) -> float:
    with torch.no_grad():
        logits = model(torch.from_numpy(tokens.ids), torch.from_numpy(tokens.mask))
    return float((logits.argmax(dim=1) == torch.from_numpy(tokens.y)).double().mean())


def eager_run(bundle: Bundle, tokens: Tokens) -> tuple[list[float], dict[str, torch.Tensor], list[float]]:
    """Losses, final state (checkpoint names) and accuracy before/after of eager PyTorch on memwall-run's batches,
    gradients averaged over the micro-batches and applied by the Python runner's optimizer."""
    model = MaskedBagClassifier().eval()
    params = {MODEL_PREFIX + n: p for n, p in model.named_parameters()}
    optimizer = Optimizer(OptimizerConfig.from_json(bundle.manifest.optimizer), params)
    micro = bundle.manifest.training["micro_batches"]
    before = accuracy(model, tokens)
    losses, position = [], 0
    for _ in range(STEPS):
        grads = {name: torch.zeros_like(p) for name, p in params.items()}
        total = 0.0
        for _ in range(micro):
            ids, mask, y = tokens.batch(position)
            position += 1
            model.zero_grad()
            loss = nn.functional.cross_entropy(model(ids, mask), y)
            loss.backward()
            total += loss.item()
            for name, p in params.items():
                grads[name] += p.grad
        optimizer.step({name: g / micro for name, g in grads.items()})
        losses.append(total / micro)
    state = {name: p.detach().clone() for name, p in params.items()}
    state.update({f"optimizer/{kind}": t for kind, t in optimizer.state.items()})
    return losses, state, [before, accuracy(model, tokens)]


@pytest.mark.parametrize("kind", ["sgd", "adamw-micro"])
def test_two_inputs_train_natively_like_eager_pytorch(
    kind: str, native: Path, two_input_bundles: dict[str, Bundle], tokens: Tokens, token_file: Path, tmp_path: Path
) -> None:
    bundle = two_input_bundles[kind]
    bundle_dir = copy_bundle(bundle, tmp_path)
    native_losses, out = run_native(native, bundle_dir, token_file, STEPS, "--eval-data", str(token_file))
    losses, state, eager_accuracy = eager_run(bundle, tokens)
    assert len(set(native_losses)) > 1
    # ExecuTorch's kernels and eager PyTorch's sum in different orders: last-bit differences (measured after 20
    # steps: losses within 2.4e-7, parameters and optimizer state within 1.8e-7), kept small by AdamW's large eps.
    np.testing.assert_allclose(native_losses, losses, rtol=0, atol=1e-6)
    saved = load_file(bundle_dir / "checkpoint.safetensors")
    assert sorted(saved) == sorted(state)
    for name, value in state.items():
        torch.testing.assert_close(saved[name], value, rtol=0, atol=1e-6, msg=name)
    native_accuracy = [float(line.split()[1]) for line in out.splitlines() if line.startswith("accuracy_")]
    assert native_accuracy == pytest.approx(eager_accuracy, abs=1e-9)


def test_the_c_api_takes_two_inputs(native: Path, two_input_bundles: dict[str, Bundle], tmp_path: Path) -> None:
    """memwall.h from plain C99: inputs as mw_bundle_input lists them (int64 ids, float32 mask)."""
    run_c_smoke(copy_bundle(two_input_bundles["adamw-micro"], tmp_path), tmp_path / "c.safetensors")


MISMATCHED = {
    "an input missing": (lambda t: {"ids": t.ids, "y": t.y}, "must hold an array named 'mask'"),
    "an input misnamed": (
        lambda t: {"ids": t.ids, "masks": t.mask, "y": t.y},
        "holds array 'masks', which is neither an input of the bundle",
    ),
    "float token ids": (
        lambda t: {"ids": t.ids.astype(np.float32), "mask": t.mask, "y": t.y},
        "array 'ids' is float32, input 'ids' is int64",
    ),
    "a sequence too long": (
        lambda t: {"ids": np.pad(t.ids, ((0, 0), (0, 1))), "mask": t.mask, "y": t.y},
        "input 'ids': samples have shape (7,), the bundle expects (6,)",
    ),
    "ragged inputs": (
        lambda t: {"ids": t.ids, "mask": t.mask[:-1], "y": t.y},
        "input 'mask' holds 23 samples, input 'ids' 24",
    ),
    "a NaN mask": (
        lambda t: {"ids": t.ids, "mask": np.where(t.mask > 0, t.mask, np.nan).astype(np.float32), "y": t.y},
        "input 'mask' holds NaN or infinity",
    ),
    "a label out of range": (
        lambda t: {"ids": t.ids, "mask": t.mask, "y": np.full_like(t.y, CLASSES)},
        f"labels span [{CLASSES}, {CLASSES}], the bundle has classes 0..{CLASSES - 1}",
    ),
}


@pytest.mark.parametrize("case", list(MISMATCHED))
def test_data_that_does_not_match_the_inputs_is_refused(
    case: str, native: Path, two_input_bundles: dict[str, Bundle], tokens: Tokens, tmp_path: Path
) -> None:
    arrays, expected = MISMATCHED[case]
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays(tokens))
    bundle_dir = copy_bundle(two_input_bundles["sgd"], tmp_path / "bundle")
    assert expected in refusal(native, bundle_dir, path)


def test_inputs_of_different_batch_sizes_are_refused(
    native: Path, two_input_bundles: dict[str, Bundle], token_file: Path, tmp_path: Path
) -> None:
    """The data reader slices every input by the first one's batch: a manifest whose inputs disagree is refused."""
    bundle_dir = copy_bundle(two_input_bundles["sgd"], tmp_path)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["inputs"][1]["shape"] = [BATCH - 1, SEQ]
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    assert "inputs[1] and inputs[0] differ in batch size" in refusal(native, bundle_dir, token_file)
