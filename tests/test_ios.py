"""The iOS side (ios_demo/): the Swift core's tests in a real Swift toolchain, on the golden vectors and a real lab.

Swift runs here inside a Debian trixie chroot that ios_demo/setup.sh makes once per machine (root needed; the tests
skip with the reason otherwise). `swift test` runs once per session for the whole module: it is the slow part
(about 30 s to build the core and its tests on 2 cores, seconds when nothing changed).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import executorch
import pytest
import torch
from jsonschema import Draft202012Validator

from exporters import ModelSpec, OptimizerConfig, export_bundle
from exporters.techniques.fused_update import FusedUpdateConfig
from sdk_tools.lab.client import bundle_section
from sdk_tools.models import build_model
from sdk_tools.runner.executorch_session import ExecuTorchSession
from tests.lab.conftest import LabServer, Rows, free_port

REPO = Path(__file__).resolve().parents[1]
IOS = REPO / "ios_demo"
REPORT_SCHEMA = REPO / "sdk_tools" / "lab" / "schemas" / "report.v1.schema.json"
SETUP_TIMEOUT_S = 1200


def _setup_or_skip() -> None:
    chroot_ready = Path(os.environ.get("MEMWALL_SWIFT_ROOT", "/opt/memwall/swift-trixie"), ".memwall-ready").exists()
    if os.geteuid() != 0:
        pytest.skip("the Swift toolchain runs in a chroot: run the iOS tests as root (./dev test does on CI)")
    if not chroot_ready and not Path("/etc/apt").is_dir():
        pytest.skip("no Swift chroot and no apt sources to make one from")


@pytest.fixture(scope="module")
def swift_built() -> None:
    _setup_or_skip()
    result = subprocess.run([IOS / "setup.sh"], capture_output=True, text=True, timeout=SETUP_TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@dataclass(frozen=True)
class SwiftRun:
    output: str
    returncode: int
    reported_ids: list[str]

    def passed(self, name: str) -> bool:
        return re.search(rf"Test Case '{re.escape(name)}' passed", self.output) is not None


def run_swift_tests(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [IOS / "swiftw", "test", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=SETUP_TIMEOUT_S, env={**os.environ, **env})


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    directory = tmp_path_factory.mktemp("ios-lab")
    server = LabServer(f"sqlite:///{directory / 'lab.db'}", directory / "server.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def swift_core(swift_built: None, lab: LabServer, tmp_path_factory: pytest.TempPathFactory) -> SwiftRun:
    out = tmp_path_factory.mktemp("ios-swift") / f"reported-{uuid.uuid4().hex}.txt"
    env = {
        "MEMWALL_TEST_LAB_URL": lab.url,
        "MEMWALL_TEST_OFFLINE_URL": f"http://127.0.0.1:{free_port()}",
        "MEMWALL_TEST_OUT": str(out),
    }
    result = run_swift_tests(env, "--filter", "MemwallCoreTests")
    ids = out.read_text().split() if out.exists() else []
    return SwiftRun(result.stdout + result.stderr, result.returncode, ids)


def test_setup_is_quick_when_up_to_date(swift_built: None) -> None:
    """The second run of setup.sh (./dev test runs it every time) finds the chroot and an up-to-date build."""
    result = subprocess.run([IOS / "setup.sh"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Build complete" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "case",
    [
        "OptimizerTests.testEveryOptimizerMatchesThePythonRunner",
        "OptimizerTests.testMicroBatchAccumulationMatchesThePythonRunner",
        "OptimizerTests.testOptimizerStateRoundTripsAndRefusesAnotherOptimizer",
        "BundleTests.testRealManifestsOfEveryBundleKindParse",
        "BundleTests.testAnUnknownSchemaVersionIsRefusedWithTheFix",
        "BundleTests.testBundleFilesAreVerifiedBeforeUse",
        "BundleTests.testARunThatFailsQueuesAnErrorReport",
        "BundleTests.testSHA256OfKnownInputs",
        "BundleTests.testTheHostRunnersCheckpointReadsAndIsWrittenToTheByte",
        "BundleTests.testCheckpointsOfAnotherBundleOrCorruptAreRefused",
        "ReportTests.testGoldenReportsRoundTrip",
        "ReportTests.testARunsReportCarriesWhatItMeasured",
        "ReportTests.testAKilledRunIsReportedAtTheNextStart",
        "ReportTests.testTheJournalIsWrittenAtMostOncePerInterval",
        "ReportTests.testMemorySamplerSeesAnAllocation",
        "SketchTests.testAVerticalStrokeInksItsColumnOnly",
        "SketchTests.testASampleIsCheckedAgainstTheBundle",
        "LabTests.testReportsMadeOfflineArriveExactlyOnce",
        "LabTests.testARefusedReportIsSetAsideWithItsReason",
    ],
)
def test_swift_core(swift_core: SwiftRun, case: str) -> None:
    """Each XCTest case of the core passed (golden vectors from the Python runner, a real lab)."""
    assert swift_core.passed(case), swift_core.output[-6000:]


def test_swift_core_run_is_green(swift_core: SwiftRun) -> None:
    assert swift_core.returncode == 0, swift_core.output[-6000:]
    assert "with 0 failures" in swift_core.output


def test_queued_reports_are_in_the_lab_exactly_once(swift_core: SwiftRun, lab: LabServer) -> None:
    """The Swift queue posted offline-made reports (a finished run and a jetsam-killed one) once each."""
    assert len(swift_core.reported_ids) == 2, swift_core.output[-4000:]
    rows = Rows(lab.db_url)
    try:
        for report_id in swift_core.reported_ids:
            assert rows.reports(report_id=report_id) == 1
        assert rows.reports(status="oom", error_kind="jetsam") == 1
    finally:
        rows.engine.dispose()


# The moonshot: Swift drives the real ExecuTorch runtime through the native core's C API (runtime/, issue 13).
RUNTIME = REPO / "runtime"
NATIVE_STEPS = 8
NativeRun = tuple[Path, subprocess.CompletedProcess[str]]
NATIVE_CASES: dict[str, dict[str, Any]] = {
    "sgd_momentum": {"optimizer": OptimizerConfig(kind="sgd", lr=0.05, momentum=0.9)},
    "adamw_micro_batches": {"optimizer": OptimizerConfig(kind="adamw", lr=3e-3, weight_decay=0.01), "micro_batches": 2},
    "adamw_fused_update": {"optimizer": OptimizerConfig(kind="adamw", lr=3e-3), "fused_update": True},
}


def _samples(gen: torch.Generator, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn((count, 1, 8, 8), generator=gen), torch.randint(0, 10, (count,), generator=gen)


def _as_samples(inputs: torch.Tensor, labels: torch.Tensor) -> list[dict[str, Any]]:
    return [{"inputs": [x.reshape(-1).tolist()], "label": int(y)} for x, y in zip(inputs, labels, strict=True)]


def _accuracy(session: Any, inputs: torch.Tensor, labels: torch.Tensor, batch: int) -> float:
    correct = sum(
        int((session.predict(inputs[i : i + batch]).argmax(dim=1) == labels[i : i + batch]).sum())
        for i in range(0, len(inputs), batch)
    )
    return correct / len(inputs)


def write_native_case(directory: Path, options: dict[str, Any]) -> None:
    """Export an MLP bundle and train it with the Python host runner on fixed samples, as the Swift test will."""
    torch.manual_seed(0)
    micro = options.get("micro_batches", 1)
    bundle = export_bundle(
        build_model("mlp"),
        directory / "bundle",
        sample_shape=(1, 8, 8),
        batch_size=4,
        optimizer=options["optimizer"],
        micro_batches=micro,
        fused_update=FusedUpdateConfig() if options.get("fused_update") else None,
        model_spec=ModelSpec("mlp"),
    )
    batch = bundle.manifest.batch_size  # of one training call
    gen = torch.Generator().manual_seed(1)
    inputs, labels = _samples(gen, 24)
    eval_inputs, eval_labels = _samples(gen, 8)
    session = ExecuTorchSession(bundle)
    before = _accuracy(session, eval_inputs, eval_labels, batch)
    losses, cursor = [], 0
    for _ in range(NATIVE_STEPS):  # the samples cycled in order, as MemwallCore.Trainer takes them
        calls = []
        for _ in range(micro):
            index = [(cursor + j) % len(inputs) for j in range(batch)]
            calls.append((inputs[index], labels[index]))
            cursor += batch
        losses.append(session.train_step(calls)[0])
    document = {
        "steps": NATIVE_STEPS,
        "samples": _as_samples(inputs, labels),
        "evaluation": _as_samples(eval_inputs, eval_labels),
        "losses": losses,
        "accuracy_before": before,
        "accuracy_after": _accuracy(session, eval_inputs, eval_labels, batch),
        "parameters": {name: t.reshape(-1).tolist() for name, t in session.trained_parameters().items()},
    }
    (directory / "case.json").write_text(json.dumps(document))


def native_link_flags() -> tuple[str, str]:
    """(MEMWALL_NATIVE_LINK_FLAGS, MEMWALL_NATIVE_LIB_DIRS): libmemwall.a and the executorch wheel's runtime."""
    build = (RUNTIME / "build").resolve()
    lib = (Path(next(iter(executorch.__path__))) / "lib").resolve()
    # --no-as-needed: the kernel and backend libraries register themselves when loaded; nothing calls into them.
    flags = [
        f"-L{build}", "-lmemwall", f"-L{lib}", "-Xlinker", "--no-as-needed", "-lexecutorch_kernels_optimized",
        "-lexecutorch_backend_xnnpack", "-lexecutorch_threadpool", "-lexecutorch", "-lstdc++",
        "-Xlinker", "-rpath", "-Xlinker", str(lib),
    ]  # fmt: skip
    return " ".join(flags), f"{RUNTIME.resolve()}:{lib}"


