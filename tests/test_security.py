"""Hostile and careless input, tried for real (docs/security.md): received bundles, checkpoints and data files.

Bundles are exported once per session (one ExecuTorch, one ONNX Runtime MLP) and copied per attack; the runtimes
are the real ones. The command line is driven in-process (``sdk_tools.cli.main``, one interpreter start fewer per
case); the children it starts (the measuring worker, the forked preflight) are real processes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import load_file

from exporters import ModelSpec, OptimizerConfig, export_bundle
from exporters.bundle import MANIFEST_NAME, BundleError, UntrustedCodeError, atomic_write, load_bundle
from sdk_tools.cli import main
from sdk_tools.data.loading import DataError, load_npz
from sdk_tools.models import build_model
from sdk_tools.runner import TrainConfig, open_session, train
from sdk_tools.runner.checkpoint import CheckpointError, default_checkpoint_path, load_checkpoint, write_safetensors
from sdk_tools.runner.train import rebuild_trained_model

SHAPE = (1, 8, 8)
QUIET = {"progress": False, "eval_split": None}


def _export(root: Path, backend: str) -> Path:
    torch.manual_seed(0)
    out = root / f"mlp-{backend}"
    export_bundle(
        build_model("mlp"),
        out,
        sample_shape=SHAPE,
        batch_size=8,
        backend=backend,
        optimizer=OptimizerConfig(kind="sgd", lr=0.05),
        model_spec=ModelSpec("mlp", {}),
    )
    return out


@pytest.fixture(scope="session")
def et_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory.mktemp("security"), "executorch")


@pytest.fixture(scope="session")
def ort_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory.mktemp("security"), "onnxruntime")


def copy_bundle(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / src.name, ignore=shutil.ignore_patterns("checkpoint.safetensors")))


def edit_manifest(bundle: Path, **changes: object) -> None:
    path = bundle / MANIFEST_NAME
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def replace_file(bundle: Path, role: str, content: bytes) -> None:
    """Change an artifact and re-sign it as a sender would: the sha256 then matches (integrity, not soundness)."""
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    entry = data["files"][role]
    (bundle / entry["path"]).write_bytes(content)
    entry.update(sha256=hashlib.sha256(content).hexdigest(), bytes=len(content))
    (bundle / MANIFEST_NAME).write_text(json.dumps(data))


def cli_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the CLI in-process on a mistake: exit status 2 and exactly one line on stderr, no traceback."""
    try:
        status = main(list(argv))
    except SystemExit as exc:  # argparse's own refusals
        status = int(exc.code or 0)
    err = capsys.readouterr().err.strip()
    assert status == 2, (argv, status, err)
    # ExecuTorch's own C++ log lines ("[cpuinfo_utils.cpp:...]") are the runtime's, not memwall's.
    ours = [line for line in err.splitlines() if not line.startswith("[")]
    assert len(ours) == 1 and "Traceback" not in err, err
    return ours[0]


# --- a bundle runs no code -----------------------------------------------------------------------------------------


