"""The iOS side (ios_demo/): the Swift core's tests in a real Swift toolchain, on the golden vectors and a real lab.

Swift runs here inside a Debian trixie chroot that ios_demo/setup.sh makes once per machine (root needed; the tests
skip with the reason otherwise). `swift test` runs once per session for the whole module: it is the slow part
(about 30 s to build the core and its tests on 2 cores, seconds when nothing changed).
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.lab.conftest import LabServer, Rows, free_port

REPO = Path(__file__).resolve().parents[1]
IOS = REPO / "ios_demo"
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
        "BundleTests.testSHA256OfKnownInputs",
        "BundleTests.testTheHostRunnersCheckpointReadsAndIsWrittenToTheByte",
        "BundleTests.testCheckpointsOfAnotherBundleOrCorruptAreRefused",
        "ReportTests.testGoldenReportsRoundTrip",
        "ReportTests.testARunsReportCarriesWhatItMeasured",
        "ReportTests.testAKilledRunIsReportedAtTheNextStart",
        "ReportTests.testMemorySamplerSeesAnAllocation",
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