@pytest.fixture(scope="module")
def native_run(swift_built: None, lab: LabServer, tmp_path_factory: pytest.TempPathFactory) -> NativeRun:
    if not (RUNTIME / "setup.sh").exists():
        pytest.skip("the native core (runtime/, issue 13) is not in this checkout")
    env = {**os.environ, "MEMWALL_PYTHON": sys.executable}  # builds libmemwall.a; a second when up to date
    built = subprocess.run([RUNTIME / "setup.sh"], capture_output=True, text=True, env=env, timeout=SETUP_TIMEOUT_S)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    root = tmp_path_factory.mktemp("ios-native")
    for name, options in NATIVE_CASES.items():
        write_native_case(root / name, options)
    flags, dirs = native_link_flags()
    env = {
        "MEMWALL_NATIVE_LINK_FLAGS": flags,
        "MEMWALL_NATIVE_LIB_DIRS": dirs,
        "MEMWALL_TEST_NATIVE_CASES": str(root),
        "MEMWALL_TEST_LAB_URL": lab.url,
    }
    # Its own build directory: the package with the ExecuTorch target is another configuration than setup.sh's.
    result = run_swift_tests(env, "--build-path", ".build/native", "--filter", "MemwallExecuTorchTests")
    return root, result


def test_swift_trains_on_the_real_executorch_runtime_like_the_python_runner(native_run: NativeRun) -> None:
    """Losses, accuracies and trained weights from Swift (C API, ExecuTorch runtime) equal the Python runner's."""
    root, result = native_run
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "with 0 failures" in output, output[-6000:]
    for name in NATIVE_CASES:
        measured = json.loads((root / name / "swift.json").read_text())
        assert len(measured["losses"]) == NATIVE_STEPS
        assert measured["largest_loss_difference"] <= 1e-6, name
        assert measured["largest_parameter_difference"] <= 1e-6, name