def test_manifest_naming_subprocess_run_runs_nothing(
    et_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = copy_bundle(et_bundle, tmp_path)
    marker = tmp_path / "ran"
    # The attack that worked: loss (imported by train/measure) and model spec (by pull --base) naming callables.
    edit_manifest(
        bundle,
        loss="subprocess:run",
        model={"spec": "os:system", "kwargs": {"command": f"touch {marker}"}},
        techniques=[{"name": "lora", "config": {}}],
    )
    loaded = load_bundle(bundle)
    result = train(loaded, TrainConfig(steps=2, checkpoint_every=0, **QUIET))
    assert result.steps_run == 2 and not marker.exists()
    with pytest.raises(UntrustedCodeError, match="--trust-bundle-code"):
        rebuild_trained_model(loaded, {})
    base = tmp_path / "base.pt"
    torch.save({}, base)
    err = cli_error(capsys, "pull", str(bundle), "--out", str(tmp_path / "o.pt"), "--base", str(base))
    assert "--trust-bundle-code" in err and not marker.exists()


def test_python_file_in_bundle_dir_is_not_imported_and_measure_checkpoint_works(
    et_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = copy_bundle(et_bundle, tmp_path)
    marker = tmp_path / "imported"
    for name in ("torch.py", "sdk_tools.py", "exporters.py", "json.py"):
        (bundle / name).write_text(f"open({str(marker)!r}, 'w').close()\n")
    # Run from inside the bundle, as a user would: the measuring child used to put this directory first on its
    # path. The CLI runs in-process (one interpreter fewer); the child under test is a real one.
    monkeypatch.chdir(bundle)
    status = main(["measure", ".", "--steps", "2", "--eval-split", "", "--checkpoint", "ck.safetensors", "--json"])
    out = capsys.readouterr().out
    assert status == 0 and json.loads(out)["train"]["steps_run"] == 2
    assert (bundle / "ck.safetensors").is_file()  # --checkpoint, relative to where the user ran the command
    assert not marker.exists()


# --- no file outside the bundle is read through it -----------------------------------------------------------------


def test_onnx_external_data_initializer_is_refused(ort_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(ort_bundle, tmp_path)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x01" * 4096)
    path = bundle / "training_model.onnx"
    model = onnx.load(str(path))
    tensor = model.graph.initializer[0]
    for field in ("raw_data", "int64_data", "float_data"):
        tensor.ClearField(field)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", str(secret)), ("offset", "0"), ("length", "4096")):
        tensor.external_data.add(key=key, value=value)
    replace_file(bundle, "training_model", model.SerializeToString())
    with pytest.raises(BundleError, match="external data"):
        load_bundle(bundle)


def test_unlisted_checkpoint_external_data_is_refused(ort_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(ort_bundle, tmp_path)
    load_bundle(bundle)
    (bundle / "checkpoint.data").write_bytes(b"\0" * 64)
    with pytest.raises(BundleError, match="does not list it"):
        load_bundle(bundle)


def test_symlinked_artifact_and_manifest_are_refused(et_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(et_bundle, tmp_path)
    outside = tmp_path / "outside.pte"
    shutil.move(bundle / "model.pte", outside)
    (bundle / "model.pte").symlink_to(outside)  # same bytes, same hash: only the link is wrong
    with pytest.raises(BundleError, match="symbolic link"):
        load_bundle(bundle)
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / MANIFEST_NAME).symlink_to(et_bundle / MANIFEST_NAME)
    with pytest.raises(BundleError, match=r"no manifest\.json file"):
        load_bundle(linked)


@pytest.mark.parametrize(
    "raw, problem",
    [
        (b'{"schema_version": NaN}', "not a JSON number"),
        (b'{"schema_version": 1, "schema_version": 1}', "appears twice"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b" " * (4 * 2**20 + 1), "larger than"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_hostile_manifest_bytes_are_refused(tmp_path: Path, raw: bytes, problem: str) -> None:
    (tmp_path / MANIFEST_NAME).write_bytes(raw)
    with pytest.raises(BundleError, match=problem):
        load_bundle(tmp_path)


# --- a runtime crash becomes a clear error -------------------------------------------------------------------------


def test_corrupted_hash_valid_pte_is_a_clear_error_not_a_dead_cli(
    et_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    program = (et_bundle / "model.pte").read_bytes()
    bundle = copy_bundle(et_bundle, tmp_path)
    outcomes: dict[str, int] = {}
    crashing = None
    # One flipped byte in the program's instructions (the first 6 KB; the rest is weights, which never crash):
    # measured, about 1 in 15 such programs segfaults or aborts inside ExecuTorch 1.5.1.
    for offset in range(4000, 6000, 17):
        corrupted = bytearray(program)
        corrupted[offset] ^= 0xFF
        replace_file(bundle, "program", bytes(corrupted))
        try:
            open_session(load_bundle(bundle))
            outcomes["ran"] = outcomes.get("ran", 0) + 1
        except BundleError as exc:
            kind = "crashed" if "crashed" in str(exc) else "refused"
            outcomes[kind] = outcomes.get(kind, 0) + 1
            if kind == "crashed":
                crashing = bytes(corrupted)
                break
    assert crashing is not None, outcomes
    replace_file(bundle, "program", crashing)
    err = cli_error(capsys, "train", str(bundle), "--steps", "1", "--eval-split", "")
    assert "crashed (killed by SIG" in err and "re-export" in err


def test_onnxruntime_crash_is_a_clear_error_not_a_dead_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX Runtime 1.19.2's AveragePoolGrad dies with SIGFPE (measured): exported without memwall's average-pool
    rewrite, a bundle ORT loads kills the process at its first step. The preflight child makes that one line."""
    monkeypatch.setattr("exporters.techniques.onnx_symbolics.all_rewrites", lambda: ())
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(64, 10)
    )
    bundle = tmp_path / "avgpool"
    export_bundle(model, bundle, sample_shape=(1, 8, 8), batch_size=4, backend="onnxruntime", verify=False)
    with pytest.raises(BundleError, match=r"crashed \(killed by SIGFPE\)"):
        open_session(load_bundle(bundle))
    err = cli_error(capsys, "train", str(bundle), "--steps", "1", "--eval-split", "")
    assert "crashed (killed by SIGFPE)" in err and "re-export" in err


# --- numbers that are not numbers -----------------------------------------------------------------------------------


def _trained_copy(et_bundle: Path, tmp_path: Path) -> tuple[Path, Path]:
    bundle = copy_bundle(et_bundle, tmp_path)
    train(load_bundle(bundle), TrainConfig(steps=2, checkpoint_every=0, **QUIET))
    return bundle, default_checkpoint_path(load_bundle(bundle))


def _rewrite_checkpoint(path: Path, change: dict[str, torch.Tensor]) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata()
    _write_checkpoint(path, {**load_file(path), **change}, metadata)


def _write_checkpoint(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    # atomic_write: load_file mmaps the old file, truncating it in place would pull the pages from under it.
    atomic_write(path, lambda fh: write_safetensors(fh, tensors, metadata))


def test_nan_or_misshapen_checkpoint_is_refused_before_anything_is_copied(
    et_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, path = _trained_copy(et_bundle, tmp_path)
    loaded = load_bundle(bundle)
    name = loaded.manifest.trainable[0].name
    good = load_file(path)[name]
    _rewrite_checkpoint(path, {name: torch.full_like(good, float("nan"))})
    with pytest.raises(CheckpointError, match="NaN or infinity"):
        load_checkpoint(path, loaded)
    err = cli_error(capsys, "train", str(bundle), "--resume", "--steps", "1", "--eval-split", "")
    assert "NaN or infinity" in err
    _rewrite_checkpoint(path, {name: torch.zeros(1)})  # copy_ would have broadcast it over the whole weight
    with pytest.raises(CheckpointError, match=r"the bundle's is float32"):
        load_checkpoint(path, loaded)
    metadata = {"format": "memwall.checkpoint", "manifest_sha256": loaded.manifest_sha256, "steps": "-1"}
    _write_checkpoint(path, load_file(path), metadata)
    with pytest.raises(CheckpointError, match="not a step count"):
        load_checkpoint(path, loaded)


def test_divergence_never_overwrites_the_good_checkpoint_nor_reaches_json_as_nan(
    et_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, path = _trained_copy(et_bundle, tmp_path)
    good = path.read_bytes()
    data = tmp_path / "extreme.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.uniform(-1e30, 1e30, (64, *SHAPE)).astype(np.float32), y=rng.integers(0, 10, 64))
    status = main(["train", str(bundle), "--resume", "--data", str(data), "--steps", "6", "--eval-split", "", "--json"])
    out, err = capsys.readouterr()
    assert status == 2 and "diverged at step" in err and "Traceback" not in err, err
    result = json.loads(out)  # strict: json.loads would accept NaN, so check the text too
    assert "NaN" not in out and "Infinity" not in out and None in result["losses"]
    assert path.read_bytes() == good


@pytest.mark.parametrize(
    "arrays, problem",
    [
        ({"x": np.full((4, *SHAPE), np.nan, np.float32), "y": np.zeros(4, np.int64)}, "NaN or infinity"),
        ({"x": np.full((4, *SHAPE), 1e300), "y": np.zeros(4, np.int64)}, "beyond float32"),
        ({"x": np.zeros((4, *SHAPE)), "y": np.array([0, 1, 2, 10])}, r"labels span \[0, 10\]"),
        ({"x": np.zeros((4, *SHAPE)), "y": np.array([0, -1, 2, 3])}, r"labels span \[-1, 3\]"),
        ({"x": np.zeros((4, *SHAPE)), "y": np.zeros(4, np.float32)}, "y integers"),
        ({"x": np.zeros((4, *SHAPE)), "y": np.zeros(3, np.int64)}, "one label per sample"),
        ({"x": np.zeros((0, *SHAPE)), "y": np.zeros(0, np.int64)}, "at least one"),
        ({"x": np.zeros((4, 2, 8, 8)), "y": np.zeros(4, np.int64)}, "samples have shape"),
        ({"x": np.array(["a"] * 4), "y": np.zeros(4, np.int64)}, "x must be numbers"),
        ({"x": np.zeros((4, *SHAPE))}, "arrays named 'x' and 'y'"),
        ({"x": np.array([{"a": 1}] * 4, dtype=object), "y": np.zeros(4, np.int64)}, "not a readable .npz"),
    ],
)
def test_bad_data_files_are_refused_once_at_load(tmp_path: Path, arrays: dict, problem: str) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=problem):
        load_npz(path, SHAPE, 10)


def test_data_file_that_is_not_an_npz(tmp_path: Path, et_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "data.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        load_npz(path, SHAPE, 10)
    err = cli_error(capsys, "train", str(et_bundle), "--data", str(path), "--steps", "1")
    assert "not a readable .npz" in err


# --- every mistake: one line, exit 2 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["inspect", "/nonexistent"], "no manifest.json file"),
        (["train", "{et}", "--steps", "0"], "--steps: expected a positive integer"),
        (["train", "{et}", "--checkpoint-every", "-5"], "expected an integer >= 0"),
        (["train", "{et}", "--data", "/tmp"], "unknown dataset"),
        (["train", "{et}", "--data", "missing.npz"], "does not exist"),
        (["train", "{et}", "--resume", "--checkpoint", "/nonexistent.safetensors"], "no checkpoint at"),
        (["pull", "{et}"], "say what to write"),
        (["pull", "{et}", "--out", "x.pt", "--base", "{garbage}"], "not a torch.save file"),
        (["pull", "{et}", "--onnx", "x.onnx"], "--onnx needs an onnxruntime bundle"),
        (["measure", "{et}", "--cap", "abc"], "cannot read 'abc' as a memory size"),
        (["measure", "{et}", "--threads", "0"], "--threads: expected a positive integer"),
        (["measure", "{et}", "--lab", "http://127.0.0.1:9"], "--lab needs --token"),
        (["analyze"], "analyze a bundle"),
        (["export", "--model", "nonexist", "--input-shape", "1,8,8", "--out", "x"], "unknown model"),
        (["export", "--model", "mlp", "--input-shape", "1,8,8", "--model-kwargs", '{"bogus": 1}', "--out", "x"],
         "check --model-kwargs"),
        (["export", "--model", "mlp", "--input-shape", "1,8,8", "--model-kwargs", "[1]", "--out", "x"],
         "must be a JSON object"),
        (["export", "--model", "mlp", "--input-shape", "a,b", "--out", "x"], "comma-separated integers"),
        (["export", "--model", "mlp", "--input-shape", "1,8,8", "--batch", "0", "--out", "x"], "positive integer"),
        (["export", "--model", "mlp", "--input-shape", "1,8,8", "--weights", "{garbage}", "--out", "x"],
         "not a torch.save file"),
        (["export", "--model", "mlp", "--input-shape", "1,8,8", "--lr", "-1", "--out", "x"], "learning rate"),
        (["export", "--model", "mlp", "--input-shape", "1,8,8", "--out", "{et}"], "--force"),
        (["export", "--model", "mlp"], "required"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_cli_mistakes_are_one_line(
    argv: list[str], problem: str, et_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a state dict")
    err = cli_error(capsys, *(arg.replace("{et}", str(et_bundle)).replace("{garbage}", str(garbage)) for arg in argv))
    assert problem in err