def test_swift_reports_of_native_runs_are_valid_and_in_the_lab(native_run: NativeRun, lab: LabServer) -> None:
    """The app's flow (Personalization) queued each run's report.v1 and posted it to the real lab once."""
    root, _ = native_run
    validator = Draft202012Validator(json.loads(REPORT_SCHEMA.read_text()))
    rows = Rows(lab.db_url)
    try:
        for name in NATIVE_CASES:
            report = json.loads((root / name / "report.json").read_text())
            assert not list(validator.iter_errors(report)), name
            assert report["status"] == "ok" and report["run"]["steps"] == NATIVE_STEPS
            assert report["memory"]["peak_delta_bytes"] >= 0
            # The native runtime's prediction (memory.by_runtime), as the Python side builds the section for it.
            assert report["run"]["runtime"] == "memwall_native"
            assert report["bundle"] == bundle_section(root / name / "bundle" / "manifest.json", "memwall_native")
            assert rows.reports(report_id=report["run"]["report_id"], status="ok", backend="executorch") == 1, name
    finally:
        rows.engine.dispose()


def swift_sources() -> list[Path]:
    return sorted(p for p in IOS.rglob("*.swift") if ".build" not in p.parts)


def test_every_swift_file_parses() -> None:
    """App code (SwiftUI/UIKit) cannot be compiled here; every .swift file, app included, must at least parse."""
    tree_sitter = pytest.importorskip("tree_sitter")
    swift = pytest.importorskip("tree_sitter_swift")
    parser = tree_sitter.Parser(tree_sitter.Language(swift.language()))
    files = swift_sources()
    assert any("App" in p.parts for p in files), "the app's sources"
    broken = []
    for path in files:
        root = parser.parse(path.read_bytes()).root_node
        if root.has_error:
            bad = next(n for n in _walk(root) if n.is_error or n.is_missing)
            broken.append(f"{path.relative_to(REPO)}:{bad.start_point[0] + 1}: syntax error near {bad.text[:60]!r}")
    assert not broken, "\n".join(broken)


def _walk(node: Any) -> Iterator[Any]:
    yield node
    for child in node.children:
        yield from _walk(child)


def test_app_only_code_is_guarded_for_linux() -> None:
    """The core builds on Linux: UIKit/SwiftUI appear only in the app, inside `#if canImport(UIKit)`."""
    for path in swift_sources():
        text = path.read_text()
        if "App" not in path.relative_to(IOS).parts:
            assert "import SwiftUI" not in text and "import UIKit" not in text, path
        elif "import SwiftUI" in text or "import UIKit" in text:
            assert text.lstrip().startswith(("#if canImport(UIKit)", "// ")), path
            assert "#if canImport(UIKit)" in text, path
